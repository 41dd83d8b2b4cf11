"""The agent driver: outcomes against the demo servers directly, and against a scripted responder
that answers the way DESIGN.md §3 says the gateway does (JSON-RPC deny bodies, 401 challenges)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from callwarden.demo.agent import AgentRun, ToolCall, run_agent
from callwarden.demo.servers import DECISION_ID_HEADER, TOOLS, RunningServers

pytest_plugins = ("tests.support.mcp_servers",)
pytestmark = pytest.mark.integration

CHALLENGE = (
    'Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource", '
    'error="invalid_token"'
)
BOARD_CALLS = {
    "finance": ToolCall("query_financials", {"period": "2026-Q1", "entity": "acme"}),
    "documents": ToolCall("create_doc", {"template": "board-packet", "title": "Q1"}),
    "workflow": ToolCall("notify_reviewer", {"group": "audit", "deadline": "2026-04-30"}),
}


class _Scripted(BaseHTTPRequestHandler):
    """Answers each JSON-RPC request as `script` says: by method, or by tool name for tools/call."""

    server: _ScriptedServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "id" not in message:  # notifications/initialized
            self._send(202, b"", "application/json")
            return
        if self.headers.get("Authorization") != "Bearer good":
            self._send(401, b"", "text/plain", {"WWW-Authenticate": CHALLENGE})
            return
        method = message["method"]
        key = message["params"]["name"] if method == "tools/call" else method
        self._answer(self.server.script.get(key, "result"), message)

    def _answer(self, behaviour: str, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if behaviour == "result":
            reply["result"] = _RESULTS[message["method"]](self.headers["Host"])
            self._send(200, json.dumps(reply).encode(), "application/json")
        elif behaviour in ("deny", "deny-403", "mapping-error"):
            code, text = (
                (-32602, "mapping error") if behaviour == "mapping-error" else (-32001, "denied by rule 'x'")
            )
            reply["error"] = {"code": code, "message": text}
            status = 403 if behaviour == "deny-403" else 200
            self._send(
                status, json.dumps(reply).encode(), "application/json", {DECISION_ID_HEADER: "01DENIED"}
            )
        elif behaviour == "unauthenticated":
            self._send(401, b"", "text/plain", {"WWW-Authenticate": CHALLENGE})
        else:  # "outage"
            self._send(503, b"upstream connect error", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


_RESULTS = {
    "initialize": lambda host: {
        "protocolVersion": "2025-11-25",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "scripted", "version": "0"},
    },
    "tools/list": lambda host: {"tools": [{"name": "a", "inputSchema": {"type": "object"}}]},
    "tools/call": lambda host: {"content": [{"type": "text", "text": f"ran at {host}"}]},
}


class _ScriptedServer(ThreadingHTTPServer):
    script: dict[str, str]


@pytest.fixture
def scripted() -> Iterator[tuple[str, dict[str, str]]]:
    """(MCP URL, script): set script["<method>"] or script["<tool>"] to a behaviour."""
    server = _ScriptedServer(("127.0.0.1", 0), _Scripted)
    server.script = {}
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mcp", server.script
    server.shutdown()
    server.server_close()
    thread.join()


def summary(run: AgentRun) -> list[tuple[str, str]]:
    return [(outcome.description, outcome.status) for outcome in run.outcomes]


@pytest.mark.parametrize("name", sorted(BOARD_CALLS))
def test_direct_run_against_a_demo_server_is_allowed_and_executes(
    demo_servers: RunningServers, name: str
) -> None:
    call = BOARD_CALLS[name]
    run = run_agent(demo_servers.url(name), "any-token", [call, call])
    assert (
        summary(run)
        == [("initialize", "allowed"), ("tools/list", "allowed")] + [(call.describe(), "allowed")] * 2
    )
    assert run.tools == TOOLS[name]
    assert all(outcome.http_status == 200 and outcome.decision_id is None for outcome in run.outcomes)
    assert demo_servers.executed(name, call.tool) == 2


def test_result_text_is_reported(demo_servers: RunningServers) -> None:
    run = run_agent(demo_servers.url("documents"), None, [BOARD_CALLS["documents"]])
    assert run.calls()[0].result_text == "doc-0001"


def test_a_tool_error_is_allowed_and_flagged(demo_servers: RunningServers) -> None:
    [outcome] = run_agent(demo_servers.url("finance"), None, [ToolCall("query_financials", {})]).calls()
    assert (outcome.status, outcome.tool_error) == ("allowed", True)


def test_a_decision_id_echoed_by_the_upstream_is_reported(demo_servers: RunningServers) -> None:
    # Stands in for the gateway's stamp on the upstream request: the demo servers echo it back.
    run = run_agent(
        demo_servers.url("workflow"), None, [BOARD_CALLS["workflow"]], headers={DECISION_ID_HEADER: "01X"}
    )
    assert run.calls()[0].decision_id == "01X"
    assert demo_servers.ledgers["workflow"].calls()[0].decision_id == "01X"


@pytest.mark.parametrize(
    ("behaviour", "status", "http_status", "code"),
    [
        pytest.param("deny", "denied", 200, -32001, id="deny-200"),
        pytest.param("deny-403", "denied", 403, -32001, id="deny-403"),
        pytest.param("mapping-error", "error", 200, -32602, id="mapping-error"),
        pytest.param("unauthenticated", "unauthenticated", 401, None, id="401"),
        pytest.param("outage", "error", 503, None, id="503"),
    ],
)
def test_a_refused_tools_call_is_an_outcome_not_a_crash(
    scripted: tuple[str, dict[str, str]], behaviour: str, status: str, http_status: int, code: int | None
) -> None:
    url, script = scripted
    script["payroll"] = behaviour
    run = run_agent(url, "good", [ToolCall("payroll", {"month": "2026-03"}), ToolCall("a")])
    refused, after = run.calls()
    assert (refused.status, refused.allowed, refused.http_status) == (status, False, http_status)
    if code is not None:
        assert refused.error_code == code
    assert after.status == "allowed"  # the run goes on after a refusal


def test_a_denial_reports_message_and_decision_id(scripted: tuple[str, dict[str, str]]) -> None:
    url, script = scripted
    script["payroll"] = "deny"
    [denied] = run_agent(url, "good", [ToolCall("payroll")]).calls()
    assert (denied.error_message, denied.decision_id) == ("denied by rule 'x'", "01DENIED")


def test_a_401_reports_the_challenge(scripted: tuple[str, dict[str, str]]) -> None:
    url, script = scripted
    script["payroll"] = "unauthenticated"
    [refused] = run_agent(url, "good", [ToolCall("payroll")]).calls()
    assert refused.www_authenticate == CHALLENGE


@pytest.mark.parametrize("token", [pytest.param("bad", id="bad-token"), pytest.param(None, id="no-token")])
def test_an_unauthenticated_initialize_ends_the_run(
    scripted: tuple[str, dict[str, str]], token: str | None
) -> None:
    url, _ = scripted
    run = run_agent(url, token, [ToolCall("a")])
    assert summary(run) == [("initialize", "unauthenticated")]
    assert run.tools == ()


def test_a_denied_initialize_ends_the_run(scripted: tuple[str, dict[str, str]]) -> None:
    url, script = scripted
    script["initialize"] = "deny"
    assert summary(run_agent(url, "good", [ToolCall("a")])) == [("initialize", "denied")]


def test_a_denied_tools_list_does_not_stop_the_calls(scripted: tuple[str, dict[str, str]]) -> None:
    url, script = scripted
    script["tools/list"] = "deny"
    run = run_agent(url, "good", [ToolCall("a")])
    assert summary(run) == [
        ("initialize", "allowed"),
        ("tools/list", "denied"),
        ("tools/call a()", "allowed"),
    ]
    assert run.tools == ()


def test_the_host_override_reaches_the_server(scripted: tuple[str, dict[str, str]]) -> None:
    url, _ = scripted
    run = run_agent(url, "good", [ToolCall("a")], host="finance.board.example")
    assert run.calls()[0].result_text == "ran at finance.board.example"


def test_an_unreachable_endpoint_is_one_error_outcome() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    run = run_agent(f"http://127.0.0.1:{port}/mcp", "good", [ToolCall("a")], timeout=5)
    [outcome] = run.outcomes
    assert (outcome.description, outcome.status) == ("initialize", "error")
    assert outcome.error_message is not None
    assert outcome.error_message.startswith("ConnectError")


def test_tool_call_description_names_tool_and_arguments() -> None:
    call = ToolCall("create_doc", {"template": "board", "title": "Q1"})
    assert call.describe() == "tools/call create_doc(template='board', title='Q1')"
