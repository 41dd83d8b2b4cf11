"""Missions: one task a person approves once, that every decision across servers binds to.

Pure data and functions (no I/O): the reference of a spec, the index of known missions that
the data path asks "is this mission, at this reference, approved for this caller?", scope
matching with compiled CEL, lineage (a child mission expands its parent) and the decision of a
tools/call under a mission.

**The reference** is `sha256:` + unpadded base64url of the SHA-256 of the RFC 8785 (JCS)
canonical JSON of the validated spec, with fields at their default value left out (so a spec
written with or without `parent: null`, or a later callwarden that adds a defaulted field,
keeps its reference). An approval records the reference it approved (`status.reference`).

**An approved spec is immutable by reference, not by a webhook:** a spec edited after approval
has another reference, so it no longer matches its own `status.reference` and the mission
counts as not approved ("spec changed after approval") until someone approves the new spec.
No code path has to forbid the edit (a cluster without the operator, a SQLite file edited by
hand); every path that would use the mission sees that it is not the one a person approved.

**Lineage.** A child mission names its parent by the parent's reference (`spec.parent`). An
approved child whose subject and namespace equal its parent's widens the parent: a call under
the parent (the agent keeps presenting the parent's id and reference) is in scope when a grant
of the parent or of any approved descendant covers it, and the decision names the mission
whose grant did. A child never outlives its parent (its expiry is the earlier of the two).

**Deciding under a mission** (`decide_in_mission`): ToolPolicy decides first. A Deny rule (or a
rule whose condition failed) stands: a mission never widens past platform guardrails. Else a
tools/call inside the scope is allowed by the mission, RequireApproval included (the person
approved the whole task once). Else it is outside the mission: a denial that a person can lift
by approving the expansion it proposes (a child mission for the missing grant), even when a
standing Allow rule would have allowed it, because the agent is acting for this task and anything
beyond it needs a person. Such a denial is not `requestable` in the approvals sense: what is
asked for is a wider task, not this one call, so no per-call access request is opened beside it
(and the identical retry after the expansion is approved is simply allowed).
Methods other than tools/call (initialize, tools/list) are decided by ToolPolicy alone.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from callwarden.policy.canonical import canonical
from callwarden.policy.cel import CelCompileError, Program, compile_expression, prepare
from callwarden.policy.model import (
    Grant,
    Mission,
    MissionPhase,
    MissionSpec,
    MissionStatus,
    MissionTransition,
)
from callwarden.policy.pdp import NO_RULE_ALLOWS, RULE_VARIABLES, Decision, activation_of, condition_outcome

__all__ = [
    "ActiveMission",
    "CompiledGrant",
    "MissionIndex",
    "MissionRejected",
    "MissionTransitionError",
    "child_key",
    "child_spec",
    "decide_in_mission",
    "effective_phase",
    "mission_reference",
    "parse_timestamp",
    "transition",
]

TOOLS_CALL: Final = "tools/call"
# Reasons in decisions and log lines: `mission:<ns>/<name>` allowed by that mission's scope,
# `mission-outside:<ns>/<name>` denied as outside it (the denial proposes an expansion).
ALLOWED_PREFIX: Final = "mission:"
OUTSIDE_PREFIX: Final = "mission-outside:"
# Who proposed a mission and when (annotations: a proposer writes no status, see stores.missions).
PROPOSED_BY: Final = "callwarden.io/proposed-by"
PROPOSED_AT: Final = "callwarden.io/proposed-at"
# A lineage longer than this is refused rather than walked (a cycle cannot occur: a reference
# covers the parent's reference, so a mission cannot be its own ancestor).
MAX_LINEAGE: Final = 32


def mission_reference(spec: MissionSpec) -> str:
    """`sha256:` + base64url(SHA-256(JCS(spec))), fields at their defaults omitted."""
    digest = hashlib.sha256(
        canonical(spec.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    ).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 UTC instant as the models spell it (`2026-12-03T18:00:00Z`)."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class MissionRejected(Exception):
    """A mission cannot bind this call; `reason` is a stable code for logs and tests."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True, slots=True)
class CompiledGrant:
    """One grant, CEL compiled once; `mission` is the key of the mission that holds it."""

    mission: str
    index: int
    servers: frozenset[str]  # McpServer keys (`ns/name`); empty means every server of the namespace
    tools: tuple[re.Pattern[str], ...]
    when: Program | None

    @property
    def name(self) -> str:
        return f"{self.mission}/scope[{self.index}]"

    def covers(self, server: str, tool: str) -> bool:
        return (not self.servers or server in self.servers) and any(t.match(tool) for t in self.tools)


