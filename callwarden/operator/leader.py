"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Why a Lease and not kopf's peering: kopf peering pauses operators of *lower* priority, but two
replicas of the same Deployment have the same priority and both keep running (kopf only logs a
warning). A Lease gives exactly one writer, needs no extra CRDs, and is what every Kubernetes
controller (and `kubectl get lease`) already understands.

Semantics (client-go's, with its default timings):
- The holder renews every `retry_period`; others take the Lease over when they have seen the
  same `renewTime` for longer than `lease_duration` (measured on their own monotonic clock, so
  clock skew between nodes does not matter), or at once when the holder released it.
- Every write is conditional on the Lease's resourceVersion, so two candidates can never both
  win the same round.
- The leader considers itself leader only until `renew_deadline` (< `lease_duration`) after its
  last successful renewal began: a leader cut off from the API server (or paused) stops
  writing before anyone else can start.
- On a clean shutdown the leader releases the Lease (empty holder) so a standby takes over
  without waiting for it to expire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from callwarden.kube.client import Kube, describe_error

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for the Lease `namespace/name` in a background thread until `stop()`."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_change = on_change
        self._leader_until = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._was_leader = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callwarden-leader", daemon=True)

    def is_leader(self) -> bool:
        """True while this replica may write: checked right before every write."""
        return time.monotonic() < self._leader_until

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; a leader gives the Lease up (unless `release` is False)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        if release and self.is_leader():
            self._release()
        self._leader_until = 0.0
        self._notify()

    def _run(self) -> None:
        log.info("leader election: %s campaigns for Lease %s/%s", self.identity, self.namespace, self.name)
        while not self._stopped.is_set():
            try:
                self._try_acquire_or_renew()
            except Exception as error:  # the API server may be down: keep campaigning
                log.warning(
                    "leader election: Lease %s/%s: %s", self.namespace, self.name, describe_error(error)
                )
            self._notify()
            self._stopped.wait(self.retry_period)

    def _notify(self) -> None:
        leader = self.is_leader()
        if leader != self._was_leader:
            self._was_leader = leader
            log.info(
                "leader election: %s %s",
                self.identity,
                "is now the leader" if leader else "is not the leader",
            )
            if self._on_change is not None:
                self._on_change(leader)

    def _try_acquire_or_renew(self) -> None:
        started = time.monotonic()
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            self._create(started)
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        observed = (holder, spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, started
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and started < self._observed_at + duration:
            self._leader_until = 0.0  # someone else holds a live Lease
            return
        mine = holder == self.identity
        now = _now()
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if mine else now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if mine else 1),
        }
        try:
            replaced = self.kube.replace_lease(self.namespace, lease)
        except ApiException as error:
            if error.status != 409:
                raise
            return  # someone else won this round; the next read says who
        self._won(started, replaced)

    def _create(self, started: float) -> None:
        now = _now()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            created = self.kube.create_lease(self.namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
            return
        self._won(started, created)

    def _won(self, started: float, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        self._observed = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            lease["metadata"].get("resourceVersion"),
        )
        self._observed_at = started
        self._leader_until = started + self.renew_deadline

    def _release(self) -> None:
        try:
            lease = self.kube.read_lease(self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {
                **lease["spec"],
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": _now(),
            }
            self.kube.replace_lease(self.namespace, lease)
            log.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as error:  # it expires on its own
            log.warning(
                "leader election: could not release Lease %s/%s: %s",
                self.namespace,
                self.name,
                describe_error(error),
            )
