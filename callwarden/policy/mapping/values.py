"""Compiled mapping values, and how they resolve on the hot path.

A mapping compiles into a tree of small nodes (a constant, an expression, an object or a
list of nodes). Resolving a node gives a JSON-shaped value, or `ABSENT` for a field the
mapping leaves out. Anything that makes a request impossible to build raises
`MappingFault`, which `ServerMapping.map` turns into a `MappingFailure`.
"""

from __future__ import annotations

import re
from typing import Any, Final, Protocol

from callwarden.policy.cel import ABSENT, Activation, CelEvaluationError, Program, prepare

# Input variables of the COAZ-MCP binding (and of D1): the JSON-RPC params and the token claims.
VARIABLES: Final = ("token", "params")
# Error texts travel back to the caller and into the audit log: keep them bounded.
MAX_DETAIL_LENGTH: Final = 300

# `token.sub`, `params.arguments.id`, `token.?client_id`, `token.?roles.orValue([])`: a plain
# selection path, optionally ending in one optional selection, itself optionally defaulted to a
# simple literal. These are resolved in Python (see `Expression.resolve`).
_SELECTOR = re.compile(
    r"""\s*(token|params)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    (?:\.\?([A-Za-z_][A-Za-z0-9_]*)
       (?:\.orValue\(\s*(\[\s*\]|\{\s*\}|true|false|null|-?[0-9]{1,18}|'[^'\\\n]*'|"[^"\\\n]*")\s*\))?
    )?\s*""",
    re.VERBOSE,
)


class MappingFault(Exception):
    """A request cannot be built for this call; the text names the field and expression."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def shorten(text: str, limit: int = MAX_DETAIL_LENGTH) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class CallInputs:
    """The input variables of one call, and the same as a CEL activation."""

    __slots__ = ("_prepared", "activation", "params", "token")

    def __init__(self, token: dict[str, Any], params: dict[str, Any]) -> None:
        self.token = token
        self.params = params
        self.activation = {"token": token, "params": params}
        self._prepared: Activation | None = None

    def prepared(self) -> Activation:
        """The activation checked once for every expression of the call, when the first needs it:
        a call whose expressions all resolve in Python never pays for the check. Most calls
        leave at most one expression to CEL, so it is not built to be shared up front."""
        if self._prepared is None:
            self._prepared = prepare(self.activation, shared=False)
        return self._prepared


def describe(value: Any) -> str:
    """A short, safe description of a value for an error message."""
    if value is ABSENT:
        return "absent"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


class Node(Protocol):
    def resolve(self, inputs: CallInputs) -> Any: ...


class Constant:
    """A literal: shared by every request built from the mapping, so never mutated."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def resolve(self, inputs: CallInputs) -> Any:
        return self.value


_FALLBACK: Final = object()


def _literal(text: str) -> Any:
    """The value of an `orValue` default matched by `_SELECTOR` (no escapes in its strings)."""
    if text[0] in "'\"":
        return text[1:-1]
    if text[0] in "[{":
        return [] if text[0] == "[" else {}
    return {"true": True, "false": False, "null": None}.get(text) if text[0].isalpha() else int(text)


def _copy_of_strings(value: Any) -> Any:
    """A copy of a list of strings (a request never aliases the token's claims), else _FALLBACK."""
    if type(value) is list and all(type(item) is str for item in value):
        return list(value)
    return _FALLBACK


class Expression:
    """A compiled CEL expression.

    A plain selection path (`token.sub`, `params.name`, `token.?client_id`, optionally ending
    in `.orValue(literal)`) that lands on a string or a list of strings, or on an absent optional
    member, is the common case; through the CEL seam it costs several µs, mostly checking the
    whole activation, so it is resolved here with dict lookups instead. Any other outcome (a
    missing key, another value, a non-dict container) falls back to CEL, so errors and other
    values always come from the one CEL implementation; the tests check the two agree.
    """

    __slots__ = ("_default", "_keys", "_optional", "_root", "program", "where", "written")

    def __init__(self, program: Program, written: str, where: str) -> None:
        self.program = program
        self.written = written
        self.where = where
        selector = _SELECTOR.fullmatch(program.source)
        self._root: str | None = None
        self._keys: tuple[str, ...] = ()
        self._optional: str | None = None
        self._default: Any = ABSENT  # what an absent optional member resolves to
        if selector is not None:
            self._root = selector.group(1)
            self._keys = tuple(selector.group(2).split(".")[1:])
            self._optional = selector.group(3)
            if selector.group(4) is not None:
                self._default = _literal(selector.group(4))

    def resolve(self, inputs: CallInputs) -> Any:
        if self._root is not None:
            value = self._select(inputs)
            if value is not _FALLBACK:
                return value
        try:
            # The seam checks the activation is plain JSON (bounded depth) and so is the result.
            return self.program.evaluate_prepared(inputs.prepared())
        except CelEvaluationError as error:
            written, detail = shorten(self.written, 200), shorten(error.message)
            raise MappingFault(f"field {self.where!r}: expression {written!r} failed: {detail}") from None

    def _select(self, inputs: CallInputs) -> Any:
        node: Any = inputs.token if self._root == "token" else inputs.params
        for key in self._keys:
            if type(node) is not dict:
                return _FALLBACK
            node = node.get(key, _FALLBACK)
        if self._optional is not None:
            if type(node) is not dict:
                return _FALLBACK
            node = node.get(self._optional, ABSENT)
            if node is ABSENT:
                default = self._default  # a literal; an empty list or map is made afresh per call
                return type(default)() if type(default) is list or type(default) is dict else default
        return node if type(node) is str else _copy_of_strings(node)


class Audience:
    """`token.aud` as a resource id: a single string naming this server (COAZ-MCP §Default
    Mappings). An array resolves to this server's RFC 8707 resource id when it holds it."""

    __slots__ = ("resource_id", "where", "written")

    def __init__(self, resource_id: str, written: str, where: str) -> None:
        self.resource_id = resource_id
        self.written = written
        self.where = where

    def resolve(self, inputs: CallInputs) -> Any:
        audience = inputs.token.get("aud", ABSENT)
        if type(audience) is str:
            return audience
        if type(audience) is list and self.resource_id in audience:
            return self.resource_id
        if type(audience) is list:
            problem = f"the token's aud does not contain this server's resource id {self.resource_id!r}"
        else:
            problem = f"the token's aud is {describe(audience)}, not a string or an array"
        raise MappingFault(f"field {self.where!r}: expression {self.written!r} failed: {problem}")


class ObjectNode:
    """A JSON object with at least one expression inside; fields that resolve absent are left out."""

    __slots__ = ("members",)

    def __init__(self, members: tuple[tuple[str, Node], ...]) -> None:
        self.members = members

    def resolve(self, inputs: CallInputs) -> Any:
        result = {}
        for key, node in self.members:
            value = node.resolve(inputs)
            if value is not ABSENT:
                result[key] = value
        return result


class ListNode:
    """A JSON array with at least one expression inside. A list has no field to omit, so an
    element that resolves absent is an error."""

    __slots__ = ("items", "where")

    def __init__(self, items: tuple[Node, ...], where: str) -> None:
        self.items = items
        self.where = where

    def resolve(self, inputs: CallInputs) -> Any:
        result = []
        for index, node in enumerate(self.items):
            value = node.resolve(inputs)
            if value is ABSENT:
                raise MappingFault(f"field '{self.where}[{index}]': a list element cannot be absent")
            result.append(value)
        return result
