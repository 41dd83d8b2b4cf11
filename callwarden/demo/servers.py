"""The board-packet MCP servers: finance, documents and workflow, built with the official `mcp` SDK.

Each server speaks streamable HTTP at `/mcp` in stateless mode with JSON responses, so every
JSON-RPC message is exactly one POST answered by one JSON body: Envoy's ext_authz sees each call
whole, and no session or SSE stream outlives a request. Each server records the tool calls it
actually executed (tool, arguments and the `x-callwarden-decision-id` the gateway stamped on the
request) in a `CallLedger`, readable in-process and, for tests in another process, as JSON from
`GET /_calls` on the same port (outside the MCP path, so the gateway never routes it).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import httpx2
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MCP_PATH: Final = "/mcp"
CALLS_PATH: Final = "/_calls"
DECISION_ID_HEADER: Final = "x-callwarden-decision-id"
LOOPBACK: Final = "127.0.0.1"

# Matches examples/board-packet: finance upstream :9101, documents :9102, workflow :9103.
DEFAULT_PORTS: Final[Mapping[str, int]] = {"finance": 9101, "documents": 9102, "workflow": 9103}
TOOLS: Final[Mapping[str, tuple[str, ...]]] = {
    "finance": ("query_financials", "transfer_funds"),
    "documents": ("create_doc",),
    "workflow": ("notify_reviewer",),
}
_STARTUP_TIMEOUT: Final = 15.0


@dataclass(frozen=True)
class ExecutedCall:
    """One tool call a demo server actually ran."""

    tool: str
    arguments: dict[str, Any]
    decision_id: str | None  # the gateway's stamp; None when the call did not come through it

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "arguments": self.arguments, "decision_id": self.decision_id}


class CallLedger:
    """The calls one server executed. Thread-safe: the server's event loop writes, tests read."""

    def __init__(self, server: str, tools: Iterable[str]) -> None:
        self.server = server
        self.tools = tuple(tools)
        self._lock = threading.Lock()
        self._calls: list[ExecutedCall] = []

    def record(self, call: ExecutedCall) -> int:
        """Keep `call`; return how many calls of its tool this server has now run (this one included)."""
        with self._lock:
            self._calls.append(call)
            return sum(1 for kept in self._calls if kept.tool == call.tool)

    def calls(self) -> tuple[ExecutedCall, ...]:
        with self._lock:
            return tuple(self._calls)

    def count(self, tool: str) -> int:
        # A typo in a test's tool name must fail loudly, not read as "never executed".
        if tool not in self.tools:
            raise KeyError(f"server {self.server!r} has no tool {tool!r} (it has {list(self.tools)})")
        return sum(1 for call in self.calls() if call.tool == tool)

    def counts(self) -> dict[str, int]:
        calls = self.calls()
        return {tool: sum(1 for call in calls if call.tool == tool) for tool in self.tools}

    def to_json(self) -> dict[str, Any]:
        calls = self.calls()
        return {
            "server": self.server,
            "executed": {tool: sum(1 for call in calls if call.tool == tool) for tool in self.tools},
            "calls": [call.to_json() for call in calls],
        }


def _decision_id(ctx: Context[Any, Any]) -> str | None:
    headers = ctx.headers
    return None if headers is None else headers.get(DECISION_ID_HEADER)


def _finance(ledger: CallLedger) -> MCPServer:
    server = MCPServer("finance", instructions="Board finance figures (demo data).", log_level="WARNING")

    @server.tool()
    async def query_financials(period: str, entity: str, ctx: Context[Any, Any]) -> dict[str, Any]:
        """Return the summary financial table of one entity for one reporting period."""
        ledger.record(
            ExecutedCall("query_financials", {"period": period, "entity": entity}, _decision_id(ctx))
        )
        return {
            "period": period,
            "entity": entity,
            "currency": "EUR",
            "rows": [
                {"line": "Revenue", "amount": 12_400_000},
                {"line": "Operating costs", "amount": 9_100_000},
                {"line": "Operating income", "amount": 3_300_000},
            ],
        }

    @server.tool()
    async def transfer_funds(to: str, amount: int, ctx: Context[Any, Any]) -> str:
        """Transfer `amount` EUR from the board's account to account `to` (demo: nothing moves)."""
        number = ledger.record(
            ExecutedCall("transfer_funds", {"to": to, "amount": amount}, _decision_id(ctx))
        )
        return f"transfer {number:04d}: {amount} EUR to {to} completed"

    return server


def _documents(ledger: CallLedger) -> MCPServer:
    server = MCPServer("documents", instructions="Board document drafting (demo).", log_level="WARNING")

    @server.tool()
    async def create_doc(template: str, title: str, ctx: Context[Any, Any]) -> str:
        """Create a document from a template and return its id."""
        number = ledger.record(
            ExecutedCall("create_doc", {"template": template, "title": title}, _decision_id(ctx))
        )
        return f"doc-{number:04d}"

    return server


