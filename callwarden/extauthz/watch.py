"""ext_authz from the Kubernetes API: watch the bundle ConfigMaps, compile, swap atomically.

`callwarden extauthz --kubernetes` lists the ConfigMaps labelled `callwarden.io/bundle=true`
(cluster-wide, or in one namespace), then watches them from the list's resourceVersion. A
watch that ends is resumed from the last resourceVersion seen; one the API server no longer
has (410 Gone) is replaced by a fresh list, which also forgets ConfigMaps deleted meanwhile;
connection failures (an API server restart) are retried with capped exponential backoff.

Two threads, neither on the check path: the watch thread only records ConfigMaps; the build
thread compiles every server's complete bundle (`configmaps.assemble`) into one `Bundle`,
`compile_bundle(config_from_objects(all objects))`, the same code as the file-based loader,
and hands it to `ExtAuthz.swap` (one reference replaced; checks in flight finish on the old).

A bundle that fails keeps the last good one serving: per McpServer first (a server whose new
ConfigMaps do not compile keeps its previous revision while the others move on), then as a
whole. Each failure is logged, counted in `callwarden_bundle_errors_total` and shown on
/readyz as `degraded`; readiness stays true, because the replica still enforces a known-good
configuration and taking it out of the Service would turn a bad edit into an outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Final

from kubernetes import watch as _watch
from prometheus_client import Counter

from callwarden.authzen.client import RemotePdps
from callwarden.extauthz import metrics
from callwarden.extauthz.approvals import ApprovalDesk
from callwarden.extauthz.dpop import DpopRuntime
from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.mission_sync import proposer_for
from callwarden.extauthz.mission_watch import KubeWatchSync
from callwarden.extauthz.server import DEFAULT_WORKERS, ServerTls
from callwarden.extauthz.service import ExtAuthz, start_extauthz
from callwarden.kube.bundles import (
    BUNDLE_SELECTOR,
    ServerBundle,
    Shard,
    assemble,
    merge_objects,
    read_shard,
)
from callwarden.kube.client import Kube, describe_error
from callwarden.kube.follow import INITIAL_BACKOFF, MAX_BACKOFF, follow
from callwarden.policy.approval import ApprovalAuthority
from callwarden.policy.bundle import Bundle, BundleError, compile_bundle
from callwarden.policy.loader import ConfigError, config_from_objects
from callwarden.policy.remote import RemotePdpFactory
from callwarden.stores.kube import KubeDocuments
from callwarden.stores.missions import MissionRecords

log = logging.getLogger(__name__)
watch: Any = _watch  # kubernetes.watch has no type hints

BUNDLE_ERRORS: Final = Counter(
    "callwarden_bundle_errors_total",
    "Bundle updates that were not applied (the last good bundle kept serving), by reason.",
    ["reason"],
    registry=metrics.REGISTRY,
)
BUNDLE_SWAPS: Final = Counter(
    "callwarden_bundle_swaps_total",
    "Bundles compiled from the Kubernetes API and swapped in.",
    registry=metrics.REGISTRY,
)
# A watch is re-established at least this often, even on a quiet, healthy connection.
WATCH_SECONDS: Final = 240


@dataclass(frozen=True)
class WatchHealth:
    synced: bool  # a first bundle was built from the API
    degraded: bool  # the newest ConfigMaps could not all be applied
    revision: str | None  # the bundle revision being served
    problems: tuple[str, ...]


def empty_bundle() -> Bundle:
    """No McpServers: every check is denied (no route) until the first bundle arrives."""
    return compile_bundle(config_from_objects([]))


class BundleWatcher:
    """Keeps `swap` fed with the bundle the labelled ConfigMaps describe."""

    def __init__(
        self,
        kube: Kube,
        swap: Callable[[Bundle], None],
        *,
        namespace: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
        debounce: float = 0.05,
        remote_pdp: RemotePdpFactory | None = None,
        approvals: ApprovalAuthority | None = None,
    ) -> None:
        self.kube = kube
        self.remote_pdp = remote_pdp  # builds the PDP of servers that name a remote AuthZEN PDP
        self.approvals = approvals  # what embedded PDPs consult about approvals
        self.swap = swap
        self.namespace = namespace
        self.watch_seconds = watch_seconds
        self.debounce = debounce
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._shards: dict[tuple[str, str], Shard] = {}
        self._version = 0  # bumped on every ConfigMap change
        self._resource_version: str | None = None
        self._stream: Any = None
        # Per McpServer: the last bundle that compiled, and the verdict on each revision seen.
        self._last_good: dict[str, ServerBundle] = {}
        self._verdicts: dict[tuple[str, str], str | None] = {}
        self._health = WatchHealth(False, False, None, ())
        self._threads = [
            threading.Thread(target=self._watch_loop, name="callwarden-bundle-watch", daemon=True),
            threading.Thread(target=self._build_loop, name="callwarden-bundle-build", daemon=True),
        ]

    # -- lifecycle --

    def load(self) -> Bundle:
        """List the ConfigMaps (retrying until the API answers) and build the first bundle."""
        backoff = INITIAL_BACKOFF
        while not self._stopped.is_set():
            try:
                self._relist()
                break
            except Exception as error:
                log.warning("bundle watch: cannot list ConfigMaps (%s); retrying", describe_error(error))
                self._stopped.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
        return self._build() or empty_bundle()

    def start(self) -> None:
        """Watch from where `load` listed; swaps from now on go to `self.swap`."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.stop()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def health(self) -> WatchHealth:
        return self._health

    def readiness(self) -> tuple[bool, str]:
        health = self._health
        if not health.synced:
            return False, "no bundle loaded from the Kubernetes API yet"
        if health.degraded:
            return True, f"ready, degraded: serving bundle revision {health.revision}; " + "; ".join(
                health.problems
            )
        return True, f"ready: bundle revision {health.revision}"

    # -- the watch thread --

    def _relist(self) -> None:
        items, resource_version = self.kube.list_configmaps(self.namespace, BUNDLE_SELECTOR)
        shards = {(cm["metadata"]["namespace"], cm["metadata"]["name"]): read_shard(cm) for cm in items}
        with self._changed:
            self._shards = shards
            self._resource_version = resource_version
            self._version += 1
            self._changed.notify_all()

    def _watch_loop(self) -> None:
        follow(
            self._stopped,
            listed=lambda: self._resource_version is not None,
            relist=self._relist,
            watch_once=self._watch_once,
            forget=self._forget_resource_version,
            what="bundle watch",
        )

    def _forget_resource_version(self) -> None:
        self._resource_version = None

    def _watch_once(self) -> None:
        core = self.kube.core
        function: Callable[..., Any]
        arguments: tuple[str, ...] = ()
        if self.namespace is None:
            function = core.list_config_map_for_all_namespaces
        else:
            function, arguments = core.list_namespaced_config_map, (self.namespace,)
        self._stream = stream = watch.Watch()
        events = stream.stream(
            function,
            *arguments,
            label_selector=BUNDLE_SELECTOR,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            _request_timeout=(5.0, self.watch_seconds + 30.0),
        )
        for event in events:
            if self._stopped.is_set():
                stream.stop()
                break
            self._record(event["type"], event["raw_object"])

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        with self._changed:
            self._resource_version = metadata.get("resourceVersion") or self._resource_version
            if kind == "BOOKMARK":
                return
            key = (metadata.get("namespace", ""), metadata.get("name", ""))
            if kind == "DELETED":
                self._shards.pop(key, None)
            else:
                self._shards[key] = read_shard(obj)
            self._version += 1
            self._changed.notify_all()

    # -- the build thread --

    def _build_loop(self) -> None:
        built = self._version
        while not self._stopped.is_set():
            with self._changed:
                while self._version == built and not self._stopped.is_set():
                    self._changed.wait()
            self._stopped.wait(self.debounce)  # a burst of shard writes becomes one build
            if self._stopped.is_set():
                return
            built = self._version
            try:
                bundle = self._build()
            except Exception:  # never let the builder die: the last good bundle keeps serving
                log.exception("bundle watch: building the bundle failed")
                BUNDLE_ERRORS.labels(reason="internal").inc()
                continue
            if bundle is not None:
                self.swap(bundle)

    def _build(self) -> Bundle | None:
        """The new bundle, or None when nothing changed or it cannot be built."""
        with self._lock:
            shards = list(self._shards.values())
        complete, broken = assemble(shards)
        chosen: dict[str, ServerBundle] = {}
        problems: list[str] = []
        for key, server in complete.items():
            problem = self._verdict(server)
            if problem is None:
                chosen[key] = self._last_good[key] = server
                continue
            problems.append(f"McpServer {key} revision {server.revision}: {problem}")
            if key in self._last_good:
                chosen[key] = self._last_good[key]
        for key, unusable in broken.items():
            if key in self._last_good:
                chosen[key] = self._last_good[key]
            if unusable.in_progress:
                log.info("bundle watch: McpServer %s: %s; waiting", key, unusable.reason)
            else:
                problems.append(f"McpServer {key}: {unusable.reason}")
                BUNDLE_ERRORS.labels(reason="invalid-configmap").inc()
        self._last_good = {key: bundle for key, bundle in self._last_good.items() if key in chosen}
        self._verdicts = {k: v for k, v in self._verdicts.items() if k[0] in complete}
        previous = self._health
        try:
            objects = merge_objects(chosen[key] for key in sorted(chosen))
            bundle = compile_bundle(
                config_from_objects(objects), remote_pdp=self.remote_pdp, approvals=self.approvals
            )
        except (ConfigError, BundleError) as error:
            BUNDLE_ERRORS.labels(reason="does-not-compile").inc()
            log.error(
                "bundle watch: the combined bundle does not compile; keeping revision %s: %s",
                previous.revision,
                error,
            )
            self._health = WatchHealth(previous.synced, True, previous.revision, (*problems, str(error)))
            return None
        for problem in problems:
            log.error("bundle watch: %s; the last good bundle of that server keeps serving", problem)
        self._health = WatchHealth(True, bool(problems), bundle.revision, tuple(problems))
        if bundle.revision == previous.revision:
            return None
        for problem in bundle.problems:
            log.warning("bundle watch: %s", problem)
        servers = ", ".join(f"{key}@{chosen[key].revision}" for key in sorted(chosen)) or "none"
        log.info("bundle watch: bundle revision %s (McpServer bundles: %s)", bundle.revision, servers)
        BUNDLE_SWAPS.inc()
        return bundle

    def _verdict(self, server: ServerBundle) -> str | None:
        """None if this server's bundle compiles on its own, else why not (cached per revision)."""
        key = (server.server_key, server.revision)
        if key not in self._verdicts:
            try:
                compile_bundle(config_from_objects(server.objects))
                self._verdicts[key] = None
            except (ConfigError, BundleError) as error:
                BUNDLE_ERRORS.labels(reason="does-not-compile").inc()
                self._verdicts[key] = str(error).replace("\n", " ")
        return self._verdicts[key]