def compile_grants(mission: Mission) -> tuple[CompiledGrant, ...]:
    """The mission's grants; raises CelCompileError naming the grant for a bad `when`."""
    namespace = mission.metadata.namespace
    return tuple(
        _compile_grant(mission.key, namespace, index, grant) for index, grant in enumerate(mission.spec.scope)
    )


def _compile_grant(key: str, namespace: str, index: int, grant: Grant) -> CompiledGrant:
    servers = frozenset() if "*" in grant.servers else frozenset(f"{namespace}/{s}" for s in grant.servers)
    tools = tuple(re.compile(fnmatch.translate(glob)) for glob in grant.tools)
    when = None
    if grant.when is not None:
        try:
            when = compile_expression(grant.when, RULE_VARIABLES)
        except CelCompileError as error:
            raise CelCompileError(error.source, f"spec.scope[{index}].when: {error.message}") from error
    return CompiledGrant(key, index, servers, tools, when)


@dataclass(frozen=True, slots=True)
class ActiveMission:
    """An approved, unexpired mission as a call sees it: its identity and its effective scope
    (its own grants, then those of its approved descendants, in lineage order)."""

    mission: Mission
    reference: str
    expires: datetime
    grants: tuple[CompiledGrant, ...]
    lineage: tuple[str, ...]  # the keys of the approved descendants whose grants are included

    @property
    def key(self) -> str:
        return self.mission.key

    def context(self) -> dict[str, str]:
        """`context.mission` of the AuthZEN request: what any PDP decides with."""
        return {"id": self.key, "reference": self.reference, "purpose": self.mission.spec.purpose}

    def reaches(self, server: str, tool: str) -> bool:
        """Whether some grant (of the mission or an approved expansion) can cover calls of `tool`
        on `server`: the catalog a tools/list under this mission may show (conditions aside,
        which need the call's arguments)."""
        return any(grant.covers(server, tool) for grant in self.grants)

    def check_caller(self, subject: object, agent: object, actors: Sequence[str] | None) -> None:
        """Raises MissionRejected unless the token's subject, agent and actor chain are the mission's."""
        spec = self.mission.spec
        if subject != spec.subject:
            raise MissionRejected("mission-subject", f"mission {self.key} acts for another subject")
        for named in spec.agents:
            if named.client_id == agent and (
                named.actors is None or list(named.actors) == list(actors or ())
            ):
                return
        raise MissionRejected("mission-agent", f"mission {self.key} does not name this agent")


@dataclass(frozen=True, slots=True)
class _Entry:
    mission: Mission
    reference: str
    grants: tuple[CompiledGrant, ...] | None  # None: a grant did not compile (the mission is unusable)
    problem: str | None
    expires: datetime  # parsed once: strptime costs more than the rest of a resolve


