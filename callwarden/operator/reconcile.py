"""Carrying out namespace plans: level-triggered, one namespace at a time, leader only.

Watch events (from kopf) only say *which namespace* to look at; each reconcile reads the
namespace's McpServers, ToolPolicies and bundle ConfigMaps afresh and converges them. So a
missed or coalesced event, a relist after the API server restarted, or a ConfigMap edited by
hand are all repaired the same way, and a periodic resync of every namespace repairs anything
no event announced.

Every write is checked against the leader Lease right before it is sent and is conditional
on the object's resourceVersion (ConfigMap replace and delete, status patch), so a replica
that lost the Lease while paused cannot overwrite a newer leader's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from kubernetes.client.exceptions import ApiException

from callwarden.kube.bundles import BUNDLE_SELECTOR, MANAGED_BY_LABEL, MANAGER, REVISION_ANNOTATION
from callwarden.kube.client import Kube, describe_error, event_body
from callwarden.operator import metrics
from callwarden.operator.discovery import Discoverer
from callwarden.operator.mesh import MeshWiring
from callwarden.operator.plan import NamespacePlan, StatusUpdate, plan_namespace
from callwarden.operator.status import EventSpec, timestamp

log = logging.getLogger(__name__)

OWN_BUNDLES: Final = f"{BUNDLE_SELECTOR},{MANAGED_BY_LABEL}={MANAGER}"
COMPONENT: Final = "callwarden-operator"
MAX_RETRY_DELAY: Final = 30.0


class NotLeader(Exception):
    """The Lease was lost mid-reconcile: stop writing."""


class Reconciler:
    """Reconciles dirty namespaces while this replica is the leader."""

    def __init__(
        self,
        kube: Kube,
        *,
        is_leader: Callable[[], bool],
        identity: str,
        resync_seconds: float = 60.0,
        debounce_seconds: float = 0.1,
        mesh: MeshWiring | None = None,
        discoverer: Discoverer | None = None,
    ) -> None:
        self.kube = kube
        self.mesh = mesh
        self.discoverer = discoverer
        self.is_leader = is_leader
        self.identity = identity
        self.resync_seconds = resync_seconds
        self.debounce_seconds = debounce_seconds
        self._dirty: set[str] = set()
        self._resync_all = True
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()

    # -- triggers (called on the event loop) --

    def request(self, namespace: str) -> None:
        self._dirty.add(namespace)
        self._wake.set()

    def request_all(self) -> None:
        self._resync_all = True
        self._wake.set()

    # -- the loop --

    async def run(self) -> None:
        next_resync = time.monotonic() + self.resync_seconds
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_resync - time.monotonic()))
            except TimeoutError:
                self._resync_all = True
            self._wake.clear()
            if not self.is_leader():
                self._dirty.clear()  # the leader does the work; winning the Lease triggers a resync
                continue
            await asyncio.sleep(self.debounce_seconds)  # let a burst of events coalesce
            if self._resync_all:
                next_resync = time.monotonic() + self.resync_seconds
                await self._mark_all()
            batch, self._dirty = self._dirty, set()
            for namespace in sorted(batch):
                if not await self._reconcile(namespace):
                    break

    async def _mark_all(self) -> None:
        try:
            namespaces = await asyncio.to_thread(self._all_namespaces)
        except Exception as error:
            log.warning("resync: cannot list objects (%s); retrying", describe_error(error))
            asyncio.get_running_loop().call_later(1.0, self.request_all)
            return
        self._resync_all = False
        self._dirty |= namespaces

    async def _reconcile(self, namespace: str) -> bool:
        """False when leadership was lost (stop the batch)."""
        try:
            await asyncio.to_thread(self.reconcile_namespace, namespace)
        except NotLeader:
            metrics.RECONCILES.labels(outcome="lost-lease").inc()
            log.info("reconcile %s: no longer the leader; stopping", namespace)
            return False
        except Exception as error:
            metrics.RECONCILES.labels(outcome="error").inc()
            failures = self._failures.get(namespace, 0) + 1
            self._failures[namespace] = failures
            delay = min(MAX_RETRY_DELAY, 0.5 * 2 ** (failures - 1))
            log.warning(
                "reconcile %s failed (%s); retrying in %.1fs", namespace, describe_error(error), delay
            )
            asyncio.get_running_loop().call_later(delay, self.request, namespace)
            return True
        metrics.RECONCILES.labels(outcome="ok").inc()
        self._failures.pop(namespace, None)
        return True

    def _all_namespaces(self) -> set[str]:
        found: set[str] = set()
        for plural in ("mcpservers", "toolpolicies"):
            found.update(obj["metadata"]["namespace"] for obj in self.kube.list_custom(plural))
        configmaps, _ = self.kube.list_configmaps(None, OWN_BUNDLES)
        found.update(cm["metadata"]["namespace"] for cm in configmaps)
        return found

    # -- one namespace (runs in a worker thread) --

    def reconcile_namespace(self, namespace: str) -> NamespacePlan:
        servers = self.kube.list_custom("mcpservers", namespace)
        policies = self.kube.list_custom("toolpolicies", namespace)
        configmaps, _ = self.kube.list_configmaps(namespace, OWN_BUNDLES)
        coverage = self.mesh.wire(namespace, servers, self._guard) if self.mesh is not None else None
        discovered = None
        if self.discoverer is not None:
            self.discoverer.track(namespace, servers)
            discovered = self.discoverer.results(namespace)
        plan = plan_namespace(
            namespace,
            servers,
            policies,
            configmaps,
            timestamp(),
            enforcement=coverage,
            discovered=discovered,
        )
        self.apply(plan)
        return plan

    def _guard(self) -> None:
        if not self.is_leader():
            raise NotLeader

    def apply(self, plan: NamespacePlan) -> None:
        # Bundles first: a status may say Published only once ext_authz can see it.
        for desired, existing in plan.writes:
            self._guard()
            name = desired["metadata"]["name"]
            if existing is None:
                self.kube.create_configmap(desired)
            else:
                desired["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                self.kube.replace_configmap(desired)
            revision = desired["metadata"]["annotations"][REVISION_ANNOTATION]
            log.info("%s wrote ConfigMap %s/%s (revision %s)", self.identity, plan.namespace, name, revision)
        for configmap in plan.deletes:
            self._guard()
            metadata = configmap["metadata"]
            try:
                self.kube.delete_configmap(plan.namespace, metadata["name"], metadata.get("resourceVersion"))
            except ApiException as error:
                if error.status != 404:
                    raise
            log.info("%s deleted ConfigMap %s/%s", self.identity, plan.namespace, metadata["name"])
        for update in plan.statuses:
            self._guard()
            self._write_status(update)

    def _write_status(self, update: StatusUpdate) -> None:
        patch = {"metadata": {"resourceVersion": update.resource_version}, "status": update.patch}
        try:
            self.kube.patch_status(update.plural, update.namespace, update.name, patch)
        except ApiException as error:
            if error.status == 404:  # deleted meanwhile: nothing to report on
                return
            raise
        ready = next((c for c in update.patch.get("conditions") or [] if c["type"] == "Ready"), None)
        log.info(
            "%s wrote status of %s %s/%s: Ready=%s (%s)",
            self.identity,
            update.kind,
            update.namespace,
            update.name,
            ready and ready["status"],
            ready and ready["reason"],
        )
        for event in (update.event, update.mapping_event):
            if event is not None:
                self._post_event(update, event)

    def _post_event(self, update: StatusUpdate, event: EventSpec) -> None:
        involved = {
            "kind": update.kind,
            "name": update.name,
            "namespace": update.namespace,
            "uid": update.uid,
        }
        body = event_body(
            involved, event.type, event.reason, event.message, component=COMPONENT, instance=self.identity
        )
        try:
            self.kube.create_event(update.namespace, body)
        except ApiException as error:  # an Event is a courtesy; the status already says it all
            log.warning(
                "cannot post Event for %s %s/%s: %s",
                update.kind,
                update.namespace,
                update.name,
                describe_error(error),
            )
