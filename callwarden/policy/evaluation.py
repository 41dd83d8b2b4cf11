"""AuthZEN 1.0 request shapes: strict checks of the information model and the boxcar expansion.

Two kinds of failure, as the spec separates them (standards.md §1.3): a payload that is wrong
as a whole raises `AuthzenRequestError` (an HTTP binding answers 400); an Access Evaluations
item that is incomplete or malformed becomes an `InvalidItem`, which the PDP answers with
`decision: false` for that item alone (certification c-3-4-1).

JSON objects are expected as `dict` and arrays as `list`, the types a JSON parser produces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

ENTITIES: Final = ("subject", "action", "resource")
# Members of a request that the PDP reads; everything else is ignored, as the spec requires.
REQUEST_MEMBERS: Final = (*ENTITIES, "context")
_REQUIRED_MEMBERS: Final = {"subject": ("type", "id"), "action": ("name",), "resource": ("type", "id")}

# Containers nested deeper than this are refused before any rule runs (the spec asks PDPs to
# bound nesting): twice the data path's JSON-RPC bound, as a mapping may nest arguments a level
# or two further, and far below the ~10,000 levels at which cel-cpp's value conversion
# overflows the C stack and kills the process (cel-expr-python 0.1.3).
MAX_DEPTH: Final = 128

_CONTAINERS: Final = (dict, list)

Semantic = Literal["execute_all", "deny_on_first_deny", "permit_on_first_permit"]
SEMANTICS: Final[tuple[Semantic, ...]] = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")


class AuthzenRequestError(ValueError):
    """The payload as a whole is malformed: an HTTP binding answers 400 Bad Request."""


@dataclass(frozen=True)
class InvalidItem:
    """An Access Evaluations item that cannot be evaluated; it is answered, not raised."""

    message: str

    def to_authzen(self) -> dict[str, Any]:
        return {"decision": False, "context": {"error": {"status": 400, "message": self.message}}}


@dataclass(frozen=True)
class Evaluations:
    """A boxcar request with its defaults applied: one complete request (or problem) per item."""

    semantic: Semantic
    items: tuple[dict[str, Any] | InvalidItem, ...]


def request_problem(request: object) -> str | None:
    """Why `request` is not a complete, well-formed Access Evaluation request; None if it is."""
    if not isinstance(request, Mapping):
        return "the request must be a JSON object"
    for member in REQUEST_MEMBERS:
        if member in request:
            problem = _member_problem(member, request[member])
            if problem is not None:
                return problem
        elif member != "context":
            return f"{member} is required"
    return None


def nesting_problem(request: Mapping[str, Any]) -> str | None:
    """Why a request already known to be well-formed nests too deeply; None if it does not (the
    one check of `request_problem` that a request's construction cannot guarantee)."""
    try:
        encoded = orjson.dumps(request)
    except TypeError:  # not JSON data (CEL refuses it later): walk it
        pass
    else:
        # Every level of nesting opens a bracket, so with no more brackets than levels allowed
        # (counting those inside strings too) nothing nests too deeply: 0.5 µs instead of a walk.
        if encoded.count(b"{") + encoded.count(b"[") <= MAX_DEPTH:
            return None
    for member in REQUEST_MEMBERS:
        if member in request and _nests_deeper(request[member], MAX_DEPTH - 1):
            return f"{member} nests deeper than {MAX_DEPTH} levels"
    return None


def check_evaluation_request(body: object) -> None:
    """Raise AuthzenRequestError unless `body` is a valid Access Evaluation request."""
    problem = request_problem(body)
    if problem is not None:
        raise AuthzenRequestError(problem)


def parse_evaluations(body: object) -> Evaluations | None:
    """Expand an Access Evaluations request; None when `evaluations` is absent or empty, in
    which case the spec makes the body a single Access Evaluation request.

    Top-level subject, action, resource and context are defaults; an item's member replaces
    the default whole (no deep merge, context included).
    """
    if not isinstance(body, Mapping):
        raise AuthzenRequestError("the request must be a JSON object")
    semantic = _semantic(body)
    if "evaluations" not in body:
        return None
    evaluations = body["evaluations"]
    if not isinstance(evaluations, list):
        raise AuthzenRequestError("evaluations must be an array")
    if not evaluations:
        return None
    defaults = _defaults(body)
    return Evaluations(
        semantic, tuple(_expand(index, item, defaults) for index, item in enumerate(evaluations))
    )


def _semantic(body: Mapping[str, Any]) -> Semantic:
    if "options" not in body:
        return "execute_all"
    options = body["options"]
    if not isinstance(options, dict):
        raise AuthzenRequestError("options must be an object")
    semantic = options.get("evaluations_semantic", "execute_all")
    for known in SEMANTICS:  # a loop rather than `in` so the type narrows to the Literal
        if semantic == known:
            return known
    raise AuthzenRequestError(f"options.evaluations_semantic must be one of {', '.join(SEMANTICS)}")


def _defaults(body: Mapping[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for member in REQUEST_MEMBERS:
        if member in body:
            problem = _member_problem(member, body[member])
            if problem is not None:
                raise AuthzenRequestError(f"top-level {problem}")
            defaults[member] = body[member]
    return defaults


def _expand(index: int, item: object, defaults: dict[str, Any]) -> dict[str, Any] | InvalidItem:
    if not isinstance(item, dict):
        return InvalidItem(f"evaluations[{index}] must be an object")
    request = dict(defaults)
    for member in REQUEST_MEMBERS:
        if member in item:
            problem = _member_problem(member, item[member])
            if problem is not None:
                return InvalidItem(f"evaluations[{index}]: {problem}")
            request[member] = item[member]
    for kind in ENTITIES:
        if kind not in request:
            return InvalidItem(
                f"evaluations[{index}]: {kind} is required (in the item or as a top-level default)"
            )
    return request


def _member_problem(member: str, value: object) -> str | None:
    if not isinstance(value, dict):
        return f"{member} must be an object"
    problem = None if member == "context" else _entity_problem(member, value)
    if problem is None and _nests_deeper(value, MAX_DEPTH - 1):
        problem = f"{member} nests deeper than {MAX_DEPTH} levels"
    return problem


def _entity_problem(kind: str, entity: dict[str, Any]) -> str | None:
    for member in _REQUIRED_MEMBERS[kind]:
        if member not in entity:
            return f"{kind}.{member} is required"
        if not isinstance(entity[member], str):
            return f"{kind}.{member} must be a string"
    if "properties" in entity and not isinstance(entity["properties"], dict):
        return f"{kind}.properties must be an object"
    return None


def _nests_deeper(container: dict[str, Any] | list[Any], allowed: int) -> bool:
    """True if `container` holds containers nested more than `allowed` levels below it. The
    recursion stops at `allowed`, so a hostile value cannot exhaust the Python stack either."""
    for child in container.values() if isinstance(container, dict) else container:
        if isinstance(child, _CONTAINERS) and (allowed == 0 or _nests_deeper(child, allowed - 1)):
            return True
    return False