class MissionIndex:
    """Every known mission by key, and approved children by their parent's reference.

    Built whenever the store changes (never per call); `resolve` is a few dict lookups. Grants
    compiled for one reference are reused by the next index (`previous`), so a store change
    recompiles only the missions that changed.
    """

    def __init__(self, missions: Iterable[Mission], previous: MissionIndex | None = None) -> None:
        reused = previous._compiled if previous is not None else {}
        self._compiled: dict[str, _Entry] = {}
        self._by_key: dict[str, _Entry] = {}
        self._children: dict[str, list[_Entry]] = {}
        for mission in sorted(missions, key=lambda m: m.key):
            reference = mission_reference(mission.spec)
            entry = reused.get(reference)
            if entry is None or entry.mission.key != mission.key:
                entry = _entry(mission, reference)
            entry = _Entry(mission, reference, entry.grants, entry.problem, entry.expires)
            self._compiled[reference] = entry
            self._by_key[mission.key] = entry
            if mission.spec.parent is not None and _approved_as_is(entry):
                self._children.setdefault(mission.spec.parent, []).append(entry)

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Mission | None:
        entry = self._by_key.get(key)
        return None if entry is None else entry.mission

    def missions(self) -> list[Mission]:
        return [entry.mission for entry in self._by_key.values()]

    def resolve(self, key: str, reference: str, now: datetime) -> ActiveMission:
        """The mission `key` if it is approved at exactly `reference` and unexpired at `now`;
        raises MissionRejected with the precise reason otherwise."""
        entry = self._by_key.get(key)
        if entry is None:
            raise MissionRejected("mission-unknown", f"no mission {key}")
        status = entry.mission.status
        if status.phase == "Revoked":
            raise MissionRejected("mission-revoked", f"mission {key} was revoked")
        if status.phase == "Denied":
            raise MissionRejected("mission-denied", f"mission {key} was denied")
        if status.phase == "Proposed":
            raise MissionRejected("mission-not-approved", f"mission {key} is not approved")
        if status.reference != entry.reference:
            raise MissionRejected(
                "mission-changed",
                f"mission {key} changed after approval (its spec no longer has the approved reference)",
            )
        if reference != entry.reference:
            raise MissionRejected("mission-reference", f"the presented reference is not mission {key}'s")
        expires = entry.expires
        if status.phase == "Expired" or now >= expires:
            raise MissionRejected("mission-expired", f"mission {key} expired at {entry.mission.spec.expires}")
        if entry.grants is None:
            raise MissionRejected("mission-invalid", f"mission {key} cannot be enforced: {entry.problem}")
        grants, lineage = list(entry.grants), []
        for child in self._descendants(entry, now, expires):
            grants.extend(child.grants or ())
            lineage.append(child.mission.key)
        return ActiveMission(entry.mission, entry.reference, expires, tuple(grants), tuple(lineage))

    def _descendants(self, root: _Entry, now: datetime, expires: datetime) -> list[_Entry]:
        """Approved, usable descendants of `root` in breadth-first, key order."""
        found: list[_Entry] = []
        frontier = [root]
        for _ in range(MAX_LINEAGE):
            next_frontier = []
            for parent in frontier:
                for child in self._children.get(parent.reference, ()):
                    if (
                        child.grants is not None
                        and child.mission.metadata.namespace == root.mission.metadata.namespace
                        and child.mission.spec.subject == root.mission.spec.subject
                        and now < min(child.expires, expires)
                    ):
                        found.append(child)
                        next_frontier.append(child)
            if not next_frontier:
                break
            frontier = next_frontier
        return found

    def pending_children(self, reference: str) -> int:
        """How many proposed (undecided) missions name `reference` as their parent."""
        return sum(
            1
            for entry in self._by_key.values()
            if entry.mission.spec.parent == reference and entry.mission.status.phase == "Proposed"
        )

    def lineage_of(self, key: str) -> list[Mission]:
        """The mission `key` and every mission that names it (or a descendant) as parent, in
        breadth-first key order, whatever their phase: what an auditor reads."""
        entry = self._by_key.get(key)
        if entry is None:
            return []
        by_parent: dict[str, list[_Entry]] = {}
        for candidate in self._by_key.values():
            if candidate.mission.spec.parent is not None:
                by_parent.setdefault(candidate.mission.spec.parent, []).append(candidate)
        found, frontier = [entry], [entry]
        for _ in range(MAX_LINEAGE):
            frontier = [child for parent in frontier for child in by_parent.get(parent.reference, ())]
            if not frontier:
                break
            found.extend(frontier)
        return [item.mission for item in found]


def _approved_as_is(entry: _Entry) -> bool:
    status = entry.mission.status
    return status.phase == "Approved" and status.reference == entry.reference


def _entry(mission: Mission, reference: str) -> _Entry:
    expires = parse_timestamp(mission.spec.expires)
    try:
        return _Entry(mission, reference, compile_grants(mission), None, expires)
    except CelCompileError as error:
        return _Entry(mission, reference, None, error.message, expires)


# --- approving ------------------------------------------------------------------------------

# Which phase each command moves a mission to, and from which phases it may.
_TRANSITIONS: Final[Mapping[str, tuple[MissionPhase, frozenset[str]]]] = {
    "approve": ("Approved", frozenset({"Proposed"})),
    "deny": ("Denied", frozenset({"Proposed"})),
    "revoke": ("Revoked", frozenset({"Approved"})),
}


class MissionTransitionError(Exception):
    """The command does not apply to the mission in its current phase."""


def effective_phase(mission: Mission, now: datetime) -> MissionPhase | str:
    """The phase as enforcement sees it: an approval of another spec is `Changed`, an approved
    mission past its expiry is `Expired`."""
    status = mission.status
    if status.phase == "Approved" and status.reference != mission_reference(mission.spec):
        return "Changed"
    if status.phase in ("Approved", "Proposed") and now >= parse_timestamp(mission.spec.expires):
        return "Expired"
    return status.phase


