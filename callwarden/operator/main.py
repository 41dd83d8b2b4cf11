"""`callwarden operator`: kopf watches, a Lease elects the one writer, `Reconciler` converges.

Every replica runs kopf's watch streams for McpServer and ToolPolicy (reading is harmless and
keeps a standby warm); their events only mark a namespace dirty. Only the replica holding the
Lease reconciles and writes. kopf is run with peering off (the Lease replaces it) and with its
event posting off (the reconciler posts transition Events itself, from the leader only); kopf
never patches the watched objects because only watching (`on.event`) handlers are registered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import kopf

from callwarden.kube.client import Kube, configuration, new_api_client
from callwarden.operator import metrics
from callwarden.operator.discovery import Discoverer
from callwarden.operator.leader import LeaderElector
from callwarden.operator.mesh import MeshOptions, MeshWiring
from callwarden.operator.reconcile import Reconciler
from callwarden.policy.model import API_GROUP, API_VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorOptions:
    kubeconfig: str | None = None
    lease_namespace: str = "callwarden-system"
    lease_name: str = "callwarden-operator"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    resync_seconds: float = 60.0
    liveness: str | None = None
    metrics_listen: str | None = None  # host:port of /metrics (operator/metrics.py); None: not served
    mesh: MeshOptions = field(default_factory=MeshOptions)


def default_identity() -> str:
    """The pod name (hostname) plus a random suffix: unique even across restarts of one pod."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def build_registry(reconciler: Reconciler, kubeconfig: str | None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kubeconfig)

    for plural in ("mcpservers", "toolpolicies"):
        # async: kopf runs it on the event loop (a sync handler would run in a thread, and the
        # reconciler's wake-up event belongs to the loop).
        @kopf.on.event(API_GROUP, API_VERSION, plural, id=f"mark-{plural}", registry=registry)
        async def changed(namespace: str | None, **_: Any) -> None:
            if namespace:
                reconciler.request(namespace)

    return registry


def connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """kopf's credentials from the same configuration the kubernetes client uses."""
    settings = configuration(kubeconfig)
    header = settings.get_api_key_with_prefix("BearerToken") or settings.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=settings.host,
        ca_path=settings.ssl_ca_cert,
        insecure=not settings.verify_ssl,
        username=settings.username or None,
        password=settings.password or None,
        scheme=scheme,
        token=token,
        certificate_path=settings.cert_file,
        private_key_path=settings.key_file,
    )


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True  # the Lease elects the writer (see leader.py for why)
    settings.posting.enabled = False  # Events come from the leader's reconciler only
    settings.watching.server_timeout = 120  # re-establish streams regularly, whatever the network does
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 10
    return settings


async def run_operator(options: OperatorOptions) -> None:
    """Run until SIGTERM/SIGINT (kopf handles both); a leader releases its Lease on the way out."""
    # kopf logs every handler run at INFO; ours only mark a namespace dirty, which is noise.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    kube = Kube(new_api_client(options.kubeconfig))
    identity = options.identity or default_identity()
    elector: LeaderElector | None = None

    def is_leader() -> bool:
        return elector is not None and elector.is_leader()

    def discovery_changed(namespace: str) -> None:
        # Called on a discovery thread; the reconciler's wake-up belongs to the loop.
        loop.call_soon_threadsafe(reconciler.request, namespace)

    discoverer = Discoverer(kube, on_change=discovery_changed)
    reconciler = Reconciler(
        kube,
        is_leader=is_leader,
        identity=identity,
        resync_seconds=options.resync_seconds,
        mesh=MeshWiring(kube, options.mesh) if options.mesh.mode != "none" else None,
        discoverer=discoverer,
    )

    def leadership_changed(leader: bool) -> None:
        metrics.LEADER.set(1 if leader else 0)
        if leader:
            loop.call_soon_threadsafe(reconciler.request_all)

    elector = LeaderElector(
        kube,
        namespace=options.lease_namespace,
        name=options.lease_name,
        identity=identity,
        lease_duration=options.lease_duration,
        renew_deadline=options.renew_deadline,
        retry_period=options.retry_period,
        on_change=leadership_changed,
    )
    stop_metrics = metrics.serve(options.metrics_listen) if options.metrics_listen else None
    elector.start()
    worker = asyncio.create_task(reconciler.run(), name="callwarden-reconciler")
    discovering = asyncio.create_task(discoverer.run(is_leader), name="callwarden-discovery")
    log.info("operator %s started; Lease %s/%s", identity, options.lease_namespace, options.lease_name)
    try:
        await kopf.operator(
            registry=build_registry(reconciler, options.kubeconfig),
            settings=kopf_settings(),
            clusterwide=True,
            liveness_endpoint=options.liveness,
        )
    finally:
        worker.cancel()
        discovering.cancel()
        await asyncio.to_thread(elector.stop)
        if stop_metrics is not None:
            await asyncio.to_thread(stop_metrics)
        log.info("operator %s stopped", identity)
