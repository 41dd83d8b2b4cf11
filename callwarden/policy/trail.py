"""A mission's audit trail, rebuilt from decision-log lines of any number of replicas and servers.

Pure: the caller reads the files and the store; `build_trail` orders and checks, `render_text`
prints. The same lines in any order, from any number of files, give the same trail byte for
byte: events sort by time, then decision id (a ULID, unique across replicas), then kind; a line
seen twice (a decision-log sink may write a line again after a failed write) counts once.

What the trail holds:
- the mission and its lineage (every child that names it, or a descendant, as parent), with
  each one's transitions (proposed children, approvals, denials, revocations) as events;
- every decision-log line that presented the mission (its id), allowed or denied, with server,
  method, tool, decision, the deciding rules (a `mission:<key>/scope[i]` reason names the
  mission in the lineage whose grant allowed it), subject, agent, actor chain and resource;
- a reference check for each of those lines: it must carry the reference the mission was
  approved at. A line allowed under another reference is a violation (`verified` False);
- the calls by the mission's agents under no mission while it was approved (from its first
  approval to its revocation, denial or expiry): what the agents did outside the task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from callwarden.policy.mission import (
    ALLOWED_PREFIX,
    OUTSIDE_PREFIX,
    PROPOSED_AT,
    PROPOSED_BY,
    mission_reference,
    parse_timestamp,
)
from callwarden.policy.model import Mission

__all__ = ["TrailError", "build_trail", "render_json", "render_text"]

_KIND_ORDER: Final = {"transition": 0, "call": 1, "unbound": 2}


class TrailError(Exception):
    """A decision-log line that is not a decision line (named by file and line number)."""


def _instant(value: Any, where: str) -> datetime:
    if type(value) is not str:
        raise TrailError(f"{where}: no time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TrailError(f"{where}: time {value[:40]!r} is not RFC 3339") from None
    if parsed.tzinfo is None:
        raise TrailError(f"{where}: time {value[:40]!r} has no offset")
    return parsed.astimezone(UTC)


def _first_request(line: Mapping[str, Any]) -> Mapping[str, Any]:
    requests = line.get("requests")
    first = requests[0] if type(requests) is list and requests else {}
    return first if type(first) is dict else {}


def _member(request: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = request.get(name)
    return value if type(value) is dict else {}


def _call(line: Mapping[str, Any], kind: str) -> dict[str, Any]:
    request = _first_request(line)
    context, resource, subject = (_member(request, name) for name in ("context", "resource", "subject"))
    reasons = [r for r in line.get("reasons") or () if type(r) is str]
    # A call refused for its mission reached no PDP: the line's mission member names the caller.
    mission = _member(line, "mission")
    event: dict[str, Any] = {
        "kind": kind,
        "time": line["time"],
        "decision_id": line.get("decision_id"),
        "server": line.get("server"),
        "method": line.get("method"),
        "tool": line.get("tool"),
        "decision": line.get("decision"),
        "code": line.get("code"),
        "rules": reasons,
        "subject": subject.get("id", mission.get("subject")),
        "agent": context.get("agent", mission.get("agent")),
        "actors": [a.get("sub") for a in context.get("actors") or () if type(a) is dict],
        "resource": f"{resource.get('type', '-')}/{resource.get('id', '-')}" if resource else None,
    }
    granted = [
        r.removeprefix(ALLOWED_PREFIX).rsplit("/scope[", 1)[0]
        for r in reasons
        if r.startswith(ALLOWED_PREFIX)
    ]
    if granted:
        event["granted_by"] = granted[0]
    if any(r.startswith(OUTSIDE_PREFIX) for r in reasons):
        event["outside"] = True
        event["message"] = line.get("message")
    return event


def build_trail(lineage: Sequence[Mission], lines: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The trail of `lineage[0]` (its lineage as `MissionIndex.lineage_of` gives it) from
    `(where, line)` pairs (`where` names the file and line for errors)."""
    root = lineage[0]
    approved_reference = root.status.reference
    agents = {agent.client_id for agent in root.spec.agents}
    start, end = _window(root)
    unique: dict[str, tuple[datetime, Mapping[str, Any]]] = {}
    for where, line in lines:
        if type(line) is not dict or type(line.get("decision_id")) is not str:
            raise TrailError(f"{where}: not a decision-log line")
        when = _instant(line.get("time"), where)
        known = unique.get(line["decision_id"])
        if known is None or orjson.dumps(line, option=orjson.OPT_SORT_KEYS) < orjson.dumps(
            known[1], option=orjson.OPT_SORT_KEYS
        ):
            unique[line["decision_id"]] = (when, line)
    events: list[tuple[datetime, str, int, dict[str, Any]]] = []
    violations = 0
    for when, line in unique.values():
        mission = line.get("mission")
        if type(mission) is dict and mission.get("id") == root.key:
            event = _call(line, "call")
            event["reference"] = mission.get("reference")
            event["reference_ok"] = mission.get("reference") == approved_reference
            if line.get("decision") == "allow" and not event["reference_ok"]:
                violations += 1
            events.append((when, line["decision_id"], _KIND_ORDER["call"], event))
        elif mission is None and start is not None and start <= when < end:
            event = _call(line, "unbound")
            if event["agent"] in agents:
                events.append((when, line["decision_id"], _KIND_ORDER["unbound"], event))
    for member in lineage:
        for step in _transitions(member):
            events.append((_instant(step["time"], member.key), "", _KIND_ORDER["transition"], step))
    events.sort(
        key=lambda item: (item[0], item[1], item[2], orjson.dumps(item[3], option=orjson.OPT_SORT_KEYS))
    )
    return {
        "mission": _describe(root),
        "lineage": [_describe(member) for member in lineage[1:]],
        "events": [event for *_, event in events],
        "verified": violations == 0,
        "violations": violations,
    }


