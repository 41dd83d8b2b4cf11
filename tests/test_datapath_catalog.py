"""tools/list through the gateway: each caller sees the tools it could call, and only those.

Real Envoy, the real ext_authz + ext_proc server, official MCP SDK servers and client. The
board-packet finance server answers JSON; the catalog server (tests/support/catalog_server.py)
answers with SSE and pages its list. Whatever a list shows or hides, every call is still decided
by ext_authz: a hidden tool's call is denied and never reaches the server.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolRequest, CallToolRequestParams, CallToolResult, PaginatedRequestParams

from callwarden.authzen.client import RemotePdps
from callwarden.demo.agent import ToolCall, run_agent
from callwarden.extauthz import metrics
from callwarden.extauthz.service import Gateway, start_gateway
from callwarden.policy.bundle import compile_bundle
from callwarden.policy.loader import config_from_objects
from callwarden.policy.mapping.digest import mapping_sha256
from callwarden.policy.model import Dpop
from tests.support.catalog_server import CatalogServer
from tests.support.datapath import ALLOWED_CALLS, DataPath, jsonrpc, running_datapath, start_datapath
from tests.support.dpop import ProofKey
from tests.support.issuer import LocalIssuer
from tests.support.scripted_pdp import JSON, ScriptedPdp, scripted_pdp
from tests.support.upstream import recording_upstream

pytestmark = pytest.mark.integration

datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)

HOST = "catalog.test"
RESOURCE = "https://catalog.test/mcp"
PAGES = [["read_a", "write_a", "admin_a"], ["read_b", "raw_sql"], ["write_c", "read_c"]]
RULES = [
    {"name": "reads", "tools": ["read_*"], "effect": "Allow"},
    {"name": "writers", "tools": ["write_*"], "effect": "Allow", "when": 'subject.id == "walt"'},
    {"name": "admins", "tools": ["admin_*"], "effect": "Allow"},
    {"name": "no-admin", "tools": ["admin_*"], "effect": "Deny"},
    {"name": "lists", "methods": ["initialize", "tools/list"], "effect": "Allow"},
]
MAPPING = {
    "evaluation": {
        "action": {"name": "read"},
        "resource": {"type": "ledger", "id": "$params.arguments.entity"},
    }
}
OTHER_MAPPING = {"evaluation": {"action": {"name": "read"}, "resource": {"type": "ledger", "id": "'all'"}}}


# --- board-packet: the analyst and the intern ---------------------------------------------


def listed_tools(datapath: DataPath, roles: Sequence[str]) -> tuple[str, ...]:
    token = datapath.token("finance", sub="someone", roles=roles)
    return run_agent(datapath.url, token, [], host=datapath.host("finance")).tools


def test_the_analyst_and_the_intern_see_different_catalogs_of_the_finance_server(datapath: DataPath) -> None:
    assert listed_tools(datapath, ["analyst"]) == ("query_financials", "transfer_funds")
    assert listed_tools(datapath, ["intern"]) == ()


# One allowed call for each tool the analyst's finance catalog lists (transfer_funds: a small
# transfer; a large one would be held for approval).
ANALYST_ALLOWED_CALLS: Final = (
    ToolCall(*ALLOWED_CALLS["finance"]),
    ToolCall("transfer_funds", {"to": "acct-991", "amount": 100}),
)


def test_each_tool_the_analyst_sees_is_allowed_for_some_arguments(datapath: DataPath) -> None:
    run = run_agent(
        datapath.url, datapath.token("finance"), list(ANALYST_ALLOWED_CALLS), host=datapath.host("finance")
    )
    assert run.tools == tuple(call.tool for call in ANALYST_ALLOWED_CALLS)
    assert [call.status for call in run.calls()] == ["allowed", "allowed"]


def test_the_tool_the_intern_does_not_see_is_still_denied_when_called(datapath: DataPath) -> None:
    tool, arguments = ALLOWED_CALLS["finance"]
    before = datapath.executed("finance")
    token = datapath.token("finance", roles=["intern"])
    run = run_agent(datapath.url, token, [ToolCall(tool, arguments)], host=datapath.host("finance"))
    assert run.tools == ()
    assert [(call.status, call.error_code) for call in run.calls()] == [("denied", -32001)]
    assert datapath.executed("finance") == before


def test_the_list_and_the_calls_are_decided_by_the_same_bundle_revision(datapath: DataPath) -> None:
    response = datapath.post(
        "finance", jsonrpc("tools/list"), token=datapath.token("finance", roles=["intern"])
    )
    assert response.json()["result"]["tools"] == []
    lines = datapath.decisions()
    (check,) = [line for line in lines if line["decision_id"] == response.headers["x-callwarden-decision-id"]]
    (listing,) = [
        line for line in lines if line.get("catalog", {}).get("check_decision_id") == check["decision_id"]
    ]
    assert listing["revision"] == check["revision"] == datapath.bundle.revision
    assert listing["catalog"]["removed"] == [
        {"tool": "query_financials", "reason": "not-allowed"},
        {"tool": "transfer_funds", "reason": "not-allowed"},
    ]


def test_the_list_is_filtered_when_envoy_asks_over_http_ext_authz_too(tmp_path: Path) -> None:
    with start_datapath(tmp_path, transport="http") as http:
        response = http.post("finance", jsonrpc("tools/list"), token=http.token("finance", roles=["intern"]))
    assert response.json()["result"]["tools"] == []


def test_a_dpop_bound_caller_s_list_is_filtered_too(tmp_path: Path) -> None:
    with start_datapath(tmp_path, dpop=Dpop(mode="allowed")) as bound:
        key = ProofKey()
        token = bound.token("finance", roles=["intern"], extra={"cnf": {"jkt": key.jkt}})
        proof = key.proof("POST", "http://finance.board.example/mcp", token)
        headers = {"authorization": f"DPoP {token}", "dpop": proof}
        response = bound.post("finance", jsonrpc("tools/list"), headers=headers)
    assert response.json()["result"]["tools"] == []


# --- the catalog server: SSE, pages, a list that changes, drift ------------------------------


@dataclass
class Catalog:
    gateway: Gateway
    issuer: LocalIssuer
    audit: Path

    def token(self, sub: str) -> str:
        return self.issuer.mint(sub=sub, aud=RESOURCE)

    def decisions(self) -> list[dict[str, Any]]:
        self.gateway.ext_authz.decision_log.flush()
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@contextmanager
def catalog_gateway(
    workdir: Path, upstream: str, tools: Sequence[Mapping[str, Any]] = (), *, pdp_url: str | None = None
) -> Iterator[Catalog]:
    """The catalog McpServer behind a gateway, decided by RULES (embedded) or by the PDP at `pdp_url`."""
    issuer = LocalIssuer()
    server = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "McpServer",
        "metadata": {"name": "catalog", "namespace": "shop"},
        "spec": {
            "resource": RESOURCE,
            "route": {"hosts": [HOST], "pathPrefix": "/mcp"},
            "upstream": {"url": upstream},
            "issuers": [{"issuer": issuer.issuer, "jwksUri": issuer.jwks_uri}],
            "tools": list(tools),
            **({"pdp": {"authzen": {"url": pdp_url, "timeoutSeconds": 2}}} if pdp_url else {}),
        },
    }
    policy = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "ToolPolicy",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {"targets": ["catalog"], "rules": RULES},
    }
    audit = workdir / "decisions.jsonl"
    try:
        with RemotePdps() as remote:
            bundle = compile_bundle(config_from_objects([server, policy]), remote_pdp=remote)
            with start_gateway(bundle, workdir / "envoy", audit_path=str(audit)) as gateway:
                yield Catalog(gateway, issuer, audit)
    finally:
        issuer.stop()


async def _session(catalog: Catalog, sub: str, work: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    headers = {"Authorization": f"Bearer {catalog.token(sub)}", "Host": HOST}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=10) as http,
        streamable_http_client(catalog.gateway.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await work(session)


def pages(catalog: Catalog, sub: str, after_first: Callable[[], None] = lambda: None) -> list[list[str]]:
    """Every page of tools/list as the SDK client pages through it (calling `after_first` once)."""

    async def walk(session: ClientSession) -> list[list[str]]:
        seen: list[list[str]] = []
        cursor: str | None = None
        while True:
            params = PaginatedRequestParams(cursor=cursor) if cursor is not None else None
            result = await session.list_tools(params=params)
            seen.append([tool.name for tool in result.tools])
            if len(seen) == 1:
                after_first()
            cursor = result.next_cursor
            if cursor is None:
                return seen

    return anyio.run(partial(_session, catalog, sub, walk))  # type: ignore[no-any-return]


def call(catalog: Catalog, sub: str, tool: str) -> int | None:
    """Call `tool`; None when it ran, else the JSON-RPC error code."""

    async def one(session: ClientSession) -> int | None:
        try:
            await session.send_request(
                CallToolRequest(params=CallToolRequestParams(name=tool, arguments={})), CallToolResult
            )
        except MCPError as error:
            return error.code
        return None

    return anyio.run(partial(_session, catalog, sub, one))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def shop_server() -> Iterator[CatalogServer]:
    with CatalogServer(PAGES) as server:
        yield server


@pytest.fixture(scope="module")
def shop(shop_server: CatalogServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    with catalog_gateway(tmp_path_factory.mktemp("shop"), shop_server.base_url) as catalog:
        yield catalog


def test_an_sse_list_is_filtered_page_by_page_and_its_cursor_still_pages(shop: Catalog) -> None:
    assert pages(shop, "alice") == [["read_a"], ["read_b"], ["read_c"]]
    assert pages(shop, "walt") == [["read_a", "write_a"], ["read_b"], ["write_c", "read_c"]]


def test_each_tool_listed_can_be_called_and_each_hidden_one_is_denied_without_running(
    shop: Catalog, shop_server: CatalogServer
) -> None:
    visible = {name for page in pages(shop, "alice") for name in page}
    hidden = {name for page in PAGES for name in page} - visible
    assert {tool: call(shop, "alice", tool) for tool in sorted(visible)} == dict.fromkeys(sorted(visible))
    assert {tool: call(shop, "alice", tool) for tool in sorted(hidden)} == dict.fromkeys(
        sorted(hidden), -32001
    )
    assert not any(shop_server.calls[tool] for tool in hidden)


def test_a_server_that_changes_its_list_between_pages_is_filtered_by_the_same_policy(
    shop: Catalog, shop_server: CatalogServer
) -> None:
    original = list(shop_server.pages[1])

    def change() -> None:
        shop_server.pages[1] = ["read_new", "admin_new", "write_new", "sneaky"]

    try:
        seen = pages(shop, "alice", after_first=change)
    finally:
        shop_server.pages[1] = original
    assert seen == [["read_a"], ["read_new"], ["read_c"]]


def test_a_declared_mapping_other_than_the_pinned_one_is_reported_as_drift(tmp_path: Path) -> None:
    tools = [{"name": "read_a", "acceptedMappingHash": mapping_sha256(MAPPING)}]
    with (
        CatalogServer([["read_a", "read_b"]]) as server,
        catalog_gateway(tmp_path, server.base_url, tools) as shop,
    ):
        server.declared = {"read_a": OTHER_MAPPING, "read_b": MAPPING}
        before = metrics.MAPPING_DRIFT.labels(server="shop/catalog")._value.get()
        assert pages(shop, "alice") == [["read_a", "read_b"]]
        drift = [line["catalog"]["drift"] for line in shop.decisions() if "catalog" in line]
    assert drift == [
        [
            {"tool": "read_a", "sha256": mapping_sha256(OTHER_MAPPING), "pinned": mapping_sha256(MAPPING)},
            {"tool": "read_b", "sha256": mapping_sha256(MAPPING), "pinned": None},
        ]
    ]
    assert metrics.MAPPING_DRIFT.labels(server="shop/catalog")._value.get() == before + 2


def test_a_pinned_declared_mapping_is_no_drift(tmp_path: Path) -> None:
    tools = [{"name": "read_a", "acceptedMappingHash": mapping_sha256(MAPPING)}]
    with CatalogServer([["read_a"]]) as server, catalog_gateway(tmp_path, server.base_url, tools) as shop:
        server.declared = {"read_a": MAPPING}
        pages(shop, "alice")
        assert [line["catalog"]["drift"] for line in shop.decisions() if "catalog" in line] == [[]]


def test_a_malformed_response_reaches_the_client_as_a_json_rpc_error_not_as_the_list(tmp_path: Path) -> None:
    malformed = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"admin_a"},{"name":"admin_a"}]}'
    with recording_upstream() as upstream, catalog_gateway(tmp_path, upstream.url) as shop:
        upstream.answer_with(malformed)
        headers = {
            "host": HOST,
            "authorization": f"Bearer {shop.token('alice')}",
            "accept": "application/json, text/event-stream",
        }
        response = httpx2.post(
            shop.gateway.url + "/mcp", content=jsonrpc("tools/list"), headers=headers, trust_env=False
        )
        lines = shop.decisions()
    assert response.status_code == 200 and b"admin_a" not in response.content
    error = response.json()["error"]
    assert (response.json()["id"], error["code"]) == (1, -32603) and "(not-json)" in error["message"]
    listed = [(line["decision"], line["reasons"]) for line in lines if line["method"] == "tools/list"]
    assert listed == [("allow", ["shop/shop/lists"]), ("deny", ["rejected:not-json"])]


def test_a_list_larger_than_envoy_s_default_buffer_is_filtered_whole(tmp_path: Path) -> None:
    names = [f"{kind}_{index}" for index in range(4000) for kind in ("read", "admin")]
    tools = [{"name": name, "description": "x" * 200, "inputSchema": {"type": "object"}} for name in names]
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).encode()
    assert len(big) > 2 * 1024 * 1024
    with recording_upstream() as upstream, catalog_gateway(tmp_path, upstream.url) as shop:
        upstream.answer_with(big)
        headers = {"host": HOST, "authorization": f"Bearer {shop.token('alice')}", "accept-encoding": "gzip"}
        response = httpx2.post(
            shop.gateway.url + "/mcp",
            content=jsonrpc("tools/list"),
            headers=headers,
            timeout=30,
            trust_env=False,
        )
    listed = [tool["name"] for tool in response.json()["result"]["tools"]]
    assert listed == [name for name in names if name.startswith("read_")]
    assert upstream.requests[-1].header("accept-encoding") == []  # the hook reads it uncompressed


# --- a remote PDP: its Action Search decides the list ------------------------------------


def permit_all_and_search(actions: Sequence[str]) -> Callable[[str, Any], tuple[int, bytes, str]]:
    """A remote PDP permitting every call and answering action searches with `actions`."""

    def answer(path: str, body: Any) -> tuple[int, bytes, str]:
        if path.endswith("/search/action"):
            results = [{"name": name} for name in actions]
            return 200, json.dumps({"results": results, "page": {"next_token": ""}}).encode(), JSON
        return 200, b'{"decision": true}', JSON

    return answer


@contextmanager
def remote_shop(workdir: Path, upstream: str, *, search: bool) -> Iterator[tuple[Catalog, ScriptedPdp]]:
    with scripted_pdp(None) as remote:
        remote.answer = permit_all_and_search(["read_a", "write_a", "not_a_tool"])
        if search:
            assert remote.metadata is not None
            remote.metadata["search_action_endpoint"] = remote.base_url + "/access/v1/search/action"
        with catalog_gateway(workdir, upstream, pdp_url=remote.base_url) as shop:
            yield shop, remote


def test_a_remote_pdp_s_action_search_decides_the_list(shop_server: CatalogServer, tmp_path: Path) -> None:
    with remote_shop(tmp_path, shop_server.base_url, search=True) as (shop, remote):
        assert pages(shop, "alice") == [["read_a", "write_a"], [], []]
    searches = [body for path, body in remote.evaluation_calls() if path.endswith("/search/action")]
    assert len(searches) == 3 and all("action" not in body for body in searches)
    assert {body["subject"]["id"] for body in searches} == {"alice"}
    assert {body["resource"]["type"] for body in searches} == {"mcp_server"}


def test_a_remote_pdp_without_action_search_lists_unfiltered_and_counts_it(
    shop_server: CatalogServer, tmp_path: Path
) -> None:
    counted = metrics.CATALOG_RESPONSES.labels(server="shop/catalog", outcome="unfiltered")
    before = counted._value.get()
    with remote_shop(tmp_path, shop_server.base_url, search=False) as (shop, _):
        assert pages(shop, "alice") == PAGES
    assert counted._value.get() == before + len(PAGES)


def test_an_action_search_that_fails_refuses_the_list(shop_server: CatalogServer, tmp_path: Path) -> None:
    with remote_shop(tmp_path, shop_server.base_url, search=True) as (shop, remote):
        healthy = remote.answer
        assert healthy is not None
        remote.answer = lambda path, body: (
            (500, b"down", "text/plain") if "search" in path else healthy(path, body)
        )
        with pytest.raises(ExceptionGroup) as refused:  # the SDK's task group wraps the MCPError
            pages(shop, "alice")
    assert refused.group_contains(MCPError, match=r"\(pdp\)", depth=None)
