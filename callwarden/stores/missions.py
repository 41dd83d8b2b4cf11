"""`MissionRecords` over a `DocumentStore`: Mission objects in the API server or the SQLite file.

Proposing creates the object and nothing else: no status (a mission without one is `Proposed`),
so a proposer needs no right on `missions/status` and can never approve its own mission. Who
proposed and when are annotations (`callwarden.io/proposed-by`, `callwarden.io/proposed-at`) for
the audit trail.
Approving, denying and revoking read the object, compute the next status in the pure core
(`policy.mission.transition`) and write it on the `resourceVersion` read, so of two reviewers
acting at once exactly one transition wins and the other gets StoreConflict. Every transition
is also an Event on the object (a log row standalone).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from callwarden.policy.mission import PROPOSED_AT, PROPOSED_BY, transition
from callwarden.policy.model import Mission
from callwarden.stores.documents import DocumentStore

__all__ = ["PLURAL", "MissionRecords", "mission_of"]

log = logging.getLogger(__name__)

PLURAL: Final = "missions"
_REASONS: Final = {"approve": "MissionApproved", "deny": "MissionDenied", "revoke": "MissionRevoked"}


def mission_of(body: Mapping[str, Any]) -> Mission:
    """The Mission of a stored object; raises ValidationError for one that is not well-formed."""
    return Mission.model_validate(dict(body))


def _body(mission: Mission) -> dict[str, Any]:
    body = mission.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"] = {"name": mission.metadata.name, "namespace": mission.metadata.namespace}
    if mission.metadata.annotations:
        body["metadata"]["annotations"] = dict(mission.metadata.annotations)
    if mission.metadata.resource_version is not None:
        body["metadata"]["resourceVersion"] = mission.metadata.resource_version
    return body


class MissionRecords:
    """Missions in a document store (Kubernetes or SQLite)."""

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents

    def propose(self, mission: Mission, by: str, now: datetime | None = None) -> Mission:
        """Store `mission` as Proposed by `by`; StoreConflict if one of that name exists."""
        when = (now or datetime.now(UTC)).isoformat(timespec="microseconds").replace("+00:00", "Z")
        body = _body(mission)
        body.pop("status", None)
        body["metadata"].pop("resourceVersion", None)
        body["metadata"]["annotations"] = {PROPOSED_BY: by, PROPOSED_AT: when}
        created = mission_of(self.documents.create(PLURAL, body))
        self.documents.event(body, "MissionProposed", f"proposed by {by}: {mission.spec.purpose}")
        return created

    def get(self, key: str) -> Mission | None:
        namespace, name = key.split("/", 1)
        found = self.documents.get(PLURAL, namespace, name)
        return None if found is None else mission_of(found)

    def all(self, namespace: str | None = None) -> list[Mission]:
        """Every well-formed mission; one that is not (edited by hand past the schema) is logged
        and left out, so it binds nothing."""
        missions = []
        for body in self.documents.select(PLURAL, namespace):
            try:
                missions.append(mission_of(body))
            except ValidationError as error:
                metadata = body.get("metadata") or {}
                log.warning(
                    "ignoring mission %s/%s: %s", metadata.get("namespace"), metadata.get("name"), error
                )
        return missions

    def move(self, key: str, command: str, by: str, now: datetime | None = None) -> Mission:
        """Apply `command` (approve, deny, revoke) by `by`; raises LookupError for no such
        mission, MissionTransitionError when the command does not apply, StoreConflict when
        another writer moved it first."""
        mission = self.get(key)
        if mission is None:
            raise LookupError(f"no mission {key}")
        status = transition(mission, command, by, now or datetime.now(UTC))
        body = _body(mission.model_copy(update={"status": status}))
        stored = mission_of(self.documents.replace_status(PLURAL, body))
        self.documents.event(body, _REASONS[command], f"{status.phase.lower()} by {by} at {status.reference}")
        return stored
