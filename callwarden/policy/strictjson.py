"""Strict JSON: one meaning per document, or a rejection saying why (pure, no I/O).

The PEP authorizes what it parsed; the MCP server, the token issuer's relying parties and every
later consumer act on what *they* parse. Any input two parsers may read differently is an
authorization bypass, so `loads` rejects every document whose meaning is not unique:

- bytes must be UTF-8 (no byte order mark, no overlong forms, no encoded surrogates) and
  strings must not carry lone surrogate escapes (`"\\ud800"`), which parsers replace, keep
  or reject differently;
- exactly one JSON value, no trailing data, no NaN/Infinity, no number that overflows;
- no duplicate member names at any depth: most parsers keep the last duplicate, some the
  first. Names that are equal under Unicode case folding are duplicates too, because Go's
  encoding/json matches members to fields case-insensitively (and folds U+017F long s to
  "s", U+212A Kelvin sign to "k"): `{"name": "allowed", "Name": "secret"}` ran "secret"
  on the Go MCP SDK while a case-sensitive PEP saw "allowed" (CVE-2026-27896);
- bounded nesting depth, checked on the raw bytes before the recursive parser runs, so the
  outcome never depends on the interpreter's recursion limit (which other libraries raise).

The parser is the standard library's C scanner with an `object_pairs_hook`, the only fast
parser here that shows duplicate members (orjson keeps the last duplicate silently and
turns integers beyond 64 bits into floats). Cheap pre-checks on the raw bytes keep the
common document on the fast path.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, Final

import orjson

# The parsers (ours and the diagnostics below) recurse once per nesting level; this keeps
# them far from the interpreter's recursion limit whatever the caller configures.
MAX_DEPTH_LIMIT: Final = 256
REASONS: Final = frozenset(
    {"not-utf8", "not-json", "trailing-data", "duplicate-member", "too-deep", "lone-surrogate", "bad-number"}
)

_BOM: Final = b"\xef\xbb\xbf"
_JSON_WHITESPACE: Final = " \t\n\r"
# A JSON string, escape-aware. Scanned left to right over valid JSON it finds exactly the
# strings, because a quote outside a string can only open one. An unterminated string runs
# to the end of the input: every match attempt succeeds, so hostile quoting cannot make
# the scan restart at each quote (quadratic time).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_OPEN_CLOSE: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET: Final = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class JsonRejected(ValueError):
    """The input is not exactly one unambiguous JSON value.

    `reason` is a stable kebab-case code (one of REASONS) for metrics and logs; `message` is
    for humans and names the JSON path at fault where there is one. Messages may quote member
    names: callers that must not echo their input map `reason` to their own wording.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def loads(raw: bytes, *, max_depth: int) -> Any:
    """The one JSON value in `raw`, nesting at most `max_depth` arrays/objects; else JsonRejected."""
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_LIMIT}, not {max_depth}")
    if raw.startswith(_BOM):
        raise JsonRejected("not-utf8", "JSON text starts with a UTF-8 byte order mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonRejected("not-utf8", f"invalid UTF-8 at byte {error.start}: {error.reason}") from None
    # The count of brackets anywhere bounds the depth from above: usually the exact,
    # string-aware measure is not needed at all.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = _nesting_depth(raw)
        if depth > max_depth:
            raise JsonRejected("too-deep", f"JSON text nests {depth} levels deep; the limit is {max_depth}")
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    try:
        value, end = _DECODER.raw_decode(text, start)
    except _DuplicateMember as duplicate:
        raise _duplicate_rejection(text, start, duplicate) from None
    except JsonRejected:  # from the hooks below; a ValueError, so it must not reach the last clause
        raise
    except json.JSONDecodeError as error:
        raise JsonRejected("not-json", f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except ValueError as error:  # int(): more digits than the interpreter converts
        raise JsonRejected("bad-number", str(error)) from None
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        raise JsonRejected("trailing-data", f"data after the JSON value at character {end}")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _utf8_encodable(value):
        path = _lone_surrogate_path(value, "$")
        if path is not None:
            raise JsonRejected("lone-surrogate", f"{path} contains an unpaired UTF-16 surrogate escape")
    return value


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
    raise JsonRejected("not-json", f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise JsonRejected("bad-number", f"number {_excerpt(text)} overflows a double")
    return number


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_members, parse_constant=_reject_constant, parse_float=_finite_float
)


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


def _duplicate_rejection(text: str, start: int, duplicate: _DuplicateMember) -> JsonRejected:
    where, first, second = "an object", duplicate.first, duplicate.second
    try:
        value, _ = json.JSONDecoder(object_pairs_hook=_Members).raw_decode(text, start)
    except ValueError:
        pass  # the input is also malformed after the duplicate: name the members only
    else:
        found = _first_duplicate(value, "$")
        if found is not None:
            where, first, second = found
    if first == second:
        return JsonRejected("duplicate-member", f"{where} has member {first!r} more than once")
    return JsonRejected(
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


def _member_path(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() else f"{path}[{json.dumps(name)}]"


def _excerpt(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
