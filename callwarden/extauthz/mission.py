"""Layer 1, after the token: bind the request to the mission it presents (policy.mission).

An agent names its task on every MCP request, in one of two ways:

- the `callwarden-mission` header, exactly `<namespace>/<name>; ref=<reference>` (optional
  spaces or tabs around the `;`, nothing else), where `<reference>` is the mission's
  `sha256:` + 43 base64url characters, at most 512 bytes in all. Repeated headers (which Envoy
  joins with a comma) and any other form are refused, never guessed at;
- a `mission` claim in the access token, `{"id": "<namespace>/<name>", "reference": "..."}`,
  put there by an authorization server (e.g. by token exchange). Both may be present only if
  they name the same mission at the same reference.

The mission must be in the store, approved at exactly the presented reference (so a silently
edited spec never matches), unexpired, of the McpServer's own namespace, for the token's
subject and for one of its named agents (and actor chain, when it names one). Anything else is
a specific denial (`MissionRejected.reason`). A request that presents no mission pays two
dictionary lookups: missions are looked up in a `MissionIndex` that the store's watcher
rebuilds when missions change, never per call.

A call that the embedded PDP finds outside the bound mission proposes a child mission for the
missing grant (`policy.mission.child_spec`): `MissionBook.propose_expansions` writes it to the
store as `Proposed`, named after a digest of its spec, so a retried call proposes nothing new.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from callwarden.policy.bundle import CompiledServer
from callwarden.policy.catalog import Lister, Listing
from callwarden.policy.decide import DENIED, JsonRpcError, Verdict
from callwarden.policy.mapping.server import actor_chain
from callwarden.policy.mapping.values import MappingFault
from callwarden.policy.mission import (
    OUTSIDE_PREFIX,
    ActiveMission,
    MissionIndex,
    MissionRejected,
    child_key,
    child_spec,
)
from callwarden.policy.model import GROUP_VERSION, Mission

log = logging.getLogger(__name__)

MISSION_HEADER: Final = "callwarden-mission"
MISSION_CLAIM: Final = "mission"
MAX_HEADER_BYTES: Final = 512
# Undecided expansions one mission may have: an agent probing outside its task must not be able to
# flood the store (and the reviewers) with proposals. Past it, the call is denied, proposing nothing.
MAX_PENDING_EXPANSIONS: Final = 16
_HEADER: Final = re.compile(
    r"(?P<namespace>[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)/(?P<name>[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?)"
    r"[ \t]*;[ \t]*ref=(?P<reference>sha256:[A-Za-z0-9_-]{43})"
)
_ID: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
_REFERENCE: Final = re.compile(r"sha256:[A-Za-z0-9_-]{43}")

# Creates a proposed Mission in the store; returns False when it already exists.
Proposer = Callable[[Mission], bool]


def parse_mission_header(value: str) -> tuple[str, str]:
    """(`namespace/name`, reference) from a `callwarden-mission` header; MissionRejected if malformed."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_HEADER_BYTES:
        raise MissionRejected(
            "mission-header", f"the {MISSION_HEADER} header is longer than {MAX_HEADER_BYTES} bytes"
        )
    match = _HEADER.fullmatch(value)
    if match is None:
        raise MissionRejected(
            "mission-header",
            f"the {MISSION_HEADER} header must be exactly '<namespace>/<name>; ref=sha256:<digest>'",
        )
    return f"{match['namespace']}/{match['name']}", match["reference"]


def mission_claim(claims: Mapping[str, Any]) -> tuple[str, str] | None:
    """(`namespace/name`, reference) from the token's `mission` claim, None without one."""
    if MISSION_CLAIM not in claims:
        return None
    claim = claims[MISSION_CLAIM]
    if type(claim) is not dict or set(claim) != {"id", "reference"}:
        raise MissionRejected(
            "mission-claim", "the token's mission claim must be {id, reference} and nothing else"
        )
    key, reference = claim["id"], claim["reference"]
    if type(key) is not str or _ID.fullmatch(key) is None:
        raise MissionRejected("mission-claim", "the token's mission claim has an invalid id")
    if type(reference) is not str or _REFERENCE.fullmatch(reference) is None:
        raise MissionRejected("mission-claim", "the token's mission claim has an invalid reference")
    return key, reference


def presented_mission(headers: Mapping[str, str], claims: Mapping[str, Any]) -> tuple[str, str] | None:
    """The mission the request names (header, claim, or both agreeing), None if it names none."""
    header = headers.get(MISSION_HEADER)
    claimed = mission_claim(claims)
    if header is None:
        return claimed
    presented = parse_mission_header(header)
    if claimed is not None and claimed != presented:
        raise MissionRejected(
            "mission-conflict", "the header and the token's mission claim name different missions"
        )
    return presented


