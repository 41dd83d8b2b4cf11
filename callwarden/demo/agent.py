"""An agent driver on the official MCP client: initialize, tools/list, then a sequence of tools/call.

It reports every step as an `Outcome` instead of raising, because the interesting results here are
refusals: a JSON-RPC error -32001 from the gateway is a denial, an HTTP 401 is "unauthenticated",
and anything else that is not a result (mapping error -32602, PDP failure -32603, a transport
failure) is an error.

The SDK's streamable-HTTP client folds HTTP statuses into synthetic JSON-RPC errors (a bare 401
becomes -32603 "Server returned an error response"), so the driver watches the HTTP exchanges with
an httpx2 response hook, matched to each step by the JSON-RPC method in the request body (steps are
sequential; only notifications can overlap them). That is also where the `x-callwarden-decision-id`
response header is read, when whoever answered put one there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Literal

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolRequest, CallToolRequestParams, CallToolResult, Implementation, TextContent

from callwarden.demo.dpop import DpopAuth, DpopKey

DENY_CODE: Final = -32001
DECISION_ID_HEADER: Final = "x-callwarden-decision-id"
CLIENT_INFO: Final = Implementation(name="callwarden-demo-agent", version="0.1.0")

Status = Literal["allowed", "denied", "unauthenticated", "error"]


@dataclass(frozen=True)
class ToolCall:
    """One tools/call the agent will make."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in self.arguments.items())
        return f"tools/call {self.tool}({args})"


@dataclass(frozen=True)
class Outcome:
    """What happened to one step of the run."""

    description: str  # "initialize", "tools/list", "tools/call create_doc(template='board', ...)"
    method: str
    status: Status
    http_status: int | None = None
    error_code: int | None = None  # the JSON-RPC error code, when the answer was an error
    error_message: str | None = None
    result_text: str | None = None  # text content of a tools/call result
    tool_error: bool = False  # allowed through, but the tool reported isError
    decision_id: str | None = None  # `x-callwarden-decision-id` on the response, if present
    www_authenticate: str | None = None  # the challenge of a 401

    @property
    def allowed(self) -> bool:
        return self.status == "allowed"


@dataclass(frozen=True)
class AgentRun:
    outcomes: tuple[Outcome, ...]
    tools: tuple[str, ...]  # names from tools/list; empty when that step did not succeed

    def calls(self) -> tuple[Outcome, ...]:
        """The tools/call outcomes, in order."""
        return tuple(outcome for outcome in self.outcomes if outcome.method == "tools/call")


@dataclass(frozen=True)
class _Exchange:
    method: str | None
    status: int
    headers: httpx2.Headers


class _ExchangeLog:
    """The HTTP responses seen, each tagged with the JSON-RPC method of its request."""

    def __init__(self) -> None:
        self.exchanges: list[_Exchange] = []

    async def on_response(self, response: httpx2.Response) -> None:
        self.exchanges.append(
            _Exchange(_jsonrpc_method(response.request), response.status_code, response.headers)
        )

    def last(self, method: str, since: int) -> _Exchange | None:
        for exchange in reversed(self.exchanges[since:]):
            if exchange.method == method:
                return exchange
        return None


def _jsonrpc_method(request: httpx2.Request) -> str | None:
    try:
        body = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return None
    method = body.get("method") if isinstance(body, dict) else None
    return method if isinstance(method, str) else None


def _result_text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


class _Step:
    """One step of a run: turns what came back for its request into an Outcome."""

    def __init__(self, log: _ExchangeLog, description: str, method: str) -> None:
        self.log = log
        self.description = description
        self.method = method
        self.since = len(log.exchanges)

    def _seen(self) -> tuple[int | None, str | None, str | None]:
        exchange = self.log.last(self.method, self.since)
        if exchange is None:
            return None, None, None
        return (
            exchange.status,
            exchange.headers.get(DECISION_ID_HEADER),
            exchange.headers.get("www-authenticate"),
        )

    def answered(self, *, result_text: str | None = None, tool_error: bool = False) -> Outcome:
        http_status, decision_id, _ = self._seen()
        return Outcome(
            self.description,
            self.method,
            "allowed",
            http_status=http_status,
            result_text=result_text,
            tool_error=tool_error,
            decision_id=decision_id,
        )

    def refused(self, error: MCPError) -> Outcome:
        http_status, decision_id, challenge = self._seen()
        status: Status
        if http_status == 401:
            status = "unauthenticated"
        elif error.code == DENY_CODE:
            status = "denied"
        else:
            status = "error"
        return Outcome(
            self.description,
            self.method,
            status,
            http_status=http_status,
            error_code=error.code,
            error_message=error.message,
            decision_id=decision_id,
            www_authenticate=challenge,
        )

    def failed(self, error: BaseException) -> Outcome:
        http_status, decision_id, _ = self._seen()
        return Outcome(
            self.description,
            self.method,
            "error",
            http_status=http_status,
            error_message=f"{type(error).__name__}: {error}",
            decision_id=decision_id,
        )


