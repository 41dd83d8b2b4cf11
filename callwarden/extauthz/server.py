"""The gRPC ext_authz service Envoy calls for every MCP request.

Server model, by measurement (2-vCPU VM shared with other work, trivial checker, 1.3 KB
CheckRequest, grpc.aio client in a second process, server CPU per Check): grpcio's sync thread-pool
server ≈ 160-185 µs (≈ 5,400-6,200 Checks/s per core) against ≈ 255-290 µs (≈ 3,500-3,900/s) for
`grpc.aio`. More threads cost a little when the machine is quiet (2 workers ≈ 6,000/s, 8 ≈ 5,600/s,
16 ≈ 4,800/s per core: GIL hand-offs) and more when it is busy (8 workers fell to 3,500-5,000/s
while 2 held 5,300-5,500/s). Checks are CPU-bound except for the occasional blocking I/O (a remote
PDP, a JWKS refresh), so the default keeps two spare threads; raise `workers` for a remote PDP.

Fail closed everywhere: a checker that raises yields a denial, never an allow, and never takes
the server down; if the server itself is unreachable, Envoy's `failure_mode_allow: false` and
`status_on_error: 503` deny at the gateway.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.service.auth.v3.external_auth_pb2_grpc import add_AuthorizationServicer_to_server
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import add_ExternalProcessorServicer_to_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from callwarden.extauthz import metrics
from callwarden.extauthz.extproc import EXTERNAL_PROCESSOR_SERVICE, ExternalProcessor
from callwarden.extauthz.http_endpoints import HttpEndpoints, ReadyProbe, probe_readiness
from callwarden.extauthz.responses import CHECKER_FAILED_BODY, deny_response

log = logging.getLogger(__name__)

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"
DEFAULT_WORKERS = 4
# A CheckRequest carries the whole body (McpServer.spec.maxRequestBytes is at most 8 MiB) plus
# headers; grpc's default 4 MiB receive limit would turn large allowed bodies into Envoy 503s.
MAX_CHECK_MESSAGE_BYTES = 16 * 1024 * 1024
# How often the gRPC health status is re-read from the readiness probe (for Watch streams).
HEALTH_REFRESH_SECONDS = 0.5


@dataclass(frozen=True)
class ServerTls:
    """PEM key pair for serving Check over TLS (Envoy's ext_authz cluster then uses TLS too)."""

    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def from_files(cls, certificate: str, key: str) -> ServerTls:
        return cls(Path(certificate).read_bytes(), Path(key).read_bytes())


class Checker(Protocol):
    def check(self, request: CheckRequest) -> CheckResponse: ...


def _always_ready() -> bool:
    return True


class _AuthorizationService:
    """envoy.service.auth.v3.Authorization, delegating to a Checker."""

    def __init__(self, checker: Checker) -> None:
        self._checker = checker

    def Check(self, request: CheckRequest, context: grpc.ServicerContext) -> CheckResponse:
        try:
            return self._checker.check(request)
        except Exception:
            log.exception("checker raised; request denied")
            # Counted with the other decisions so callwarden's totals match Envoy's ext_authz stats.
            metrics.count_decision("", "deny", "403")
            return deny_response(403, CHECKER_FAILED_BODY)


class _Health:
    """grpc.health.v1 answering from the readiness probe, re-read periodically."""

    def __init__(self, ready: ReadyProbe, services: tuple[str, ...] = ("", AUTHORIZATION_SERVICE)) -> None:
        self.servicer = health.HealthServicer()
        self._ready = ready
        self._services = services
        self._stopped = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="callwarden-health", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        is_ready, _ = probe_readiness(self._ready)
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if is_ready else serving.NOT_SERVING
        for service in self._services:
            self.servicer.set(service, status)

    def _poll(self) -> None:
        while not self._stopped.wait(HEALTH_REFRESH_SECONDS):
            self.refresh()

    def shut_down(self) -> None:
        """NOT_SERVING from now on (Envoy or a probe sees the drain), and stop polling."""
        self._stopped.set()
        self._thread.join()
        self.servicer.enter_graceful_shutdown()


class RunningServer:
    """A started ext_authz server. `stop()` (or leaving the `with` block) shuts it down."""

    def __init__(self, server: grpc.Server, port: int, health: _Health, http: HttpEndpoints | None) -> None:
        self._server = server
        self._health = health
        self._http = http
        self._stopped = False
        self.port = port

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls; in-flight checks get `grace` seconds to finish. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._health.shut_down()
        self._server.stop(grace).wait()
        if self._http is not None:
            self._http.stop()

    def wait(self) -> None:
        """Block until the server terminates (the CLI's main loop)."""
        self._server.wait_for_termination()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop(grace=1.0)


def serve(
    checker: Checker,
    listen: str,
    *,
    http_listen: str | None = None,
    workers: int = DEFAULT_WORKERS,
    ready: ReadyProbe = _always_ready,
    registry: CollectorRegistry | None = None,
    reuse_port: bool = False,
    tls: ServerTls | None = None,
    processor: ExternalProcessor | None = None,
) -> RunningServer:
    """Start the ext_authz gRPC server on `listen` (`host:port`, port 0 picks one).

    `ready` drives gRPC health and /readyz. `registry` is what /metrics exports (default: the
    data path's `callwarden.extauthz.metrics.REGISTRY`). `reuse_port` lets several processes share the port
    (SO_REUSEPORT); off by default so a second server on a taken port fails loudly instead of
    silently splitting traffic with a stale one. `tls` serves gRPC over TLS instead of plaintext.
    `processor` also serves Envoy's ext_proc on the same port (callwarden.extauthz.extproc); its
    streams get pool threads of their own, so hooked requests never starve the checks.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", MAX_CHECK_MESSAGE_BYTES),
    ]
    # Idle pool threads are reused before new ones start, so the stream threads exist only while
    # streams do; checks keep running on the few threads a quiet pool holds.
    threads = workers + (processor.max_streams if processor is not None else 0)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="callwarden-check"),
        options=options,
    )
    add_AuthorizationServicer_to_server(_AuthorizationService(checker), server)
    services: tuple[str, ...] = ("", AUTHORIZATION_SERVICE)
    if processor is not None:
        add_ExternalProcessorServicer_to_server(processor, server)
        services += (EXTERNAL_PROCESSOR_SERVICE,)
    checks_health = _Health(ready, services)
    health_pb2_grpc.add_HealthServicer_to_server(checks_health.servicer, server)
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            credentials = grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)])
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as error:
        checks_health.shut_down()
        raise OSError(f"ext_authz cannot listen on {listen}: {error}") from error
    server.start()
    http = None
    if http_listen is not None:
        try:
            http = HttpEndpoints(
                http_listen, ready=ready, registry=registry if registry is not None else metrics.REGISTRY
            )
        except BaseException:
            checks_health.shut_down()
            server.stop(None)
            raise
    log.info("ext_authz listening on %s (port %d), %d workers", listen, port, workers)
    return RunningServer(server, port, checks_health, http)