# A tools/list under a mission lists what the mission can reach, of what the caller could call.
_OUTSIDE_MISSION: Final = Listing(False, "outside-mission")
_NOT_BOUND: Final = Listing(False, "mission-not-bound")
_POSSIBLE: Final = Listing(True, "possible")


class MissionCatalog:
    """The catalog question under a mission: a tool is listed when the caller could call it
    (`inner`; None when nothing else filters) and a grant of the mission can reach it."""

    def __init__(self, inner: Lister | None, active: ActiveMission | None, server: str) -> None:
        self._inner = inner
        self._active = active  # None: the mission no longer binds (revoked since the check)
        self._server = server

    def listing(self, tool: str) -> Listing:
        if self._active is None:
            return _NOT_BOUND
        if not self._active.reaches(self._server, tool):
            return _OUTSIDE_MISSION
        return self._inner.listing(tool) if self._inner is not None else _POSSIBLE


class MissionBook:
    """The missions one ext_authz process enforces: an index swapped as one reference."""

    def __init__(self, missions: Iterable[Mission] = (), proposer: Proposer | None = None) -> None:
        self._index = MissionIndex(missions)
        self._lock = threading.Lock()  # serializes rebuilds; readers never take it
        self._proposer = proposer

    @property
    def index(self) -> MissionIndex:
        return self._index

    def update(self, missions: Iterable[Mission]) -> None:
        """Enforce exactly `missions` from the next check on (the store's full, current list)."""
        with self._lock:
            self._index = MissionIndex(missions, previous=self._index)

    def bind(
        self, server: CompiledServer, presented: tuple[str, str], claims: Mapping[str, Any]
    ) -> ActiveMission:
        """The mission `presented` for this call, or MissionRejected saying why not."""
        key, reference = presented
        if key.split("/", 1)[0] != server.server.metadata.namespace:
            raise MissionRejected("mission-namespace", f"mission {key} is not of this server's namespace")
        active = self._index.resolve(key, reference, datetime.now(UTC))
        identity = server.server.spec.identity
        try:
            chain = actor_chain(claims if type(claims) is dict else dict(claims))
        except MappingFault as fault:
            raise MissionRejected("mission-agent", fault.message) from None
        actors = None if chain is None else [actor["sub"] for actor in chain]
        active.check_caller(claims.get(identity.subject_claim), claims.get(identity.agent_claim), actors)
        return active

    def narrow(
        self,
        server: CompiledServer,
        headers: Mapping[str, str],
        claims: Mapping[str, Any],
        lister: Lister | None,
    ) -> Lister | None:
        """The catalog of a tools/list: `lister` as it is for a request naming no mission, else
        narrowed to what the mission reaches (nothing, if it no longer binds)."""
        try:
            presented = presented_mission(headers, claims)
            if presented is None:
                return lister
            active: ActiveMission | None = self.bind(server, presented, claims)
        except MissionRejected:
            active = None
        return MissionCatalog(lister, active, server.key)

    def propose_expansions(self, active: ActiveMission, verdicts: Sequence[Verdict]) -> list[Verdict]:
        """Propose a child mission for each call found outside `active`. The verdicts, with those
        whose expansion was not proposed (too many pending) saying so."""
        outside = f"{OUTSIDE_PREFIX}{active.key}"
        answered: list[Verdict] = []
        for verdict in verdicts:
            if outside not in verdict.reasons or verdict.tool is None or not verdict.requests:
                answered.append(verdict)
                continue
            request = verdict.requests[0]
            spec = child_spec(active, request["context"]["mcp"]["server"], verdict.tool, request["resource"])
            namespace, name = child_key(active, spec).split("/", 1)
            child = Mission.model_validate(
                {
                    "apiVersion": GROUP_VERSION,
                    "kind": "Mission",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                }
            )
            if self._index.get(child.key) is None and self._proposer is not None:
                if self._index.pending_children(active.reference) >= MAX_PENDING_EXPANSIONS:
                    answered.append(_not_proposed(verdict, active))
                    continue
                try:
                    self._proposer(child)
                except Exception:  # the denial stands either way; a reviewer can propose by hand
                    log.exception("could not propose expansion %s of mission %s", child.key, active.key)
            answered.append(verdict)
        return answered


def _not_proposed(verdict: Verdict, active: ActiveMission) -> Verdict:
    message = (
        f"Access to tool {verdict.tool!r} denied: outside mission {active.key}, which already has "
        f"{MAX_PENDING_EXPANSIONS} expansions pending review; nothing more is proposed until they are decided"
    )
    error = JsonRpcError(DENIED, message)
    return dataclasses.replace(verdict, error=error)
