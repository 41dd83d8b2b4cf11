"""The ext_authz gRPC server and its HTTP endpoints, on real loopback sockets (no Envoy)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx2
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from callwarden.extauthz import metrics
from callwarden.extauthz.responses import DECISION_ID_HEADER, allow_response
from callwarden.extauthz.server import AUTHORIZATION_SERVICE, CHECKER_FAILED_BODY, RunningServer, serve


class RecordingChecker:
    """Allows everything and keeps what it saw; `fail` makes it raise instead."""

    def __init__(self) -> None:
        self.seen: list[CheckRequest] = []
        self.fail: Exception | None = None

    def check(self, request: CheckRequest) -> CheckResponse:
        self.seen.append(request)
        if self.fail is not None:
            raise self.fail
        return allow_response({DECISION_ID_HEADER: f"id-{len(self.seen)}"})


def check_request(body: bytes = b"{}") -> CheckRequest:
    request = CheckRequest()
    request.attributes.request.http.method = "POST"
    request.attributes.request.http.path = "/mcp"
    request.attributes.request.http.raw_body = body
    return request


@pytest.fixture
def checker() -> RecordingChecker:
    return RecordingChecker()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def readiness() -> dict[str, Any]:
    """What the server's ready() probe answers; tests change it."""
    return {"answer": True}


@pytest.fixture
def server(
    checker: RecordingChecker, registry: CollectorRegistry, readiness: dict[str, Any]
) -> Iterator[RunningServer]:
    def ready() -> bool | tuple[bool, str]:
        answer = readiness["answer"]
        if isinstance(answer, Exception):
            raise answer
        result: bool | tuple[bool, str] = answer
        return result

    with serve(
        checker, "127.0.0.1:0", http_listen="127.0.0.1:0", workers=2, ready=ready, registry=registry
    ) as s:
        yield s


def call_check(port: int, request: CheckRequest) -> CheckResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response: CheckResponse = AuthorizationStub(channel).Check(request, timeout=5)
        return response


def health_status(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(answer.status)


def http_get(server: RunningServer, path: str, **headers: str) -> httpx2.Response:
    with httpx2.Client(trust_env=False) as client:
        return client.get(f"http://127.0.0.1:{server.http_port}{path}", headers=headers)


def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- Check ---------------------------------------------------------------------------------


def test_check_returns_the_checkers_response(server: RunningServer, checker: RecordingChecker) -> None:
    response = call_check(server.port, check_request(b'{"jsonrpc":"2.0"}'))
    assert response.ok_response.headers[0].header.value == "id-1"
    assert checker.seen[0].attributes.request.http.raw_body == b'{"jsonrpc":"2.0"}'


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), KeyError("missing"), ValueError("bad"), RecursionError("deep")],
    ids=["runtime", "key", "value", "recursion"],
)
def test_a_raising_checker_yields_a_generic_403_denial(
    server: RunningServer, checker: RecordingChecker, error: Exception
) -> None:
    checker.fail = error
    response = call_check(server.port, check_request())
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.status.code != 0
    assert response.denied_response.status.code == 403
    assert response.denied_response.body.encode() == CHECKER_FAILED_BODY
    assert str(error) not in response.denied_response.body


def test_a_checker_failure_is_counted_as_a_403_denial(
    server: RunningServer, checker: RecordingChecker
) -> None:
    labels = {"server": "", "decision": "deny", "code": "403"}
    before = metrics.REGISTRY.get_sample_value("callwarden_decisions_total", labels) or 0.0
    checker.fail = RuntimeError("boom")
    call_check(server.port, check_request())
    assert metrics.REGISTRY.get_sample_value("callwarden_decisions_total", labels) == before + 1


def test_the_server_keeps_serving_after_a_checker_raised(
    server: RunningServer, checker: RecordingChecker
) -> None:
    checker.fail = RuntimeError("boom")
    call_check(server.port, check_request())
    checker.fail = None
    assert call_check(server.port, check_request()).HasField("ok_response")


