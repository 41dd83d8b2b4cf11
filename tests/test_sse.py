"""Server-sent events framing (extauthz/sse.py): what a stream body says, strictly.

The tools-list hook rewrites one event of an upstream's stream and must leave every other byte
as it was, so the parser keeps each event's raw bytes; what it cannot frame for certain it refuses.
"""

from __future__ import annotations

import pytest

from callwarden.extauthz.sse import Event, StreamRejected, parse_events, render_event


def datas(body: bytes) -> list[str | None]:
    return [event.data for event in parse_events(body)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"data: a\n\n", ["a"]),
        (b"data: a\r\n\r\n", ["a"]),
        (b"data: a\r\r", ["a"]),
        (b"data: a\r\n\n", ["a"]),
        (b"data:a\n\n", ["a"]),
        (b"data:  a\n\n", [" a"]),
        (b"data: a\ndata: b\n\n", ["a\nb"]),
        (b": comment\ndata: a\n\n", ["a"]),
        (b"id: 1\nretry: 10\n\n", [None]),
        (b"data\n\n", [""]),
        (b"\n\n\ndata: a\n\n\n\ndata: b\n\n", ["a", "b"]),
        (b"\xef\xbb\xbfdata: a\n\n", ["a"]),
        (b"", []),
        ("data: caf\u00e9 \u2028 x\n\n".encode(), ["caf\u00e9 \u2028 x"]),
    ],
    ids=[
        "lf",
        "crlf",
        "cr",
        "mixed",
        "no-space",
        "two-spaces",
        "two-data-lines",
        "comment",
        "no-data",
        "field-without-colon",
        "blank-separators",
        "byte-order-mark",
        "empty",
        "unicode-line-separator",
    ],
)
def test_events_are_framed_as_the_format_says(body: bytes, expected: list[str | None]) -> None:
    assert datas(body) == expected


def test_each_event_knows_where_its_exact_bytes_are() -> None:
    body = b"event: message\r\nid: 7\r\ndata: {}\r\n\r\n: ping\n\ndata: x\n\n"
    events = parse_events(body)
    assert [body[event.start : event.end] for event in events] == [
        b"event: message\r\nid: 7\r\ndata: {}\r\n\r\n",
        b": ping\n\n",  # a comment block carries no message; it passes as it came
        b"data: x\n\n",
    ]
    assert b"".join(body[event.start : event.end] for event in events) == body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"data: a\n", "truncated"),
        (b"data: a", "truncated"),
        (b"data: a\n\ndata: b", "truncated"),
        (b"data: \xff\n\n", "not-utf8"),
        (b"data: \xed\xa0\x80\n\n", "not-utf8"),
        (b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n\xc3", "not-utf8"),
    ],
    ids=[
        "no-blank-line",
        "no-line-end",
        "last-event-cut",
        "invalid-byte",
        "encoded-surrogate",
        "cut-sequence",
    ],
)
def test_a_stream_that_cannot_be_framed_for_certain_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(StreamRejected) as rejected:
        parse_events(body)
    assert rejected.value.reason == reason


def test_a_rewritten_event_keeps_its_other_fields_and_one_data_line() -> None:
    (event,) = parse_events(b"event: message\nid: 7\ndata: a\ndata: b\nretry: 5\n\n")
    assert render_event(event, '{"x":1}') == b'event: message\nid: 7\ndata: {"x":1}\nretry: 5\n\n'


def test_rewritten_data_must_be_one_line() -> None:
    with pytest.raises(ValueError, match="single line"):
        render_event(Event(0, 0, (("data", "a"),), "a"), "a\nb")
