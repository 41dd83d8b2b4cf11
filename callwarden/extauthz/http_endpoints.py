"""The ext_authz process's plain-HTTP side: /metrics, /healthz, /readyz.

A stdlib ThreadingHTTPServer in a daemon thread: scrapes and probes are rare, and keeping them
off the gRPC thread pool means a saturated data path still answers its liveness probe.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

# What a readiness probe may answer: a bool, or (ready, why) so /readyz can say why.
ReadyProbe = Callable[[], bool | tuple[bool, str]]


def probe_readiness(ready: ReadyProbe) -> tuple[bool, str]:
    """Run the probe; a probe that raises means not ready (and says so)."""
    try:
        answer = ready()
    except Exception as error:
        log.exception("readiness probe failed")
        return False, f"readiness probe failed: {type(error).__name__}: {error}"
    if isinstance(answer, tuple):
        is_ready, why = answer
        return bool(is_ready), why
    return bool(answer), "ready" if answer else "not ready"


def split_host_port(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _EndpointServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            is_ready, why = probe_readiness(self.server.ready)
            status = HTTPStatus.OK if is_ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._reply(status, f"{why}\n".encode(), "text/plain; charset=utf-8")
        elif path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(HTTPStatus.OK, encoder(self.server.registry), content_type)
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s: " + format, self.address_string(), *args)


class _EndpointServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], ready: ReadyProbe, registry: CollectorRegistry) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ready = ready
        self.registry = registry
        super().__init__(address, _Handler)


class HttpEndpoints:
    """Serves /metrics, /healthz and /readyz on `listen` until `stop()`."""

    def __init__(self, listen: str, *, ready: ReadyProbe, registry: CollectorRegistry) -> None:
        self._server = _EndpointServer(split_host_port(listen), ready, registry)
        # A short poll interval only bounds how long stop() waits for the loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="callwarden-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
