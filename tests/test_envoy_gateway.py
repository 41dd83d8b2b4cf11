"""Real Envoy + the ext_authz gRPC server + a recording upstream: what gets through, and what never does."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from callwarden.extauthz.responses import DECISION_ID_HEADER, allow_response, deny_response
from callwarden.extauthz.server import CHECKER_FAILED_BODY, serve
from tests.support.envoy import Gateway, gateway, mcp_server
from tests.support.upstream import RecordingUpstream, recording_upstream

pytestmark = pytest.mark.integration

VERDICT_HEADER = "x-test-verdict"
DENY_BODY = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"denied by rule \'no-wires\'"}}'
CHALLENGE = 'Bearer resource_metadata="https://finance.test/.well-known/oauth-protected-resource/finance"'
TOOLS_CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"query_financials"}}'


class ScriptedChecker:
    """Decides by the client's `x-test-verdict` header (allow, deny, raise); records every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[CheckRequest] = []

    @property
    def seen(self) -> list[CheckRequest]:
        with self._lock:
            return list(self._seen)

    def check(self, request: CheckRequest) -> CheckResponse:
        with self._lock:
            self._seen.append(request)
            decision_id = f"decision-{len(self._seen)}"
        headers = request.attributes.request.http.headers
        verdict = headers.get(VERDICT_HEADER, "allow")
        if verdict == "raise":
            raise RuntimeError("checker bug")
        if verdict == "deny":
            return deny_response(
                403, DENY_BODY, {"www-authenticate": CHALLENGE, DECISION_ID_HEADER: decision_id}
            )
        forged = [name for name in headers if name.startswith("x-callwarden-")]
        return allow_response({DECISION_ID_HEADER: decision_id}, forged)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture(scope="module")
def checker() -> ScriptedChecker:
    return ScriptedChecker()


@pytest.fixture(scope="module")
def gw(
    upstream: RecordingUpstream, checker: ScriptedChecker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    servers = [
        mcp_server("finance", upstream.url, namespace="acme", path_prefix="/finance"),
        mcp_server("docs", upstream.url, namespace="team", path_prefix="/docs"),
        mcp_server("hosted", upstream.url, namespace="acme", hosts=["a.test"], path_prefix="/finance"),
        mcp_server("small", upstream.url, path_prefix="/small", max_request_bytes=1024),
        mcp_server("big", upstream.url, path_prefix="/big", max_request_bytes=8 * 1024 * 1024),
    ]
    with gateway(servers, checker, tmp_path_factory.mktemp("envoy")) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=10) as running:
        yield running