def _workflow(ledger: CallLedger) -> MCPServer:
    server = MCPServer("workflow", instructions="Board review workflow (demo).", log_level="WARNING")

    @server.tool()
    async def notify_reviewer(group: str, deadline: str, ctx: Context[Any, Any]) -> str:
        """Notify a reviewer group that a board packet awaits review before the deadline."""
        ledger.record(
            ExecutedCall("notify_reviewer", {"group": group, "deadline": deadline}, _decision_id(ctx))
        )
        return f"notified {group}; review due {deadline}"

    return server


_BUILDERS: Final = {"finance": _finance, "documents": _documents, "workflow": _workflow}


class _EchoDecisionId:
    """Copy the gateway's `x-callwarden-decision-id` request header onto the response.

    Envoy adds that header to the upstream request only; echoing it lets the agent (and the demo's
    reader) tie an allowed call's result to its decision log line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = DECISION_ID_HEADER.encode()
        stamp = [(k, v) for k, v in scope["headers"] if k == wanted][:1]
        if not stamp:
            await self.app(scope, receive, send)
            return

        async def send_with_stamp(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *stamp]}
            await send(message)

        await self.app(scope, receive, send_with_stamp)


def build_app(name: str, ledger: CallLedger) -> ASGIApp:
    """The ASGI app of one demo server: MCP at `/mcp`, its ledger at `GET /_calls`."""
    app = _BUILDERS[name](ledger).streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=True,
        stateless_http=True,
        # The SDK's loopback default rejects any Host but 127.0.0.1/localhost with 421; through the
        # gateway the Host is the route's authority (e.g. finance.board.example). These servers listen
        # on loopback only and are meant to be reached through the gateway.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    async def calls(_: Request) -> Response:
        return JSONResponse(ledger.to_json())

    app.router.routes.append(Route(CALLS_PATH, calls, methods=["GET"]))
    return _EchoDecisionId(app)


def _listen(port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for sockets created
    # with it, and without it every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # Lets a demo restart on its fixed ports while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


class RunningServers:
    """Demo servers serving on loopback from one background event loop. A context manager."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        unknown = sorted(set(ports) - set(_BUILDERS))
        if unknown:
            raise ValueError(f"unknown demo servers {unknown}; known: {sorted(_BUILDERS)}")
        self.ledgers = {name: CallLedger(name, TOOLS[name]) for name in ports}
        self._sockets: dict[str, socket.socket] = {}
        try:
            for name, port in ports.items():
                self._sockets[name] = _listen(port)
        except OSError:
            for sock in self._sockets.values():
                sock.close()
            raise
        self.ports = {name: sock.getsockname()[1] for name, sock in self._sockets.items()}
        self._uvicorn = {
            name: uvicorn.Server(
                uvicorn.Config(
                    build_app(name, self.ledgers[name]),
                    log_config=None,  # leave the host process's logging alone
                    log_level="warning",
                    access_log=False,
                    lifespan="on",
                    timeout_graceful_shutdown=2,
                )
            )
            for name in ports
        }
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="demo-mcp-servers")
        self._thread.daemon = True
        self._thread.start()
        self._wait_started()

    async def _serve(self) -> None:
        await asyncio.gather(
            *(server.serve(sockets=[self._sockets[name]]) for name, server in self._uvicorn.items())
        )

    def _wait_started(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not all(server.started for server in self._uvicorn.values()):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"demo MCP servers did not start on ports {self.ports}")
            time.sleep(0.01)

    def base_url(self, name: str) -> str:
        """`http://127.0.0.1:<port>`: the McpServer `upstream.url` of this server."""
        return f"http://{LOOPBACK}:{self.ports[name]}"

    def url(self, name: str) -> str:
        """The MCP endpoint, `http://127.0.0.1:<port>/mcp`."""
        return self.base_url(name) + MCP_PATH

    def calls_url(self, name: str) -> str:
        return self.base_url(name) + CALLS_PATH

    def executed(self, name: str, tool: str) -> int:
        """How many times server `name` ran `tool`."""
        return self.ledgers[name].count(tool)

    def stop(self) -> None:
        for server in self._uvicorn.values():
            server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            for server in self._uvicorn.values():
                server.force_exit = True
            self._thread.join(timeout=5)
        for sock in self._sockets.values():
            sock.close()

    def __enter__(self) -> RunningServers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_servers(ports: Mapping[str, int] | None = None) -> RunningServers:
    """Start demo servers on loopback: all three on 9101-9103 by default.

    `ports` names the servers to start and their ports (0 picks a free port), e.g. `{"finance": 0}`.
    Raises OSError if a port is taken and ValueError for an unknown server name.
    """
    return RunningServers(DEFAULT_PORTS if ports is None else ports)


def read_calls(base_url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The `/_calls` document of the demo server at `base_url`, which may run in another process."""
    response = httpx2.get(base_url + CALLS_PATH, timeout=timeout)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def read_executed(base_url: str, tool: str) -> int:
    """How many times the demo server at `base_url` executed `tool`, read over HTTP."""
    count: int = read_calls(base_url)["executed"][tool]
    return count