def transition(mission: Mission, command: str, by: str, now: datetime) -> MissionStatus:
    """The status after `command` (approve, deny, revoke) by `by` at `now`; raises
    MissionTransitionError when it does not apply. Approving a spec that changed after its
    approval approves the new spec (its new reference); an expired mission cannot be approved."""
    target, sources = _TRANSITIONS[command]
    phase = effective_phase(mission, now)
    allowed = sources | ({"Changed"} if command in ("approve", "revoke") else set())
    if phase not in allowed:
        raise MissionTransitionError(f"mission {mission.key} is {phase}; it cannot be {target.lower()}")
    if command == "approve":  # a person must never approve what enforcement cannot run
        try:
            compile_grants(mission)
        except CelCompileError as error:
            raise MissionTransitionError(
                f"mission {mission.key} cannot be approved: {error.message}"
            ) from None
    reference = mission_reference(mission.spec)
    time = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    precise = now.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    step = MissionTransition(phase=target, by=by, time=precise, reference=reference)
    return mission.status.model_copy(
        update={
            "phase": target,
            "reference": reference,
            "approver": by,
            "time": time,
            "history": [*mission.status.history, step],
        }
    )


# --- deciding a call under a mission ------------------------------------------------------


def decide_in_mission(decision: Decision, request: Mapping[str, Any], mission: ActiveMission) -> Decision:
    """The decision for `request` (one complete SARC request of a call bound to `mission`), given
    ToolPolicy's `decision` for it. See the module docstring for the order."""
    mcp = request["context"]["mcp"]
    if mcp["method"] != TOOLS_CALL:
        return decision
    if not decision.allowed and not decision.requestable and decision is not NO_RULE_ALLOWS:
        return decision  # a Deny rule or a failed condition: guardrails win over the mission
    server, tool = mcp["server"], mcp["tool"]
    covering = [grant for grant in mission.grants if grant.covers(server, tool)]
    failures = []
    activation = None  # prepared once, for the first grant with a condition
    for grant in covering:
        if grant.when is None:
            return _allowed(grant)
        if activation is None:
            activation = prepare(activation_of(request), shared=True)
        outcome = condition_outcome(grant.when, activation)
        if outcome is True:
            return _allowed(grant)
        if outcome is not False:
            failures.append(f"{grant.name} failed: {outcome}")
    detail = "; ".join(failures) or f"no grant covers tool {tool!r} on {server}"
    child = child_key(mission, child_spec(mission, server, tool, request["resource"]))
    message = f"outside mission {mission.key}: {detail}; proposed expansion {child} for a reviewer to approve"
    return Decision(False, (f"{OUTSIDE_PREFIX}{mission.key}",), message)


def _allowed(grant: CompiledGrant) -> Decision:
    return Decision(True, (f"{ALLOWED_PREFIX}{grant.name}",), f"allowed by mission grant {grant.name}")


# --- expansion ----------------------------------------------------------------------------


def child_spec(parent: ActiveMission, server: str, tool: str, resource: Mapping[str, Any]) -> MissionSpec:
    """The child mission a call outside `parent` proposes: the same task, subject, agents and
    expiry, `parent` = the parent's reference, scope = exactly the missing grant (this server,
    this tool, this resource)."""
    spec = parent.mission.spec
    condition = None
    if isinstance(resource.get("type"), str) and isinstance(resource.get("id"), str):
        # JSON string literals are CEL string literals (same escapes), so no value can break out.
        condition = (
            f"resource.type == {orjson.dumps(resource['type']).decode()}"
            f" && resource.id == {orjson.dumps(resource['id']).decode()}"
        )
    grant = Grant(servers=[server.split("/", 1)[1]], tools=[tool], when=condition)
    return MissionSpec(
        purpose=f"expand: {spec.purpose}"[:512],
        subject=spec.subject,
        agents=spec.agents,
        expires=spec.expires,
        scope=[grant],
        parent=parent.reference,
    )


def child_key(parent: ActiveMission, spec: MissionSpec) -> str:
    """A child's key: the parent's namespace, its name and a digest of the child's spec, so the
    same missing grant proposed by many calls (or many replicas) is one proposal, never a flood."""
    digest = mission_reference(spec).removeprefix("sha256:")[:10].lower().replace("_", "x").replace("-", "y")
    metadata = parent.mission.metadata
    return f"{metadata.namespace}/{metadata.name[:240]}-x{digest}"
