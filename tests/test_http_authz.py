"""Envoy's HTTP ext_authz (http_service) to callwarden.extauthz.http_authz, with real Envoy.

Two set-ups: the board-packet data path with the real Enforcer over HTTP ext_authz (what clients
and servers see), and a scripted decision behind Envoy with a recording upstream (what exactly
reaches the checker and the upstream).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from callwarden.extauthz.decide import DECISION_HEADER, Answer, RequestView
from callwarden.extauthz.envoy import render_bootstrap
from callwarden.extauthz.http_authz import HttpAuthzServer
from tests.support.datapath import ALLOWED_CALLS, DENIED_CALL, DENY_RULE, DataPath, start_datapath, tools_call
from tests.support.envoy import mcp_server, start_envoy
from tests.support.upstream import RecordingUpstream, recording_upstream

pytestmark = pytest.mark.integration

DENY_BODY = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"denied"}}'
TOOLS_CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"query_financials"}}'


# --- the real Enforcer over HTTP ext_authz -------------------------------------------------


@pytest.fixture(scope="module")
def datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("http-datapath"), transport="http") as running:
        yield running


def test_an_allowed_call_reaches_the_server_stamped_with_its_decision_id(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    forged = {DECISION_HEADER: "forged-by-the-client"}
    response = datapath.post(
        "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance"), headers=forged
    )
    assert response.status_code == 200
    assert datapath.executed("finance") == before + 1
    stamped = datapath.servers.ledgers["finance"].calls()[-1].decision_id
    assert stamped is not None and stamped != "forged-by-the-client"
    assert datapath.decision(stamped)["decision"] == "allow"


def test_a_denied_call_gets_the_jsonrpc_error_with_the_deny_status_and_content_type(
    datapath: DataPath,
) -> None:
    before = datapath.executed("finance")
    response = datapath.post("finance", tools_call(*DENIED_CALL, id=41), token=datapath.token("finance"))
    assert response.status_code == datapath.compiled("finance").server.spec.deny_http_status
    assert response.headers.get_list("content-type") == ["application/json"]
    body = json.loads(response.content)
    assert (body["id"], body["error"]["code"]) == (41, -32001)
    line = datapath.decision_of(response)
    assert (line["decision"], line["reasons"]) == ("deny", [DENY_RULE])
    assert datapath.executed("finance") == before


def test_a_call_without_a_token_gets_401_with_www_authenticate(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    response = datapath.post("finance", tools_call(*ALLOWED_CALLS["finance"]))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer resource_metadata="')
    assert datapath.decision_of(response)["decision"] == "deny"
    assert datapath.executed("finance") == before


# --- a scripted decision: what reaches the checker and the upstream ------------------------


class ScriptedDecision:
    """Allows, except under /finance/deny (403) and /finance/deny-ok (a denial with status 200)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[RequestView] = []

    @property
    def seen(self) -> list[RequestView]:
        with self._lock:
            return list(self._seen)

    def decide(self, view: RequestView) -> Answer:
        with self._lock:
            self._seen.append(view)
            decision_id = f"decision-{len(self._seen)}"
        headers = {"content-type": "application/json", DECISION_HEADER: decision_id}
        if view.path == "/finance/deny":
            return Answer(False, 403, DENY_BODY, {**headers, "www-authenticate": 'Bearer error="x"'})
        if view.path == "/finance/deny-ok":
            return Answer(False, 200, DENY_BODY, headers)
        forged = tuple(name for name in view.headers if name.startswith("x-callwarden-"))
        return Answer(True, 200, b"", {DECISION_HEADER: decision_id}, forged)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture(scope="module")
def scripted() -> ScriptedDecision:
    return ScriptedDecision()


@pytest.fixture(scope="module")
def gateway_url(
    upstream: RecordingUpstream, scripted: ScriptedDecision, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    servers = [
        mcp_server("finance", upstream.url, path_prefix="/finance"),
        mcp_server("small", upstream.url, path_prefix="/small", max_request_bytes=1024),
    ]
    checker = HttpAuthzServer(scripted.decide, "127.0.0.1:0")
    try:
        bootstrap = render_bootstrap(servers, ext_authz=f"127.0.0.1:{checker.port}", transport="http")
        with start_envoy(bootstrap, tmp_path_factory.mktemp("envoy-http")) as envoy:
            yield envoy.url
    finally:
        checker.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=10) as running:
        yield running


def test_client_sent_callwarden_headers_are_removed_and_the_decision_id_set(
    gateway_url: str, client: httpx2.Client, upstream: RecordingUpstream, scripted: ScriptedDecision
) -> None:
    before = upstream.count
    forged = {"x-callwarden-forged": "admin", DECISION_HEADER: "forged", "X-Callwarden-Role": "root"}
    assert client.post(gateway_url + "/finance", content=TOOLS_CALL, headers=forged).status_code == 200
    [received] = upstream.requests[before:]
    assert received.header("x-callwarden-forged") == []
    assert received.header("x-callwarden-role") == []
    assert received.header(DECISION_HEADER) == [f"decision-{len(scripted.seen)}"]


