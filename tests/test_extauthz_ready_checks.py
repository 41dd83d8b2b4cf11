"""start_extauthz's extra readiness probes: gRPC health and /readyz follow every one of them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx2
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callwarden.extauthz.service import ExtAuthz, start_extauthz
from callwarden.policy.bundle import compile_bundle
from callwarden.policy.loader import config_from_objects

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Switch:
    """A ready check a test flips: (ready, why)."""

    def __init__(self) -> None:
        self.answer = (False, "no bundle loaded from the Kubernetes API yet")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
def ext_authz(switch: Switch) -> Iterator[ExtAuthz]:
    bundle = compile_bundle(config_from_objects([]))
    with start_extauthz(bundle, http_listen="127.0.0.1:0", ready_checks=(switch,)) as running:
        yield running


def health(ext_authz: ExtAuthz) -> int:
    with grpc.insecure_channel(ext_authz.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return int(answer.status)


def eventually_health(ext_authz: ExtAuthz, wanted: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while (status := health(ext_authz)) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def readyz(ext_authz: ExtAuthz) -> httpx2.Response:
    with httpx2.Client(trust_env=False) as client:
        return client.get(f"http://127.0.0.1:{ext_authz.server.http_port}/readyz", timeout=5)


def test_grpc_health_is_not_serving_while_a_ready_check_fails(ext_authz: ExtAuthz) -> None:
    assert health(ext_authz) == NOT_SERVING


def test_grpc_health_turns_serving_once_every_ready_check_passes(ext_authz: ExtAuthz, switch: Switch) -> None:
    switch.answer = (True, "ready: bundle revision r1")
    assert eventually_health(ext_authz, SERVING) == SERVING


def test_readyz_names_the_failing_checks_reason(ext_authz: ExtAuthz) -> None:
    response = readyz(ext_authz)
    assert response.status_code == 503
    assert "no bundle loaded from the Kubernetes API yet" in response.text


def test_readyz_reports_the_passing_checks_message(ext_authz: ExtAuthz, switch: Switch) -> None:
    switch.answer = (True, "ready: bundle revision r1")
    response = readyz(ext_authz)
    assert response.status_code == 200
    assert "ready: bundle revision r1" in response.text
