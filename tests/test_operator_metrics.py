"""The operator's metrics endpoint (operator/metrics.py): what it serves, and the addresses it refuses.

The endpoint runs for real on a loopback port; that the operator process moves the metrics is
tested in tests/test_operator_process.py.
"""

from __future__ import annotations

import socket

import httpx2
import pytest

from callwarden.operator import metrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_endpoint_serves_the_operators_registry_and_stops() -> None:
    port = free_port()
    stop = metrics.serve(f"127.0.0.1:{port}")
    try:
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    finally:
        stop()
    assert "# TYPE callwarden_operator_leader gauge" in text
    assert "# TYPE callwarden_operator_reconciles_total counter" in text
    assert "python_gc" not in text  # a registry of its own, not prometheus-client's global one
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=2, trust_env=False)


def test_an_ipv6_address_in_brackets_is_accepted() -> None:
    # Probe IPv6 loopback on its own, so that an error of serve() itself (a bracketed host it fails
    # to resolve is an OSError too) fails this test instead of skipping it.
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:  # pragma: no cover - a host without IPv6 loopback cannot run this case
        pytest.skip("no IPv6 loopback here")
    stop = metrics.serve(f"[::1]:{free_port()}")
    stop()


@pytest.mark.parametrize(
    "address",
    [
        "",
        "9090",
        ":9090",
        "localhost:",
        "localhost:http",
        "localhost:-1",
        "localhost:0",
        "localhost:65536",
        "localhost:9090 ",
        "localhost:\u0669\u0660\u0669\u0660",  # Arabic-Indic 9090: str.isdigit() says yes
        "localhost:\uff19\uff10\uff19\uff10",  # fullwidth 9090
    ],
    ids=[
        "empty",
        "port only",
        "no host",
        "no port",
        "named port",
        "negative",
        "port zero",
        "port too high",
        "trailing space",
        "arabic-indic digits",
        "fullwidth digits",
    ],
)
def test_an_address_that_is_not_host_and_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="--metrics-listen must be host:port"):
        metrics.serve(address)