def _transitions(mission: Mission) -> list[dict[str, Any]]:
    """The proposal (from the annotations its proposer wrote) and every change of phase."""
    steps = []
    annotations = mission.metadata.annotations
    if PROPOSED_AT in annotations:
        proposed = {
            "phase": "Proposed",
            "by": annotations.get(PROPOSED_BY, "-"),
            "time": annotations[PROPOSED_AT],
        }
        steps.append({**proposed, "reference": mission_reference(mission.spec)})
    steps.extend(step.model_dump(mode="json") for step in mission.status.history)
    return [{"kind": "transition", "mission": mission.key, **step} for step in steps]


def _window(mission: Mission) -> tuple[datetime | None, datetime]:
    """From the first approval to the first revocation or denial after it, or the expiry."""
    start: datetime | None = None
    end = parse_timestamp(mission.spec.expires)
    for step in mission.status.history:
        when = _instant(step.time, mission.key)
        if step.phase == "Approved" and start is None:
            start = when
        elif step.phase in ("Revoked", "Denied") and start is not None:
            end = min(end, when)
    return start, end


def _describe(mission: Mission) -> dict[str, Any]:
    spec, status = mission.spec, mission.status
    return {
        "id": mission.key,
        "purpose": spec.purpose,
        "subject": spec.subject,
        "agents": [agent.client_id for agent in spec.agents],
        "expires": spec.expires,
        "parent": spec.parent,
        "scope": [grant.model_dump(mode="json", by_alias=True, exclude_none=True) for grant in spec.scope],
        "phase": status.phase,
        "approved_reference": status.reference,
        "reference": mission_reference(spec),
    }


def render_json(trail: Mapping[str, Any]) -> str:
    return orjson.dumps(trail, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode() + "\n"


def render_text(trail: Mapping[str, Any]) -> str:
    """The trail for a person: the mission, its lineage, then one line per event."""
    mission = trail["mission"]
    out = [
        f"mission {mission['id']}  {mission['phase']}  {mission['approved_reference'] or '(never approved)'}",
        f"  purpose: {mission['purpose']}",
        f"  subject: {mission['subject']}  agents: {', '.join(mission['agents'])}",
        f"  expires: {mission['expires']}",
    ]
    if mission["reference"] != mission["approved_reference"]:
        out.append(f"  spec changed since: its reference is now {mission['reference']}")
    for child in trail["lineage"]:
        grants = "; ".join(f"{','.join(g['servers'])}:{','.join(g['tools'])}" for g in child["scope"])
        out.append(f"  expansion {child['id']}  {child['phase']}  parent {child['parent']}  scope {grants}")
    out.append("trail:")
    plumbing = 0
    for event in trail["events"]:
        if event["kind"] != "transition" and event["method"] != "tools/call" and event["decision"] == "allow":
            plumbing += 1  # initialize, tools/list, notifications: the session, not the task
            continue
        out.append("  " + _event_text(event))
    if plumbing:
        out.append(
            f"  ({plumbing} allowed session message(s) such as initialize and tools/list; --json lists them)"
        )
    verdict = (
        "verified: every call carries the mission's approved reference"
        if trail["verified"]
        else f"NOT VERIFIED: {trail['violations']} allowed call(s) carry another reference"
    )
    out.append(verdict)
    return "\n".join(out) + "\n"


def _event_text(event: Mapping[str, Any]) -> str:
    if event["kind"] == "transition":
        return f"{event['time']}  {event['phase'].lower():<8} {event['mission']} by {event['by']}"
    fields = [
        event["time"],
        f"{event['decision'] or '-':<5}",
        "no-mission" if event["kind"] == "unbound" else "",
        f"{event['server']}",
        f"{event['tool'] or event['method']}",
        f"resource={event['resource']}",
        f"subject={event['subject']}",
        f"agent={event['agent']}",
    ]
    if event["actors"]:
        fields.append(f"actors={'>'.join(str(a) for a in event['actors'])}")
    fields.append(f"rules={','.join(event['rules']) or '-'}")
    if event["kind"] == "call" and not event["reference_ok"]:
        fields.append("REFERENCE-MISMATCH")
    if event.get("outside"):
        fields.append(f"({event['message']})")
    fields.append(f"id={event['decision_id']}")
    return "  ".join(field for field in fields if field)
