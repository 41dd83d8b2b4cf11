"""`ApprovalStore` over a `DocumentStore`: AccessRequest objects <-> binding records.

The spec is the binding record (written once); the status is the decision and the execution.
The label `callwarden.io/subject` (a hash: label values are limited to 63 characters of a small
alphabet, subject ids are not) finds a subject's records in one list call on both backends:
deduplication, the identical retry and the submission limit all read that one list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from callwarden.policy.approval import AccessRequestRecord, subject_key
from callwarden.policy.model import GROUP_VERSION
from callwarden.stores.documents import DocumentStore

__all__ = ["KIND", "PLURAL", "SUBJECT_LABEL", "ApprovalRecords", "from_object", "to_object"]

KIND: Final = "AccessRequest"
PLURAL: Final = "accessrequests"
SUBJECT_LABEL: Final = "callwarden.io/subject"
_SPEC: Final = (
    ("server", "server"),
    ("tool", "tool"),
    ("arguments_digest", "argumentsDigest"),
    ("call", "call"),
    ("subject", "subject"),
    ("resource", "resource"),
    ("action", "action"),
    ("context", "context"),
    ("binding_hash", "bindingHash"),
    ("revision", "bundleRevision"),
    ("created_at", "createdAt"),
    ("expires_at", "expiresAt"),
    ("submission", "submission"),
    ("remote", "remote"),
)
_STATUS: Final = (
    ("state", "state"),
    ("execution", "execution"),
    ("approver", "approver"),
    ("decided_at", "decidedAt"),
    ("approved_until", "approvedUntil"),
    ("comment", "comment"),
    ("result", "result"),
    ("disposition", "disposition"),
    ("remote_approval", "remoteApproval"),
    ("claimed_at", "claimedAt"),
)


def to_object(record: AccessRequestRecord) -> dict[str, Any]:
    """The AccessRequest object of a record (absent optional fields are left out)."""
    spec = {wire: getattr(record, name) for name, wire in _SPEC if getattr(record, name) is not None}
    spec["requester"] = {"actors": [dict(actor) for actor in record.actors]}
    if record.agent is not None:
        spec["requester"]["agent"] = record.agent
    status = {wire: getattr(record, name) for name, wire in _STATUS if getattr(record, name) is not None}
    metadata: dict[str, Any] = {
        "name": record.id,
        "namespace": record.namespace,
        "labels": {
            SUBJECT_LABEL: subject_key(record.subject_id),
        },
    }
    if record.version is not None:
        metadata["resourceVersion"] = record.version
    return {"apiVersion": GROUP_VERSION, "kind": KIND, "metadata": metadata, "spec": spec, "status": status}


def from_object(body: Mapping[str, Any]) -> AccessRequestRecord:
    """The record of a stored AccessRequest; raises KeyError/TypeError for one that is not well-formed."""
    metadata, spec, status = body["metadata"], body["spec"], body.get("status") or {}
    requester = spec.get("requester") or {}
    fields: dict[str, Any] = {name: spec.get(wire) for name, wire in _SPEC}
    fields.update({name: status[wire] for name, wire in _STATUS if wire in status})
    return AccessRequestRecord(
        id=metadata["name"],
        namespace=metadata["namespace"],
        agent=requester.get("agent"),
        actors=tuple(requester.get("actors") or ()),
        version=metadata.get("resourceVersion"),
        **fields,
    )


class ApprovalRecords:
    """Binding records in a document store (Kubernetes or SQLite)."""

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents

    def create(self, record: AccessRequestRecord) -> AccessRequestRecord:
        return from_object(self.documents.create(PLURAL, to_object(record)))

    def get(self, namespace: str, task_id: str) -> AccessRequestRecord | None:
        found = self.documents.get(PLURAL, namespace, task_id)
        return None if found is None else from_object(found)

    def replace(self, record: AccessRequestRecord) -> AccessRequestRecord:
        return from_object(self.documents.replace_status(PLURAL, to_object(record)))

    def all(self, namespace: str | None = None) -> list[AccessRequestRecord]:
        return [from_object(body) for body in self.documents.select(PLURAL, namespace)]

    def for_subject(self, namespace: str, subject_id: str) -> list[AccessRequestRecord]:
        labels = {SUBJECT_LABEL: subject_key(subject_id)}
        return [from_object(body) for body in self.documents.select(PLURAL, namespace, labels)]

    def delete(self, record: AccessRequestRecord) -> None:
        """Delete a record on the version read (raises StoreConflict if it moved)."""
        self.documents.delete(PLURAL, to_object(record))

    def event(self, record: AccessRequestRecord, reason: str, message: str, *, warning: bool = False) -> None:
        self.documents.event(to_object(record), reason, message, warning=warning)