@dataclass
class KubernetesExtAuthz:
    """ext_authz following the bundle ConfigMaps: the service and its watcher."""

    ext_authz: ExtAuthz
    watcher: BundleWatcher
    missions: KubeWatchSync

    @property
    def http_port(self) -> int | None:
        return self.ext_authz.server.http_port


@contextmanager
def start_kubernetes_extauthz(
    kube: Kube,
    *,
    namespace: str | None = None,
    listen: str = "127.0.0.1:0",
    http_listen: str | None = None,
    audit_path: str | None = None,
    audit_stream: IO[str] | None = None,
    workers: int = DEFAULT_WORKERS,
    tls: ServerTls | None = None,
    approvals: ApprovalDesk | None = None,
    dpop: DpopRuntime | None = None,
    http_authz_listen: str | None = None,
    reuse_port: bool = False,
    settle_heap: bool = False,
) -> Iterator[KubernetesExtAuthz]:
    """ext_authz serving the bundle the API server holds, following it until the block exits.

    The first bundle is listed before the gRPC port opens, so the service never answers from an
    empty configuration when the API server could have told it the real one. gRPC health and
    /readyz also say whether a bundle was loaded from the API (`BundleWatcher.readiness`).
    `approvals` runs the approval workflow (its store: the AccessRequests of this API server).
    `settle_heap` as for `start_extauthz`.
    """
    remote_pdps = RemotePdps(observer=metrics.PdpMetrics())
    authority = approvals.authority if approvals is not None else None
    watcher = BundleWatcher(
        kube, lambda bundle: None, namespace=namespace, remote_pdp=remote_pdps, approvals=authority
    )
    bundle = watcher.load()
    # Missions are watched like the bundles; a call outside one proposes its expansion as a Mission.
    proposer = proposer_for(MissionRecords(KubeDocuments(kube, instance="callwarden-extauthz")))
    missions = KubeWatchSync(kube, MissionBook(proposer=proposer), namespace)
    missions.try_first_list()
    with (
        remote_pdps,
        start_extauthz(
            bundle,
            listen=listen,
            http_listen=http_listen,
            audit_path=audit_path,
            audit_stream=audit_stream,
            workers=workers,
            ready_checks=(watcher.readiness, missions.readiness),
            tls=tls,
            missions=missions.book,
            approvals=approvals,
            dpop=dpop,
            http_authz_listen=http_authz_listen,
            reuse_port=reuse_port,
            settle_heap=settle_heap,
        ) as ext_authz,
    ):
        watcher.swap = ext_authz.swap
        watcher.start()
        missions.start()
        try:
            yield KubernetesExtAuthz(ext_authz, watcher, missions)
        finally:
            missions.stop()
            watcher.stop()
