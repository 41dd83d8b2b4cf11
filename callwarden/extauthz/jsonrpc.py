"""Strict MCP JSON-RPC body parsing (DESIGN.md §3 step 4).

The PEP authorizes what it parsed; the MCP server executes what *it* parses. Any input two
parsers may read differently is an authorization bypass, so this module rejects every body
whose meaning is not unique:

- bytes must be UTF-8 (no byte order mark, no overlong forms, no encoded surrogates) and
  strings must not carry lone surrogate escapes (`"\\ud800"`), which parsers replace, keep
  or reject differently;
- exactly one JSON value, no trailing data, no NaN/Infinity, no number that overflows;
- no duplicate member names at any depth: most parsers keep the last duplicate, some the
  first. Names that are equal under Unicode case folding are duplicates too, because Go's
  encoding/json matches members to fields case-insensitively (and folds U+017F long s to
  "s", U+212A Kelvin sign to "k"): `{"name": "allowed", "Name": "secret"}` ran "secret"
  on the Go MCP SDK while a case-sensitive PEP saw "allowed" (CVE-2026-27896). For the same
  reason the JSON-RPC envelope admits only its own members: `"Method"` is rejected, not
  ignored;
- bounded size (checked before any parsing) and bounded nesting depth (checked before the
  recursive parser runs);
- the JSON-RPC 2.0 shape MCP uses: a request has a string method and a string or integer
  id (never null, a float or a boolean), a notification has no id, a response has an id
  and exactly one of result and error, and nothing is both a request and a response.

Batches (MCP 2025-03-26; later revisions removed them but older clients send them) are
parsed element by element so each element can be authorized on its own.

The parser is the standard library's C scanner with an `object_pairs_hook`, the only fast
parser here that shows duplicate members (orjson keeps the last duplicate silently and
turns integers beyond 64 bits into floats). Cheap pre-checks on the raw bytes keep the
common body on the fast path: about 5 µs for a 303-byte tools/call on the reference VM.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final, Literal

import orjson

# JSON-RPC error codes (contracts): the body is not parseable JSON / not a valid request.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600

MAX_BATCH: Final = 100
# The parsers (ours and the diagnostics below) recurse once per nesting level; this keeps
# them far from the interpreter's recursion limit whatever the caller configures.
MAX_DEPTH_LIMIT: Final = 256
# Integer ids beyond I-JSON's exact range (RFC 7493 §2.2) are read differently by
# JavaScript clients and servers, so the deny response would answer another id.
MAX_SAFE_ID: Final = 2**53 - 1

_JSON_LEVEL_REASONS: Final = frozenset(
    {"not-utf8", "not-json", "trailing-data", "duplicate-member", "too-deep", "lone-surrogate", "bad-number"}
)
_REQUEST_MEMBERS: Final = frozenset({"jsonrpc", "id", "method", "params"})
_RESPONSE_MEMBERS: Final = frozenset({"jsonrpc", "id", "result", "error"})
_BOM: Final = b"\xef\xbb\xbf"
_JSON_WHITESPACE: Final = " \t\n\r"
# A JSON string, escape-aware. Scanned left to right over valid JSON it finds exactly the
# strings, because a quote outside a string can only open one. An unterminated string runs
# to the end of the body: every match attempt succeeds, so hostile quoting cannot make
# the scan restart at each quote (quadratic time).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_OPEN_CLOSE: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET: Final = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class BodyRejected(Exception):
    """The body is not one unambiguous MCP JSON-RPC message (or batch of them).

    `reason` is a stable kebab-case code for metrics and logs; `message` is for humans and
    names the member or path at fault; `code` is the JSON-RPC error code to answer with.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    @property
    def code(self) -> int:
        return PARSE_ERROR if self.reason in _JSON_LEVEL_REASONS else INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class JsonRpcMessage:
    kind: Literal["request", "notification", "response"]
    id: str | int | None
    method: str | None
    params: dict[str, Any] | list[Any] | None


@dataclass(frozen=True, slots=True)
class ParsedBody:
    messages: tuple[JsonRpcMessage, ...]
    is_batch: bool
    first_id: str | int | None  # the id of the first request, for error answers; None if none


