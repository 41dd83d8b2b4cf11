"""The demo MCP servers, driven directly (no gateway) with the official MCP client and raw HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from callwarden.demo.servers import (
    DECISION_ID_HEADER,
    TOOLS,
    RunningServers,
    read_calls,
    read_executed,
    start_servers,
)

pytest_plugins = ("tests.support.mcp_servers",)
pytestmark = pytest.mark.integration

T = TypeVar("T")

CALLS = {
    "finance": ("query_financials", {"period": "2026-Q1", "entity": "acme-holdings"}),
    "documents": ("create_doc", {"template": "board-packet", "title": "Q1 board packet"}),
    "workflow": ("notify_reviewer", {"group": "audit-committee", "deadline": "2026-04-30"}),
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def with_session(
    url: str, use: Callable[[ClientSession], Awaitable[T]], headers: Mapping[str, str] = {}
) -> T:
    async def run() -> T:
        async with (
            httpx2.AsyncClient(headers=dict(headers), timeout=10) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await use(session)

    return anyio.run(run)


def call(url: str, tool: str, arguments: dict[str, Any], headers: Mapping[str, str] = {}) -> CallToolResult:
    async def use(session: ClientSession) -> CallToolResult:
        result = await session.call_tool(tool, arguments)
        assert isinstance(result, CallToolResult)
        return result

    return with_session(url, use, headers)


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_tools_list_publishes_the_server_tool_with_its_arguments(
    demo_servers: RunningServers, name: str
) -> None:
    async def use(session: ClientSession) -> Any:
        return (await session.list_tools()).tools

    tools = with_session(demo_servers.url(name), use)
    tool_name, arguments = CALLS[name]
    assert [tool.name for tool in tools] == list(TOOLS[name])
    [listed] = [tool for tool in tools if tool.name == tool_name]
    assert sorted(listed.input_schema["required"]) == sorted(arguments)
    assert "ctx" not in listed.input_schema["properties"]  # the SDK's Context is not an argument


@pytest.mark.parametrize("name", sorted(CALLS))
def test_tools_call_executes_and_is_counted_once(demo_servers: RunningServers, name: str) -> None:
    tool, arguments = CALLS[name]
    assert demo_servers.executed(name, tool) == 0
    result = call(demo_servers.url(name), tool, arguments)
    assert not result.is_error
    assert demo_servers.executed(name, tool) == 1
    [executed] = demo_servers.ledgers[name].calls()
    assert (executed.tool, executed.arguments, executed.decision_id) == (tool, arguments, None)


def test_query_financials_returns_a_table_for_the_period_and_entity(demo_servers: RunningServers) -> None:
    result = call(demo_servers.url("finance"), "query_financials", {"period": "FY2025", "entity": "acme"})
    table = json.loads(text_of(result))
    assert (table["period"], table["entity"]) == ("FY2025", "acme")
    assert [row["line"] for row in table["rows"]] == ["Revenue", "Operating costs", "Operating income"]


def test_create_doc_returns_a_new_doc_id_per_call(demo_servers: RunningServers) -> None:
    url = demo_servers.url("documents")
    ids = [text_of(call(url, "create_doc", {"template": "minutes", "title": f"t{n}"})) for n in range(2)]
    assert ids == ["doc-0001", "doc-0002"]


def test_notify_reviewer_confirms_group_and_deadline(demo_servers: RunningServers) -> None:
    result = call(
        demo_servers.url("workflow"), "notify_reviewer", {"group": "cfo-office", "deadline": "Friday"}
    )
    assert text_of(result) == "notified cfo-office; review due Friday"


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"period": "Q1"}, id="missing-argument"),
        pytest.param({"period": 2026, "entity": "acme"}, id="wrong-type-int"),
        pytest.param({"period": ["Q1"], "entity": "acme"}, id="wrong-type-list"),
        pytest.param({"period": None, "entity": "acme"}, id="null"),
        pytest.param({}, id="no-arguments"),
    ],
)
def test_invalid_arguments_are_a_tool_error_and_never_counted(
    demo_servers: RunningServers, arguments: dict[str, Any]
) -> None:
    result = call(demo_servers.url("finance"), "query_financials", arguments)
    assert result.is_error
    assert demo_servers.executed("finance", "query_financials") == 0


def test_unicode_arguments_reach_the_tool_unchanged(demo_servers: RunningServers) -> None:
    # An RTL override, fullwidth letters and an astral-plane emoji.
    arguments = {"period": "Q1\u202e2026", "entity": "\uff21\uff23\uff2d\uff25 \U0001f4bc"}
    call(demo_servers.url("finance"), "query_financials", arguments)
    assert demo_servers.ledgers["finance"].calls()[0].arguments == arguments


def test_unknown_tool_is_a_tool_error_and_counts_nothing(demo_servers: RunningServers) -> None:
    result = call(demo_servers.url("finance"), "delete_ledger", {"entity": "acme"})
    assert result.is_error
    assert demo_servers.ledgers["finance"].counts() == {"query_financials": 0, "transfer_funds": 0}


def test_the_gateway_decision_id_is_recorded_and_echoed(demo_servers: RunningServers) -> None:
    params = {"name": "create_doc", "arguments": {"template": "t", "title": "x"}}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    headers = {**MCP_HEADERS, DECISION_ID_HEADER: "01JDEMO0000000000000000001"}
    response = httpx2.post(demo_servers.url("documents"), json=body, headers=headers, timeout=10)
    assert response.headers[DECISION_ID_HEADER] == "01JDEMO0000000000000000001"
    assert demo_servers.ledgers["documents"].calls()[0].decision_id == "01JDEMO0000000000000000001"


def test_a_routed_host_header_is_accepted(demo_servers: RunningServers) -> None:
    # Through the gateway the Host is the route's authority, not 127.0.0.1.
    result = call(
        demo_servers.url("workflow"),
        "notify_reviewer",
        {"group": "g", "deadline": "d"},
        {"Host": "workflow.board.example"},
    )
    assert not result.is_error


def test_each_message_is_one_post_answered_with_json_and_no_session(demo_servers: RunningServers) -> None:
    response = httpx2.post(demo_servers.url("finance"), json=INITIALIZE, headers=MCP_HEADERS, timeout=10)
    assert response.headers["content-type"].startswith("application/json")
    assert "mcp-session-id" not in response.headers
    assert response.json()["result"]["serverInfo"]["name"] == "finance"


def test_stateless_tools_call_needs_no_prior_initialize(demo_servers: RunningServers) -> None:
    tool, arguments = CALLS["workflow"]
    body = {
        "jsonrpc": "2.0",
        "id": "a",
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    response = httpx2.post(demo_servers.url("workflow"), json=body, headers=MCP_HEADERS, timeout=10)
    assert response.json()["id"] == "a"
    assert "result" in response.json()
    assert demo_servers.executed("workflow", tool) == 1


def test_calls_endpoint_reports_counts_and_calls_over_http(demo_servers: RunningServers) -> None:
    tool, arguments = CALLS["finance"]
    call(demo_servers.url("finance"), tool, arguments)
    document = read_calls(demo_servers.base_url("finance"))
    assert document == {
        "server": "finance",
        "executed": {"query_financials": 1, "transfer_funds": 0},
        "calls": [{"tool": tool, "arguments": arguments, "decision_id": None}],
    }
    assert read_executed(demo_servers.base_url("finance"), tool) == 1


@pytest.mark.parametrize("name", sorted(CALLS))
def test_calls_endpoint_starts_at_zero_for_every_tool(demo_servers: RunningServers, name: str) -> None:
    assert read_calls(demo_servers.base_url(name))["executed"] == dict.fromkeys(TOOLS[name], 0)


def test_calls_endpoint_is_read_only(demo_servers: RunningServers) -> None:
    assert httpx2.post(demo_servers.calls_url("finance"), json={}, timeout=5).status_code == 405


def test_calls_endpoint_is_outside_the_mcp_path(demo_servers: RunningServers) -> None:
    assert httpx2.get(demo_servers.url("finance") + "/_calls", timeout=5).status_code == 404


def test_executed_rejects_a_tool_the_server_does_not_have(demo_servers: RunningServers) -> None:
    with pytest.raises(KeyError, match="no tool 'create_doc'"):
        demo_servers.executed("finance", "create_doc")


def test_start_servers_rejects_unknown_server_names() -> None:
    with pytest.raises(ValueError, match="unknown demo servers"):
        start_servers({"payroll": 0})


def test_start_servers_starts_only_the_servers_named() -> None:
    with start_servers({"documents": 0}) as servers:
        assert list(servers.ports) == ["documents"]
        assert read_calls(servers.base_url("documents"))["server"] == "documents"


def test_start_servers_fails_on_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            start_servers({"finance": taken.getsockname()[1]})


def test_stop_releases_the_port() -> None:
    with start_servers({"workflow": 0}) as servers:
        port = servers.ports["workflow"]
    with start_servers({"workflow": port}) as again:
        assert read_calls(again.base_url("workflow"))["server"] == "workflow"