class _Run:
    """The steps of one run; `current` is the step in flight, so a transport failure lands on it."""

    def __init__(self, log: _ExchangeLog) -> None:
        self.log = log
        self.outcomes: list[Outcome] = []
        self.tools: list[str] = []
        self.current: _Step | None = None

    def begin(self, description: str, method: str) -> _Step:
        self.current = _Step(self.log, description, method)
        return self.current

    def end(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.current = None


async def _drive(session: ClientSession, run: _Run, calls: Sequence[ToolCall]) -> None:
    step = run.begin("initialize", "initialize")
    try:
        await session.initialize()
    except MCPError as error:
        run.end(step.refused(error))
        return  # without a session nothing else can be asked
    run.end(step.answered())

    step = run.begin("tools/list", "tools/list")
    try:
        listed = await session.list_tools()
    except MCPError as error:
        run.end(step.refused(error))
    else:
        run.tools = [tool.name for tool in listed.tools]
        run.end(step.answered())

    for call in calls:
        step = run.begin(call.describe(), "tools/call")
        try:
            # Not `session.call_tool`: for a tool missing from its cache (never listed, or tools/list
            # refused) it sends a tools/list of its own after the call to fetch the output schema, and
            # a refusal of that second request would be reported as the call's. One call, one POST.
            request = CallToolRequest(
                params=CallToolRequestParams(name=call.tool, arguments=dict(call.arguments))
            )
            result = await session.send_request(request, CallToolResult)
        except MCPError as error:
            run.end(step.refused(error))
            continue
        run.end(step.answered(result_text=_result_text(result), tool_error=bool(result.is_error)))


async def run_agent_async(
    url: str,
    token: str | None,
    calls: Sequence[ToolCall],
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    dpop: DpopKey | None = None,
) -> AgentRun:
    """Drive `url` (an MCP endpoint, e.g. the gateway's http://127.0.0.1:<port>/mcp).

    `token` goes in `Authorization: Bearer` (None sends no credentials), or, with a `dpop` key
    (the token bound to it), in `Authorization: DPoP` with a proof on every request. `host`
    overrides the Host header, which is how one gateway listener routes to several McpServers by
    :authority. Steps stop after a failed initialize or a transport failure; every step taken has
    an Outcome.
    """
    request_headers = {**(headers or {})}
    auth = DpopAuth(token, dpop) if token is not None and dpop is not None else None
    if token is not None and auth is None:
        request_headers["Authorization"] = f"Bearer {token}"
    if host is not None:
        request_headers["Host"] = host
    log = _ExchangeLog()
    run = _Run(log)
    http = httpx2.AsyncClient(
        headers=request_headers,
        timeout=httpx2.Timeout(timeout),
        event_hooks={"response": [log.on_response]},
        auth=auth,
    )
    try:
        async with (
            http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write, client_info=CLIENT_INFO, read_timeout_seconds=timeout) as session,
        ):
            await _drive(session, run, calls)
    except Exception as error:  # a transport failure ends the session
        if run.current is not None:
            run.end(run.current.failed(_innermost(error)))
    return AgentRun(tuple(run.outcomes), tuple(run.tools))


def _innermost(error: BaseException) -> BaseException:
    # anyio task groups wrap the transport's exception; the first leaf names what went wrong.
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def run_agent(
    url: str,
    token: str | None,
    calls: Sequence[ToolCall],
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    dpop: DpopKey | None = None,
) -> AgentRun:
    """`run_agent_async` from synchronous code (a test, the demo CLI)."""
    return anyio.run(
        partial(run_agent_async, url, token, calls, host=host, headers=headers, timeout=timeout, dpop=dpop)
    )
