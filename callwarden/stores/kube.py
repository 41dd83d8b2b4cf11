"""`DocumentStore` in the Kubernetes API server: custom resources with a status subresource.

Every ext_authz replica reads and writes the same objects, so replicas stay stateless. A status
write is a PUT carrying the `resourceVersion` that was read: the API server answers 409 when
another writer got there first, which is what makes each transition happen at most once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from callwarden.kube.client import Kube, event_body
from callwarden.stores.documents import StoreConflict

__all__ = ["KubeDocuments"]

log = logging.getLogger(__name__)
COMPONENT: Final = "callwarden"


class KubeDocuments:
    def __init__(self, kube: Kube, instance: str = COMPONENT) -> None:
        self.kube = kube
        self.instance = instance  # reportingInstance of the Events this store posts

    def create(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        wanted = copy.deepcopy(dict(body))
        status = wanted.pop("status", None)
        wanted["metadata"].pop("resourceVersion", None)  # a create names no version
        namespace = wanted["metadata"]["namespace"]
        try:
            created = self.kube.create_custom(plural, namespace, wanted)
        except ApiException as error:
            if error.status == 409:
                raise StoreConflict(
                    f"{plural} {namespace}/{wanted['metadata']['name']} already exists"
                ) from error
            raise
        if status is None:
            return created
        # A create ignores status (it is a subresource): write it at once, on the version just created.
        return self.replace_status(plural, {**created, "status": status})

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get_custom(plural, namespace, name)

    def select(
        self, plural: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in (labels or {}).items())
        items = self.kube.list_custom_labelled(plural, namespace, selector)
        return sorted(
            items, key=lambda item: (item["metadata"].get("creationTimestamp", ""), item["metadata"]["name"])
        )

    def replace_status(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.kube.replace_status(plural, dict(body))
        except ApiException as error:
            if error.status in (404, 409):
                raise StoreConflict(
                    f"{plural} {body['metadata']['name']} changed (or vanished) since it was read"
                ) from error
            raise

    def delete(self, plural: str, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        try:
            self.kube.delete_custom(
                plural, metadata["namespace"], metadata["name"], str(metadata["resourceVersion"])
            )
        except ApiException as error:
            if error.status in (404, 409):
                raise StoreConflict(
                    f"{plural} {metadata['name']} changed (or vanished) since it was read"
                ) from error
            raise

    def event(self, body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        metadata = body["metadata"]
        involved = {
            "kind": body.get("kind", ""),
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid"),
        }
        kind = "Warning" if warning else "Normal"
        event = event_body(involved, kind, reason, message, component=COMPONENT, instance=self.instance)
        try:
            self.kube.create_event(metadata["namespace"], event)
        except ApiException as error:  # an Event is a courtesy; the status and the decision log say it all
            log.warning(
                "cannot post Event for %s/%s: HTTP %s", metadata["namespace"], metadata["name"], error.status
            )