def parse_body(raw: bytes, *, max_bytes: int, max_depth: int = 64, max_batch: int = MAX_BATCH) -> ParsedBody:
    """Parse an MCP POST body strictly; raises BodyRejected for anything ambiguous or malformed."""
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_LIMIT}, not {max_depth}")
    if len(raw) > max_bytes:
        raise BodyRejected("too-large", f"body is {len(raw)} bytes; the limit is {max_bytes}")
    value = _decode_json(raw, max_depth)
    if type(value) is not list:
        message = _message(value, None)
        return ParsedBody((message,), False, message.id if message.kind == "request" else None)
    if not value:
        raise BodyRejected("empty-batch", "$ is an empty batch")
    if len(value) > max_batch:
        raise BodyRejected(
            "batch-too-large", f"$ is a batch of {len(value)} messages; the limit is {max_batch}"
        )
    messages = tuple(_message(element, index) for index, element in enumerate(value))
    responses = sum(message.kind == "response" for message in messages)
    if 0 < responses < len(messages):
        raise BodyRejected("mixed-batch", "$ mixes responses with requests or notifications")
    first_id = next((message.id for message in messages if message.kind == "request"), None)
    return ParsedBody(messages, True, first_id)


class _DuplicateMember(Exception):
    """Raised by the parse hook with the two clashing names; the cold path finds where."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(first, second)
        self.first = first
        self.second = second


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _DuplicateMember(*_clash(pairs))
    if len(members) > 1:
        # Case folding maps each character on its own, so folding the joined names tells
        # whether any name changes; only then is the (slower) set comparison needed.
        names = "\0".join(members)
        if names != names.casefold() and len({name.casefold() for name in members}) != len(members):
            raise _DuplicateMember(*_clash(pairs))
    return members


def _clash(pairs: list[tuple[str, Any]]) -> tuple[str, str]:
    """The first two member names equal under case folding (which includes equal names)."""
    seen: dict[str, str] = {}
    for name, _ in pairs:
        folded = name.casefold()
        if folded in seen:
            return seen[folded], name
        seen[folded] = name
    raise AssertionError("called only for members that clash")


def _reject_constant(name: str) -> Any:
    raise BodyRejected("not-json", f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise BodyRejected("bad-number", f"number {_excerpt(text)} overflows a double")
    return number


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_members, parse_constant=_reject_constant, parse_float=_finite_float
)


def _decode_json(raw: bytes, max_depth: int) -> Any:
    if raw.startswith(_BOM):
        raise BodyRejected("not-utf8", "body starts with a UTF-8 byte order mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyRejected("not-utf8", f"invalid UTF-8 at byte {error.start}: {error.reason}") from None
    # The count of brackets anywhere bounds the depth from above: usually the exact,
    # string-aware measure is not needed at all.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = _nesting_depth(raw)
        if depth > max_depth:
            raise BodyRejected("too-deep", f"body nests {depth} levels deep; the limit is {max_depth}")
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    try:
        value, end = _DECODER.raw_decode(text, start)
    except _DuplicateMember as duplicate:
        raise _duplicate_rejection(text, start, duplicate) from None
    except json.JSONDecodeError as error:
        raise BodyRejected("not-json", f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except ValueError as error:  # int(): more digits than the interpreter converts
        raise BodyRejected("bad-number", str(error)) from None
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        raise BodyRejected("trailing-data", f"data after the JSON value at character {end}")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _utf8_encodable(value):
        path = _lone_surrogate_path(value, "$")
        if path is not None:
            raise BodyRejected("lone-surrogate", f"{path} contains an unpaired UTF-16 surrogate escape")
    return value


def _utf8_encodable(value: Any) -> bool:
    """Cheap screen: orjson refuses to encode a lone surrogate anywhere (and integers beyond
    64 bits, which is why a False here is confirmed by the exact walk)."""
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _nesting_depth(raw: bytes) -> int:
    """The deepest container nesting, ignoring brackets inside strings; exact for valid JSON."""
    brackets = _STRING.sub(b"", raw).translate(_OPEN_CLOSE, _NOT_BRACKET)
    return max(accumulate(memoryview(brackets).cast("b")), default=0)


class _Members(list[tuple[str, Any]]):
    """An object's members in document order, duplicates kept (diagnostics only)."""


def _duplicate_rejection(text: str, start: int, duplicate: _DuplicateMember) -> BodyRejected:
    where, first, second = "an object", duplicate.first, duplicate.second
    try:
        value, _ = json.JSONDecoder(object_pairs_hook=_Members).raw_decode(text, start)
    except ValueError:
        pass  # the body is also malformed after the duplicate: name the members only
    else:
        found = _first_duplicate(value, "$")
        if found is not None:
            where, first, second = found
    if first == second:
        return BodyRejected("duplicate-member", f"{where} has member {first!r} more than once")
    return BodyRejected(
        "duplicate-member",
        f"{where} has members {first!r} and {second!r}, equal under case folding "
        "(case-insensitive parsers read them as one)",
    )


