"""The document interface both backends implement (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from callwarden.policy.approval import StoreConflict

__all__ = ["DocumentStore", "StoreConflict", "labels_match"]


class DocumentStore(Protocol):
    """CRD-shaped objects of `callwarden.io/v1alpha1`, addressed by plural, namespace and name."""

    def create(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new object (its status too); returns it as stored, with `metadata.resourceVersion`.
        Raises StoreConflict when an object of that name exists."""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def select(
        self, plural: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects (of one namespace, all of whose `labels` match), oldest first (to the second)."""

    def replace_status(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Write `body.status` if the stored object still has `body.metadata.resourceVersion`;
        raises StoreConflict otherwise. Returns the object as stored."""

    def delete(self, plural: str, body: Mapping[str, Any]) -> None:
        """Delete the object if it still has `body.metadata.resourceVersion`; raises StoreConflict."""

    def event(self, body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """Record that something happened to the object (a Kubernetes Event; a log row standalone)."""


def labels_match(metadata: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    present = metadata.get("labels") or {}
    return all(present.get(key) == value for key, value in (labels or {}).items())