def test_an_allowed_request_reaches_the_upstream_with_its_decision_id(
    gw: Gateway, client: httpx2.Client, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    response = client.post(gw.url + "/finance", content=TOOLS_CALL)
    assert response.status_code == 200
    [received] = upstream.requests[before:]
    assert received.body == TOOLS_CALL
    assert received.header(DECISION_ID_HEADER)[0].startswith("decision-")


def test_client_sent_callwarden_headers_never_reach_the_upstream(
    gw: Gateway, client: httpx2.Client, upstream: RecordingUpstream, checker: ScriptedChecker
) -> None:
    before = upstream.count
    forged = {"x-callwarden-forged": "admin", DECISION_ID_HEADER: "forged", "X-Callwarden-Role": "root"}
    assert client.post(gw.url + "/finance", content=TOOLS_CALL, headers=forged).status_code == 200
    [received] = upstream.requests[before:]
    assert received.header("x-callwarden-forged") == []
    assert received.header("x-callwarden-role") == []
    assert received.header(DECISION_ID_HEADER) == [f"decision-{len(checker.seen)}"]


def test_a_denied_request_gets_the_denial_and_never_reaches_the_upstream(
    gw: Gateway, client: httpx2.Client, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    response = client.post(gw.url + "/finance", content=TOOLS_CALL, headers={VERDICT_HEADER: "deny"})
    assert response.status_code == 403
    assert response.content == DENY_BODY
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.headers[DECISION_ID_HEADER].startswith("decision-")
    assert upstream.count == before


def test_a_raising_checker_denies_and_never_reaches_the_upstream(
    gw: Gateway, client: httpx2.Client, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    response = client.post(gw.url + "/finance", content=TOOLS_CALL, headers={VERDICT_HEADER: "raise"})
    assert response.status_code == 403
    assert response.content == CHECKER_FAILED_BODY
    assert upstream.count == before


@pytest.mark.parametrize(
    "body",
    [
        TOOLS_CALL,
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff\xfe not utf-8"}}',
        '{"name":"caf\u00e9 \u202e\u2066 \U0001f600"}'.encode(),
        b'{"a":1,"a":2}  \x00\r\n',
        b"",
    ],
    ids=["json", "invalid-utf8", "unicode-tricks", "duplicate-keys-nul-crlf", "empty"],
)
def test_the_checker_sees_the_exact_body_bytes(
    gw: Gateway, client: httpx2.Client, checker: ScriptedChecker, upstream: RecordingUpstream, body: bytes
) -> None:
    before_checks, before_upstream = len(checker.seen), upstream.count
    assert client.post(gw.url + "/finance", content=body).status_code == 200
    [seen] = checker.seen[before_checks:]
    assert seen.attributes.request.http.raw_body == body
    assert upstream.requests[before_upstream].body == body


def test_a_chunked_body_is_buffered_whole_before_the_check(
    gw: Gateway, client: httpx2.Client, checker: ScriptedChecker
) -> None:
    before = len(checker.seen)
    chunks = [TOOLS_CALL[:10], TOOLS_CALL[10:40], TOOLS_CALL[40:]]
    assert client.post(gw.url + "/finance", content=iter(chunks)).status_code == 200
    assert checker.seen[before].attributes.request.http.raw_body == TOOLS_CALL


@pytest.mark.parametrize(
    ("path", "host", "server"),
    [
        ("/finance", None, "acme/finance"),
        ("/finance/sub/path", None, "acme/finance"),
        ("/docs", None, "team/docs"),
        ("/finance", "a.test", "acme/hosted"),
        ("/finance", "A.TEST:8080", "acme/hosted"),
        ("/docs", "a.test", "team/docs"),
    ],
    ids=["any-host", "sub-path", "other-server", "host-specific", "host-with-port", "host-falls-back"],
)
def test_each_route_tells_the_checker_its_mcp_server(
    gw: Gateway, client: httpx2.Client, checker: ScriptedChecker, *, path: str, host: str | None, server: str
) -> None:
    before = len(checker.seen)
    headers = {"host": host} if host else {}
    assert client.post(gw.url + path, content=TOOLS_CALL, headers=headers).status_code == 200
    assert checker.seen[before].attributes.context_extensions["mcp_server"] == server


@pytest.mark.parametrize(
    "path",
    ["/financex", "/", "/doc", "/nothing/finance"],
    ids=["sibling-prefix", "root", "partial", "nested"],
)
def test_a_path_no_server_claims_reaches_no_upstream(
    gw: Gateway, client: httpx2.Client, upstream: RecordingUpstream, path: str
) -> None:
    before = upstream.count
    assert client.post(gw.url + path, content=TOOLS_CALL).status_code == 404
    assert upstream.count == before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_servers_limit_gets_413_and_reaches_neither_checker_nor_upstream(
    gw: Gateway,
    client: httpx2.Client,
    checker: ScriptedChecker,
    upstream: RecordingUpstream,
    chunked: bool,
) -> None:
    before_checks, before_upstream = len(checker.seen), upstream.count
    body = b"x" * 1025
    content = iter([body[:600], body[600:]]) if chunked else body
    response = client.post(gw.url + "/small", content=content)
    assert response.status_code == 413
    assert len(checker.seen) == before_checks
    assert upstream.count == before_upstream


def test_a_body_exactly_at_the_limit_is_checked(
    gw: Gateway, client: httpx2.Client, checker: ScriptedChecker
) -> None:
    before = len(checker.seen)
    assert client.post(gw.url + "/small", content=b"x" * 1024).status_code == 200
    assert len(checker.seen[before].attributes.request.http.raw_body) == 1024


def test_a_body_above_grpcs_default_message_limit_is_checked_whole(
    gw: Gateway, client: httpx2.Client, checker: ScriptedChecker
) -> None:
    before = len(checker.seen)
    body = b"y" * (5 * 1024 * 1024)
    assert client.post(gw.url + "/big", content=body).status_code == 200
    assert checker.seen[before].attributes.request.http.raw_body == body


def test_ext_authz_down_means_503_and_a_restart_on_the_same_port_recovers(tmp_path: Path) -> None:
    checker = ScriptedChecker()
    with (
        recording_upstream() as upstream,
        gateway([mcp_server("finance", upstream.url)], checker, tmp_path) as running,
        httpx2.Client(trust_env=False, timeout=10) as client,
    ):
        assert client.post(running.url + "/mcp", content=TOOLS_CALL).status_code == 200
        port = running.ext_authz.port
        running.ext_authz.stop(grace=None)

        for _ in range(3):
            response = client.post(running.url + "/mcp", content=TOOLS_CALL)
            assert response.status_code == 503
        assert upstream.count == 1

        with serve(checker, f"127.0.0.1:{port}", workers=2):
            deadline = time.monotonic() + 10
            while (status := client.post(running.url + "/mcp", content=TOOLS_CALL).status_code) != 200:
                assert status == 503
                assert time.monotonic() < deadline, "Envoy never reconnected to the restarted ext_authz"
                time.sleep(0.05)
        assert upstream.count == 2


def raw_request(
    gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Send `path` exactly as written (httpx2 would normalise it client-side)."""
    connection = http.client.HTTPConnection(gw.envoy.listener_host, gw.envoy.listener_port, timeout=10)
    try:
        connection.request(method, path, body=TOOLS_CALL, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("location") or ""
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    ["/docs/../finance", "/docs/%2e%2e/finance", "//finance", "/docs/./../finance"],
    ids=["dot-dot", "encoded-dot-dot", "double-slash", "dot-segments"],
)
def test_the_route_and_the_upstream_both_see_the_normalised_path(
    gw: Gateway, checker: ScriptedChecker, upstream: RecordingUpstream, path: str
) -> None:
    before_checks, before_upstream = len(checker.seen), upstream.count
    assert raw_request(gw, "POST", path)[0] == 200
    [seen] = checker.seen[before_checks:]
    assert (seen.attributes.request.http.path, seen.attributes.context_extensions["mcp_server"]) == (
        "/finance",
        "acme/finance",
    )
    assert [request.path for request in upstream.requests[before_upstream:]] == ["/finance"]


@pytest.mark.parametrize(
    ("path", "location"),
    [("/docs%2F..%2Ffinance", "/finance"), ("/finance%2fx", "/finance/x")],
    ids=["escaped-dot-dot", "lower-case-escape"],
)
def test_escaped_slashes_are_redirected_not_routed(
    gw: Gateway, checker: ScriptedChecker, upstream: RecordingUpstream, path: str, location: str
) -> None:
    before_checks, before_upstream = len(checker.seen), upstream.count
    assert raw_request(gw, "POST", path) == (307, location)
    assert (len(checker.seen), upstream.count) == (before_checks, before_upstream)


@pytest.mark.parametrize(
    "name", ["x_callwarden_decision_id", "x_callwarden_forged", "x_test_verdict"], ids=str
)
def test_header_names_with_underscores_are_rejected_before_the_check(
    gw: Gateway, checker: ScriptedChecker, upstream: RecordingUpstream, name: str
) -> None:
    before_checks, before_upstream = len(checker.seen), upstream.count
    assert raw_request(gw, "POST", "/finance", {name: "smuggled"})[0] == 400
    assert (len(checker.seen), upstream.count) == (before_checks, before_upstream)


@pytest.mark.parametrize("method", ["GET", "DELETE"], ids=str)
def test_bodyless_requests_are_checked_too(
    gw: Gateway, client: httpx2.Client, checker: ScriptedChecker, upstream: RecordingUpstream, method: str
) -> None:
    before_checks, before_upstream = len(checker.seen), upstream.count
    response = client.request(method, gw.url + "/finance", headers={VERDICT_HEADER: "deny"})
    assert response.status_code == 403
    [seen] = checker.seen[before_checks:]
    assert (seen.attributes.request.http.method, seen.attributes.request.http.raw_body) == (method, b"")
    assert upstream.count == before_upstream
