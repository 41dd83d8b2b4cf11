"""Strict MCP JSON-RPC body parsing (DESIGN.md §3 step 4).

The PEP authorizes what it parsed; the MCP server executes what *it* parses. Any input two
parsers may read differently is an authorization bypass, so this module rejects every body
whose meaning is not unique:

- the JSON itself is strict (`strictjson`): UTF-8 without a byte order mark, one value, no
  lone surrogate escapes, NaN/Infinity or overflowing numbers, no duplicate member names at
  any depth, including names equal under Unicode case folding (CVE-2026-27896). For the same
  reason the JSON-RPC envelope admits only its own members: `"Method"` is rejected, not
  ignored;
- bounded size (checked before any parsing) and bounded nesting depth (checked before the
  recursive parser runs);
- the JSON-RPC 2.0 shape MCP uses: a request has a string method and a string or integer
  id (never null, a float or a boolean), a notification has no id, a response has an id
  and exactly one of result and error, and nothing is both a request and a response.

Batches (MCP 2025-03-26; later revisions removed them but older clients send them) are
parsed element by element so each element can be authorized on its own.

Cheap pre-checks on the raw bytes keep the common body on the fast path: about 5 µs for a
303-byte tools/call on the reference VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from callwarden.policy import strictjson

# JSON-RPC error codes (contracts): the body is not parseable JSON / not a valid request.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600

MAX_BATCH: Final = 100
MAX_DEPTH_LIMIT: Final = strictjson.MAX_DEPTH_LIMIT  # the largest max_depth parse_body accepts
# Integer ids beyond I-JSON's exact range (RFC 7493 §2.2) are read differently by
# JavaScript clients and servers, so the deny response would answer another id.
MAX_SAFE_ID: Final = 2**53 - 1

_REQUEST_MEMBERS: Final = frozenset({"jsonrpc", "id", "method", "params"})
_RESPONSE_MEMBERS: Final = frozenset({"jsonrpc", "id", "result", "error"})


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
        return PARSE_ERROR if self.reason in strictjson.REASONS else INVALID_REQUEST


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
    """Parse an MCP POST body strictly; raises BodyRejected for anything ambiguous or malformed
    (and ValueError unless 1 <= max_depth <= MAX_DEPTH_LIMIT)."""
    if len(raw) > max_bytes:
        raise BodyRejected("too-large", f"body is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        value = strictjson.loads(raw, max_depth=max_depth)
    except strictjson.JsonRejected as rejected:
        raise BodyRejected(rejected.reason, rejected.message) from None
    return parse_value(value, max_batch=max_batch)


def parse_value(value: Any, *, max_batch: int = MAX_BATCH) -> ParsedBody:
    """The JSON-RPC shape checks of `parse_body`, on a value `strictjson` has already parsed (a
    caller that needs the value itself, e.g. to rewrite a response, parses once)."""
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