@pytest.mark.parametrize(
    "body",
    [
        TOOLS_CALL,
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff\xfe not utf-8"}}',
        '{"name":"caf\u00e9 \u202e\u2066 \U0001f600"}'.encode(),
        b'{"a":1,"a":2}  \x00\r\n\r\n',
        b"x" * 1024,
    ],
    ids=["tools-call", "not-utf8", "unicode-tricks", "nul-and-crlf", "at-the-limit"],
)
def test_body_bytes_reach_the_checker_exactly(
    gateway_url: str, client: httpx2.Client, scripted: ScriptedDecision, body: bytes
) -> None:
    assert client.post(gateway_url + "/small", content=body).status_code == 200
    view = scripted.seen[-1]
    assert (view.method, view.path, view.body) == ("POST", "/small", body)


def test_an_over_limit_body_never_reaches_the_checker_or_the_upstream(
    gateway_url: str, client: httpx2.Client, upstream: RecordingUpstream, scripted: ScriptedDecision
) -> None:
    checked, received = len(scripted.seen), upstream.count
    response = client.post(gateway_url + "/small", content=b"x" * 1025)
    assert response.status_code == 413
    assert (len(scripted.seen), upstream.count) == (checked, received)


def test_a_denial_reaches_the_client_with_its_status_body_and_headers(
    gateway_url: str, client: httpx2.Client, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    response = client.post(gateway_url + "/finance/deny", content=TOOLS_CALL)
    assert response.status_code == 403
    assert response.content == DENY_BODY
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.headers["www-authenticate"] == 'Bearer error="x"'
    assert response.headers[DECISION_HEADER].startswith("decision-")
    assert upstream.count == before


def test_a_denial_with_status_200_reaches_the_client_as_200_and_never_the_upstream(
    gateway_url: str, client: httpx2.Client, upstream: RecordingUpstream
) -> None:
    before = upstream.count
    response = client.post(gateway_url + "/finance/deny-ok", content=TOOLS_CALL)
    assert response.status_code == 200
    assert response.content == DENY_BODY
    assert response.headers[DECISION_HEADER].startswith("decision-")
    assert upstream.count == before


# --- the server itself ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_envoy_fails_closed_with_503_when_the_checker_is_down(
    upstream: RecordingUpstream, client: httpx2.Client, tmp_path: Path
) -> None:
    servers = [mcp_server("finance", upstream.url, path_prefix="/finance")]
    bootstrap = render_bootstrap(servers, ext_authz=f"127.0.0.1:{_closed_port()}", transport="http")
    before = upstream.count
    with start_envoy(bootstrap, tmp_path) as envoy:
        response = client.post(envoy.url + "/finance", content=TOOLS_CALL)
    assert response.status_code == 503
    assert upstream.count == before


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(raw)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # the server closed with request bytes unread: its answer came first
            pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def direct(scripted: ScriptedDecision) -> Iterator[int]:
    server = HttpAuthzServer(scripted.decide, "127.0.0.1:0")
    try:
        yield server.port
    finally:
        server.stop()


def test_keep_alive_answers_pipelined_requests_in_order(direct: int) -> None:
    one = b"POST /finance HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi"
    two = b"POST /finance/deny HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    answer = _exchange(direct, one + two)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 403 " in answer
    assert answer.endswith(DENY_BODY)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /finance HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx", b"400"),
        (b"POST /finance HTTP/1.1\r\ncontent-length: +1\r\n\r\nx", b"400"),
        (b"POST /finance HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n", b"413"),
        (b"POST /finance HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nbad header\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nx : y\r\n\r\n", b"400"),
        (b"POST  /finance HTTP/1.1\r\n\r\n", b"400"),
        (b"POST /finance HTTP/2\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nx: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (b"POST /finance HTTP/1.1\r\nx(y: z\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nx\xe9: z\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nx: a\x00b\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nx: a\ncontent-length: 5\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\nx: a\rb\r\n\r\n", b"400"),
        (b"POST /finance HTTP/1.1\r\n x: folded\r\n\r\n", b"400"),
        (b"P\xc9ST /finance HTTP/1.1\r\n\r\n", b"400"),
    ],
    ids=[
        "duplicate-length",
        "signed-length",
        "huge-length",
        "chunked",
        "no-colon",
        "space-before-colon",
        "double-space",
        "http2-version",
        "oversized-head",
        "name-not-a-token",
        "name-not-ascii",
        "nul-in-value",
        "bare-lf-smuggles-a-header",
        "bare-cr",
        "obs-fold",
        "method-not-ascii",
    ],
)
def test_a_malformed_request_is_refused_and_the_connection_closed(
    direct: int, scripted: ScriptedDecision, raw: bytes, status: bytes
) -> None:
    checked = len(scripted.seen)
    answer = _exchange(direct, raw)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert len(scripted.seen) == checked
