"""Property tests for the strict JSON-RPC parser: it only ever rejects with BodyRejected, valid
requests round-trip, and whatever it accepts a second strict parser (orjson) reads the same way."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.extauthz.jsonrpc import MAX_SAFE_ID, BodyRejected, ParsedBody, parse_body

MAX_BYTES = 65536


def unique_under_folding(members: dict[str, Any]) -> bool:
    return len({name.casefold() for name in members}) == len(members)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4).filter(unique_under_folding)
    ),
    max_leaves=20,
)
params = st.dictionaries(st.text(max_size=8), json_values, max_size=5).filter(unique_under_folding)
request_ids = st.integers(min_value=-MAX_SAFE_ID, max_value=MAX_SAFE_ID) | st.text(max_size=12)
methods = st.sampled_from(["tools/call", "tools/list", "ping", "resources/read"]) | st.text(
    min_size=1, max_size=20
)
requests = st.builds(
    lambda request_id, method, params: {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": method,
        "params": params,
    },
    request_ids,
    methods,
    params,
)


def serialize(message: Any, style: int) -> bytes:
    """Three encoders: orjson (raw UTF-8), json with \\u escapes (surrogate pairs), json spaced."""
    if style == 0:
        return orjson.dumps(message)
    if style == 1:
        return json.dumps(message, ensure_ascii=True).encode()
    return json.dumps(message, ensure_ascii=False, indent=1).encode()


def parse_or_reject(raw: bytes) -> ParsedBody | None:
    try:
        return parse_body(raw, max_bytes=MAX_BYTES)
    except BodyRejected as rejected:
        assert rejected.reason
        assert rejected.message
        return None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_parsed_or_rejected_with_body_rejected(raw: bytes) -> None:
    parse_or_reject(raw)


@settings(max_examples=150, deadline=None)
@given(requests, st.integers(0, 2), st.data())
def test_mutated_request_is_parsed_or_rejected_with_body_rejected(
    message: dict[str, Any], style: int, data: st.DataObject
) -> None:
    raw = serialize(message, style)
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, min(len(raw), start + 4)))
    patch = data.draw(
        st.binary(max_size=4) | st.sampled_from([b'"', b"\\", b"\\u", b"{", b"]", b",", b'"id":'])
    )
    parse_or_reject(raw[:start] + patch + raw[end:])


@settings(max_examples=150, deadline=None)
@given(requests, st.integers(0, 2))
def test_valid_request_round_trips(message: dict[str, Any], style: int) -> None:
    body = parse_body(serialize(message, style), max_bytes=1 << 20)
    (parsed,) = body.messages
    assert (parsed.kind, parsed.id, parsed.method, parsed.params) == (
        "request",
        message["id"],
        message["method"],
        message["params"],
    )
    assert body.first_id == message["id"]


@settings(max_examples=50, deadline=None)
@given(st.lists(requests, min_size=1, max_size=4), st.integers(0, 2))
def test_valid_batch_round_trips_in_order(messages: list[dict[str, Any]], style: int) -> None:
    body = parse_body(serialize(messages, style), max_bytes=1 << 20)
    assert body.is_batch
    assert [(m.id, m.method, m.params) for m in body.messages] == [
        (m["id"], m["method"], m["params"]) for m in messages
    ]


@settings(max_examples=150, deadline=None)
@given(requests, st.integers(0, 2), st.data())
def test_accepted_body_reads_the_same_to_a_second_strict_parser(
    message: dict[str, Any], style: int, data: st.DataObject
) -> None:
    raw = serialize(message, style)
    start = data.draw(st.integers(0, len(raw)))
    patch = data.draw(
        st.sampled_from([b"", b" ", b'"method":"ping",', b'"id":2,', b"\\u0041", b'"Method":"x",'])
    )
    body = parse_or_reject(raw[:start] + patch + raw[start:])
    if body is None:
        return
    other = orjson.loads(raw[:start] + patch + raw[start:])
    (parsed,) = body.messages
    assert parsed.method == other.get("method")
    assert parsed.id == other.get("id")
    assert parsed.params == other["params"]
