"""The operator's Prometheus metrics, in a registry of their own, served on `--metrics-listen`.

Like the data path's (extauthz/metrics.py), a dedicated `REGISTRY` keeps the endpoint to what
the operator defines and lets tests read exact values; label values are bounded sets. Every
replica serves them: a standby reports `callwarden_operator_leader 0` and reconciles nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY: Final = CollectorRegistry(auto_describe=True)

LEADER: Final = Gauge(
    "callwarden_operator_leader",
    "1 while this replica holds the leader Lease (and so reconciles and writes), else 0.",
    registry=REGISTRY,
)
RECONCILES: Final = Counter(
    "callwarden_operator_reconciles_total",
    "Namespace reconciles by outcome: ok, error (retried with backoff), lost-lease (stopped).",
    ["outcome"],
    registry=REGISTRY,
)


def serve(address: str) -> Callable[[], None]:
    """Serve REGISTRY over HTTP on `host:port` (any path) from a thread; returns the stop function."""
    host, separator, port = address.rpartition(":")
    # ASCII digits only: str.isdigit() also accepts other scripts' digits, which int() would take.
    if not separator or not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--metrics-listen must be host:port (port 1-65535), not {address!r}")
    server, thread = start_http_server(int(port), host.strip("[]"), registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