def _first_duplicate(value: Any, path: str) -> tuple[str, str, str] | None:
    if isinstance(value, _Members):
        if len({name.casefold() for name, _ in value}) != len(value):
            return (path, *_clash(value))
        children = [(_member_path(path, name), member) for name, member in value]
    elif isinstance(value, list):
        children = [(f"{path}[{index}]", element) for index, element in enumerate(value)]
    else:
        return None
    for child_path, child in children:
        found = _first_duplicate(child, child_path)
        if found is not None:
            return found
    return None


def _lone_surrogate_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for name, member in value.items():
            member_path = _member_path(path, name)
            found = _lone_surrogate_path(name, member_path) or _lone_surrogate_path(member, member_path)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, element in enumerate(value):
            found = _lone_surrogate_path(element, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _message(value: Any, index: int | None) -> JsonRpcMessage:
    if type(value) is not dict:
        path = _path(index)
        if type(value) is list:
            raise BodyRejected("nested-batch", f"{path} is an array: batches do not nest")
        raise BodyRejected("not-jsonrpc", f"{path} is {_json_type(value)}, not a JSON-RPC message object")
    if value.get("jsonrpc") != "2.0":
        raise BodyRejected("not-jsonrpc", f'{_path(index)}.jsonrpc must be the string "2.0"')
    if "method" in value:
        return _request(value, index)
    return _response(value, index)


def _request(value: dict[str, Any], index: int | None) -> JsonRpcMessage:
    if not value.keys() <= _REQUEST_MEMBERS:
        if "result" in value or "error" in value:
            raise BodyRejected("not-jsonrpc", f"{_path(index)} is both a request and a response")
        raise _unknown_members(value, _REQUEST_MEMBERS, index, "a request or notification")
    method = value["method"]
    if type(method) is not str or not method:
        raise BodyRejected("bad-method", f"{_path(index)}.method must be a non-empty string")
    params = value.get("params")
    if "params" in value and type(params) is not dict and type(params) is not list:
        raise BodyRejected(
            "bad-params", f"{_path(index)}.params must be an object or an array, not {_json_type(params)}"
        )
    if "id" not in value:
        return JsonRpcMessage("notification", None, method, params)
    return JsonRpcMessage("request", _request_id(value["id"], index), method, params)


def _response(value: dict[str, Any], index: int | None) -> JsonRpcMessage:
    has_result = "result" in value
    has_error = "error" in value
    if has_result and has_error:
        raise BodyRejected("not-jsonrpc", f"{_path(index)} has both result and error")
    if not has_result and not has_error:
        if value.keys() - _RESPONSE_MEMBERS:  # e.g. "Method": name it, it is what the sender meant
            raise _unknown_members(value, _RESPONSE_MEMBERS, index, "a JSON-RPC message")
        raise BodyRejected("not-jsonrpc", f"{_path(index)} has no method, result or error")
    if not value.keys() <= _RESPONSE_MEMBERS:
        raise _unknown_members(value, _RESPONSE_MEMBERS, index, "a response")
    if has_result:
        if type(value["result"]) is not dict:
            raise BodyRejected("bad-result", f"{_path(index)}.result must be an object")
        if "id" not in value:
            raise BodyRejected("bad-id", f"{_path(index)}.id is required in a result response")
        return JsonRpcMessage("response", _request_id(value["id"], index), None, None)
    error = value["error"]
    if type(error) is not dict or type(error.get("code")) is not int or type(error.get("message")) is not str:
        raise BodyRejected(
            "bad-error", f"{_path(index)}.error must be an object with integer code and string message"
        )
    # JSON-RPC answers a request it could not read with id null; MCP lets it be omitted.
    response_id = value.get("id")
    return JsonRpcMessage(
        "response", None if response_id is None else _request_id(response_id, index), None, None
    )


def _request_id(value: Any, index: int | None) -> str | int:
    if type(value) is str:
        return value
    if type(value) is int and -MAX_SAFE_ID <= value <= MAX_SAFE_ID:
        return value
    if type(value) is int:
        raise BodyRejected("bad-id", f"{_path(index)}.id {value} is outside ±(2**53 - 1)")
    raise BodyRejected("bad-id", f"{_path(index)}.id must be a string or an integer, not {_json_type(value)}")


def _unknown_members(
    value: dict[str, Any], allowed: frozenset[str], index: int | None, what: str
) -> BodyRejected:
    unknown = ", ".join(repr(name) for name in sorted(value.keys() - allowed))
    return BodyRejected("unknown-member", f"{_path(index)} has member(s) {unknown}, not part of {what}")


def _path(index: int | None) -> str:
    return "$" if index is None else f"$[{index}]"


def _member_path(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() else f"{path}[{json.dumps(name)}]"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _excerpt(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
