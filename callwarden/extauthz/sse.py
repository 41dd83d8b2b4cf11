"""Server-sent events framing (WHATWG HTML §9.2), strictly, for rewriting one event in place.

A streamable-HTTP MCP server may answer a POST with `text/event-stream`: each event's `data`
is one JSON-RPC message. `parse_events` splits a complete body into its events, with where each
one's bytes are, so that every byte a rewrite does not touch goes out as it came;
`render_event` writes a replacement event with the same non-data fields.

Strict where a lenient reader and the client could disagree about what the stream said: the
body must be UTF-8, and a body that ends inside an event (no blank line after its last field)
is truncated, not an event. Lines end in CRLF, LF or CR, as the format allows; one leading
byte order mark is skipped, as readers do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_LINE_END: Final = re.compile(rb"\r\n|\r|\n")
_BOM: Final = b"\xef\xbb\xbf"


class StreamRejected(ValueError):
    """The body is not a complete, well-formed event stream; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: where its bytes are in the body (`body[start:end]`, its blank line
    included), its fields in order, and its data (data lines joined with LF), or None for an
    event with no data field (a comment block, an id or retry alone)."""

    start: int
    end: int
    fields: tuple[tuple[str, str], ...]
    data: str | None


def _field(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if colon and value.startswith(" "):
        value = value[1:]
    return name, value


def _event(start: int, end: int, lines: list[str]) -> Event:
    fields = tuple(_field(line) for line in lines if not line.startswith(":"))
    data = [value for name, value in fields if name == "data"]
    return Event(start, end, fields, "\n".join(data) if data else None)


def parse_events(body: bytes) -> list[Event]:
    """The events of a complete stream body, in order; raises StreamRejected. The blank lines
    between events belong to none of them (`start`/`end` say where each one is)."""
    start = len(_BOM) if body.startswith(_BOM) else 0
    try:
        body[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        raise StreamRejected("not-utf8", f"invalid UTF-8 at byte {start + error.start}") from None
    events: list[Event] = []
    lines: list[str] = []
    event_start = position = start
    while position < len(body):
        end = _LINE_END.search(body, position)
        if end is None:
            raise StreamRejected("truncated", "the stream ends in the middle of a line")
        line = body[position : end.start()].decode("utf-8")
        position = end.end()
        if line:
            lines.append(line)
            continue
        if lines:  # a blank line dispatches the event; blank lines between events are separators
            events.append(_event(event_start, position, lines))
            lines = []
        event_start = position
    if lines:
        raise StreamRejected("truncated", "the stream ends inside an event (no blank line after it)")
    return events


def render_event(event: Event, data: str) -> bytes:
    """`event` with its data replaced by `data` (one line: callers pass compact JSON)."""
    if "\n" in data or "\r" in data:
        raise ValueError("event data must be a single line")
    out: list[str] = []
    written = False
    for name, value in event.fields:
        if name != "data":
            out.append(f"{name}: {value}" if value else name)
        elif not written:  # the first data line carries all of it; the others go
            out.append(f"data: {data}")
            written = True
    return ("\n".join(out) + "\n\n").encode("utf-8")
