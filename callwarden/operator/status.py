"""Status conditions and the Kubernetes Events that report their transitions.

Two condition types, as `kubectl wait --for=condition=Ready` and dashboards expect:
- `Ready`: the object's current spec is what ext_authz enforces (reason `Published`), or why
  not (`SchemaError`, `MappingError`, `CompileError`, `TargetNotFound`, `BundleTooLarge`...).
- `Invalid`: the spec itself is rejected, with a message naming every field and expression at
  fault; `False` (reason `Valid`) otherwise.
An McpServer with mapping discovery (pinning.py) has two more:
- `Discovered`: its tools/list was read (`ToolsListed`), or why not (`CredentialMissing`,
  `CredentialForbidden`, `ServerUnreachable`, `ListingRejected`...).
- `MappingChanged`: `True` while the server declares a mapping the spec has not accepted
  (`MappingNotAccepted`) or one that does not compile (`MappingInvalid`).
`lastTransitionTime` moves only when a condition's status flips, as the API conventions say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

READY: Final = "Ready"
INVALID: Final = "Invalid"
DISCOVERED: Final = "Discovered"
MAPPING_CHANGED: Final = "MappingChanged"
MAX_MESSAGE: Final = 4000


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC at second precision (metav1.Time)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal or Warning
    reason: str
    message: str


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def conditions(
    previous: Mapping[str, Any], wanted: Sequence[Condition], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """The status' conditions, keeping each lastTransitionTime unless its status flipped."""
    old = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    result = []
    for condition in wanted:
        status = "True" if condition.status else "False"
        before = old.get(condition.type)
        since = before.get("lastTransitionTime") if before and before.get("status") == status else None
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": shorten(condition.message),
            "lastTransitionTime": since or now,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        result.append(entry)
    return result


def transition(previous: Mapping[str, Any], current: Mapping[str, Any]) -> EventSpec | None:
    """The Event to post when the Ready condition changed status or reason, else None."""
    before = _ready(previous)
    after = _ready(current)
    if after is None or (
        before is not None and (before["status"], before["reason"]) == (after["status"], after["reason"])
    ):
        return None
    kind = "Normal" if after["status"] == "True" else "Warning"
    return EventSpec(kind, str(after["reason"]), str(after.get("message", "")))


def transition_of(kind: str, previous: Mapping[str, Any], current: Mapping[str, Any]) -> EventSpec | None:
    """The Event for a warning condition `kind` (True is the problem): a Warning when it turns
    True or its message changes while True (one more tool changed), a Normal one when it clears."""
    before, after = _condition(previous, kind), _condition(current, kind)
    if after is None:
        return None
    was_true = before is not None and before.get("status") == "True"
    if after["status"] == "True":
        if was_true and before is not None and before.get("message") == after.get("message"):
            return None
        return EventSpec("Warning", str(after["reason"]), str(after.get("message", "")))
    if not was_true:
        return None
    return EventSpec("Normal", str(after["reason"]), str(after.get("message", "")))


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return _condition(status, READY)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def status_patch(previous: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch for `status` that also removes the members `desired` dropped."""
    patch: dict[str, Any] = {key: None for key in previous if key not in desired}
    patch.update(desired)
    return patch