def test_a_check_request_above_grpcs_default_4_mib_limit_is_accepted(
    server: RunningServer, checker: RecordingChecker
) -> None:
    body = b"x" * (8 * 1024 * 1024)  # McpServer.spec.maxRequestBytes allows up to 8 MiB
    assert call_check(server.port, check_request(body)).HasField("ok_response")
    assert checker.seen[0].attributes.request.http.raw_body == body


def test_a_stopped_server_can_restart_on_the_same_port(checker: RecordingChecker) -> None:
    first = serve(checker, "127.0.0.1:0", workers=1)
    port = first.port
    first.stop(grace=None)
    with serve(checker, f"127.0.0.1:{port}", workers=1) as second:
        assert call_check(second.port, check_request()).HasField("ok_response")


def test_a_second_server_on_a_taken_port_fails_loudly(
    server: RunningServer, checker: RecordingChecker
) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        serve(checker, f"127.0.0.1:{server.port}", workers=1)


def test_stop_is_idempotent(checker: RecordingChecker) -> None:
    running = serve(checker, "127.0.0.1:0", workers=1)
    running.stop(grace=None)
    running.stop(grace=None)


def test_without_http_listen_there_is_no_http_port(checker: RecordingChecker) -> None:
    with serve(checker, "127.0.0.1:0", workers=1) as running:
        assert running.http_port is None


# --- health ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", AUTHORIZATION_SERVICE], ids=["overall", "authorization"])
def test_grpc_health_is_serving_when_ready(server: RunningServer, service: str) -> None:
    assert health_status(server.port, service) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "answer", [False, (False, "no bundle"), RuntimeError("probe broke")], ids=["false", "tuple", "raises"]
)
def test_grpc_health_turns_not_serving_when_not_ready(
    server: RunningServer, readiness: dict[str, Any], answer: Any
) -> None:
    readiness["answer"] = answer
    assert eventually(lambda: health_status(server.port, "") == health_pb2.HealthCheckResponse.NOT_SERVING)


def test_healthz_answers_200_while_the_process_runs(server: RunningServer, readiness: dict[str, Any]) -> None:
    readiness["answer"] = False
    assert http_get(server, "/healthz").status_code == 200


@pytest.mark.parametrize(
    ("answer", "status", "says"),
    [
        (True, 200, "ready"),
        ((True, "bundle r7 loaded"), 200, "bundle r7 loaded"),
        (False, 503, "not ready"),
        ((False, "no bundle loaded yet"), 503, "no bundle loaded yet"),
        (RuntimeError("audit sink failed"), 503, "audit sink failed"),
    ],
    ids=["true", "true-with-reason", "false", "false-with-reason", "probe-raises"],
)
def test_readyz_reports_the_probe_and_why(
    server: RunningServer, readiness: dict[str, Any], answer: Any, status: int, says: str
) -> None:
    readiness["answer"] = answer
    response = http_get(server, "/readyz")
    assert response.status_code == status
    assert says in response.text


def test_metrics_exports_the_given_registry(server: RunningServer, registry: CollectorRegistry) -> None:
    Counter("callwarden_test_checks", "test counter", registry=registry).inc(3)
    response = http_get(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "callwarden_test_checks_total 3.0" in response.text


def test_metrics_speaks_openmetrics_when_asked(server: RunningServer, registry: CollectorRegistry) -> None:
    Counter("callwarden_test_checks", "test counter", registry=registry).inc()
    response = http_get(server, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_metrics_defaults_to_the_data_paths_registry(checker: RecordingChecker) -> None:
    with serve(checker, "127.0.0.1:0", http_listen="127.0.0.1:0", workers=1) as running:
        assert "callwarden_decisions_total" in http_get(running, "/metrics").text


@pytest.mark.parametrize("path", ["/", "/metricsx", "/readyz/../admin", "/%2e%2e/etc"], ids=str)
def test_unknown_http_paths_are_404(server: RunningServer, path: str) -> None:
    assert http_get(server, path).status_code == 404
