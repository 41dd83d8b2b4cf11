"""The shared strict JSON decoder: what it rejects (and why), what it accepts, and that its depth
bound holds whatever the interpreter's recursion limit."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.policy.strictjson import MAX_DEPTH_LIMIT, REASONS, JsonRejected, loads

DEPTH = 8


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


REJECTED = [
    # encoding
    pytest.param(b"\xef\xbb\xbf{}", "not-utf8", id="byte-order-mark"),
    pytest.param(b'"\xff"', "not-utf8", id="invalid-byte"),
    pytest.param(b'"\xc0\xaf"', "not-utf8", id="overlong-slash"),
    pytest.param(b'"\xed\xa0\x80"', "not-utf8", id="encoded-surrogate"),
    pytest.param(b'"\xe2\x82"', "not-utf8", id="truncated-sequence"),
    pytest.param(b'"\xf4\x90\x80\x80"', "not-utf8", id="beyond-u10ffff"),
    # syntax
    pytest.param(b"", "not-json", id="empty"),
    pytest.param(b" \n\t", "not-json", id="whitespace-only"),
    pytest.param(b'{"a":', "not-json", id="truncated"),
    pytest.param(b"{'a':1}", "not-json", id="single-quotes"),
    pytest.param(b"[1,]", "not-json", id="trailing-comma"),
    pytest.param(b'"a\x00b"', "not-json", id="raw-control-character"),
    pytest.param(b'"\\x41"', "not-json", id="invalid-escape"),
    pytest.param(b"NaN", "not-json", id="nan"),
    pytest.param(b"[Infinity]", "not-json", id="infinity"),
    pytest.param(b'{"a":-Infinity}', "not-json", id="negative-infinity"),
    pytest.param(b"+1", "not-json", id="plus-sign"),
    pytest.param(b"\xc2\xa0{}", "not-json", id="non-json-whitespace"),
    # exactly one value
    pytest.param(b"{} {}", "trailing-data", id="two-objects"),
    pytest.param(b"1 2", "trailing-data", id="two-numbers"),
    pytest.param(b"{}x", "trailing-data", id="trailing-garbage"),
    pytest.param(b"[]\x00", "trailing-data", id="trailing-nul"),
    pytest.param(b"01", "trailing-data", id="leading-zero"),
    # duplicate members
    pytest.param(b'{"a":1,"a":2}', "duplicate-member", id="duplicate"),
    pytest.param(b'{"a":1,"a":1}', "duplicate-member", id="duplicate-same-value"),
    pytest.param(b'{"a":1,"\\u0061":2}', "duplicate-member", id="duplicate-escaped"),
    pytest.param(b'[{"x":{"a":1,"a":2}}]', "duplicate-member", id="duplicate-nested"),
    pytest.param(b'{"name":1,"Name":2}', "duplicate-member", id="case-folded"),
    pytest.param('{"s":1,"\u017f":2}'.encode(), "duplicate-member", id="case-folded-long-s"),
    pytest.param('{"k":1,"\u212a":2}'.encode(), "duplicate-member", id="case-folded-kelvin"),
    # lone surrogates
    pytest.param(b'"\\ud800"', "lone-surrogate", id="lone-high"),
    pytest.param(b'"\\udc00"', "lone-surrogate", id="lone-low"),
    pytest.param(b'"\\udc00\\ud800"', "lone-surrogate", id="pair-reversed"),
    pytest.param(b'"\\ud800x"', "lone-surrogate", id="high-then-character"),
    pytest.param(b'{"\\udfff":1}', "lone-surrogate", id="in-member-name"),
    # numbers
    pytest.param(b"1e999", "bad-number", id="float-overflow"),
    pytest.param(b"[-1e400]", "bad-number", id="negative-float-overflow"),
    pytest.param(b"1" * 5000, "bad-number", id="integer-too-many-digits"),
    # depth
    pytest.param(nested(DEPTH + 1), "too-deep", id="arrays-too-deep"),
    pytest.param(nested_objects(DEPTH + 1), "too-deep", id="objects-too-deep"),
    pytest.param(nested(100_000), "too-deep", id="arrays-far-too-deep"),
    pytest.param(b"[" * (DEPTH + 1), "too-deep", id="unclosed-too-deep"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTED)
def test_ambiguous_or_malformed_json_is_rejected_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(JsonRejected) as rejected:
        loads(raw, max_depth=DEPTH)
    assert rejected.value.reason == reason
    assert rejected.value.message


def test_every_rejection_reason_is_listed_in_reasons() -> None:
    assert {param.values[1] for param in REJECTED} == REASONS


ACCEPTED = [
    pytest.param(b' \t\r\n{"a":1} \n', {"a": 1}, id="surrounding-whitespace"),
    pytest.param(b'{"a":1,"b":2}', {"a": 1, "b": 2}, id="distinct-members"),
    pytest.param(b'[{"a":1},{"a":2}]', [{"a": 1}, {"a": 2}], id="same-name-in-sibling-objects"),
    pytest.param(b'{"a":{"a":1}}', {"a": {"a": 1}}, id="same-name-at-another-depth"),
    pytest.param(b'"\\ud83d\\ude00"', "\U0001f600", id="surrogate-pair-escape"),
    pytest.param('"\u00e9\U0001f600"'.encode(), "\u00e9\U0001f600", id="raw-utf8"),
    pytest.param(b'"\\u0000"', "\x00", id="escaped-nul"),
    pytest.param(b"18446744073709551617", 2**64 + 1, id="integer-beyond-64-bits-exact"),
    pytest.param(b"1.7976931348623157e308", 1.7976931348623157e308, id="largest-double"),
    pytest.param(b"1e-999", 0.0, id="underflow-is-zero"),
    pytest.param(b"-0", 0, id="negative-zero"),
    pytest.param(nested(DEPTH), json.loads(nested(DEPTH)), id="arrays-at-the-limit"),
    pytest.param(nested_objects(DEPTH), json.loads(nested_objects(DEPTH)), id="objects-at-the-limit"),
    pytest.param(b'["' + b"[{" * 50 + b'"]', ["[{" * 50], id="brackets-in-strings-do-not-nest"),
    pytest.param(b'["\\"[[[[[[[[[["]', ['"[[[[[[[[[['], id="brackets-after-escaped-quote"),
]


@pytest.mark.parametrize(("raw", "value"), ACCEPTED)
def test_unambiguous_json_is_accepted_as_its_value(raw: bytes, value: Any) -> None:
    assert loads(raw, max_depth=DEPTH) == value


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        pytest.param(b'{"a":[1,{"x":1,"x":2}]}', "$.a[1] has member 'x' more than once", id="duplicate"),
        pytest.param(b'{"a b":{"Id":1,"id":2}}', "$[\"a b\"] has members 'Id' and 'id'", id="case-folded"),
        pytest.param(b'[{"x":1,"x":2},', "an object has member 'x' more than once", id="duplicate-then-junk"),
        pytest.param(b'{"a":["ok","\\ud800"]}', "$.a[1] contains an unpaired", id="lone-surrogate"),
        pytest.param(b'{"\\udfff":1}', '$["\\udfff"]', id="lone-surrogate-in-name"),
        pytest.param(b'{"a":"\xc0\xaf"}', "invalid UTF-8 at byte 6", id="utf8-offset"),
        pytest.param(nested(DEPTH + 3), f"nests {DEPTH + 3} levels deep; the limit is {DEPTH}", id="depth"),
        pytest.param(b"[1] 2", "at character 3", id="trailing-data"),
        pytest.param(b"[9e999]", "number 9e999 overflows", id="overflow"),
    ],
)
def test_rejection_message_names_where(raw: bytes, where: str) -> None:
    with pytest.raises(JsonRejected) as rejected:
        loads(raw, max_depth=DEPTH)
    assert where in rejected.value.message


def test_rejection_is_a_value_error_whose_str_carries_reason_and_message() -> None:
    rejected = JsonRejected("too-deep", "$ nests")
    assert isinstance(rejected, ValueError)
    assert str(rejected) == "too-deep: $ nests"


@pytest.mark.parametrize("raw", [nested(1500), nested_objects(1500)], ids=["arrays", "objects"])
def test_depth_bound_holds_whatever_the_recursion_limit(raw: bytes) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # what cel-python does: the 1500-deep input would now parse
    try:
        with pytest.raises(JsonRejected) as rejected:
            loads(raw, max_depth=32)
    finally:
        sys.setrecursionlimit(limit)
    assert rejected.value.reason == "too-deep"


def test_largest_depth_limit_parses_at_the_default_recursion_limit() -> None:
    assert loads(nested(MAX_DEPTH_LIMIT), max_depth=MAX_DEPTH_LIMIT) == json.loads(nested(MAX_DEPTH_LIMIT))


@pytest.mark.parametrize("max_depth", [0, MAX_DEPTH_LIMIT + 1], ids=["zero", "beyond-limit"])
def test_depth_limit_outside_the_supported_range_is_a_programming_error(max_depth: int) -> None:
    with pytest.raises(ValueError, match="max_depth") as raised:
        loads(b"{}", max_depth=max_depth)
    assert not isinstance(raised.value, JsonRejected)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=6), children, max_size=4).filter(
            lambda members: len({name.casefold() for name in members}) == len(members)
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_values, st.booleans())
def test_unambiguous_value_round_trips(value: Any, ascii_escapes: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_escapes).encode()
    assert loads(raw, max_depth=MAX_DEPTH_LIMIT) == value


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_parsed_or_rejected_with_json_rejected(raw: bytes) -> None:
    try:
        loads(raw, max_depth=DEPTH)
    except JsonRejected as rejected:
        assert rejected.reason in REASONS
