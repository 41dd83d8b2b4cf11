"""The ext_proc foundation: body hooks for particular JSON-RPC methods, behind real Envoy.

ext_authz marks an allowed request whose method has a hook; Envoy runs the ext_proc filter only
for marked requests; the hook rewrites the request body, the response body, or refuses. The hooks
here are test hooks on `ping` (a method every MCP server answers), so the foundation is shown
without any feature built on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from callwarden.demo.servers import TOOLS
from callwarden.extauthz.envoy import EXT_PROC_FILTER, EnvoyProcess, render_bootstrap
from callwarden.extauthz.extproc import HOOK_HEADER, Exchange, HookFailure, Hooks
from tests.support.datapath import ALLOWED_CALLS, DataPath, jsonrpc, start_datapath, tools_call
from tests.support.envoy import envoy_counter, start_envoy

pytestmark = pytest.mark.integration

STREAMS_STARTED = "http.callwarden.ext_proc.streams_started"


@dataclass
class RewritingHook:
    """On `ping`: the request becomes `tools/list` when asked to, the response is recorded and
    replaced by one naming what the hook saw."""

    name: str = "test-ping"
    methods: frozenset[str] = frozenset({"ping"})
    wants_request_body: bool = True
    wants_response_body: bool = True
    into_tools_list: bool = False
    seen: list[bytes] = field(default_factory=list)

    def request_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        if not self.into_tools_list:
            return None
        return orjson.dumps({**orjson.loads(body), "method": "tools/list"})

    def response_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        self.seen.append(body)
        result = {
            "hook": self.name,
            "subject": exchange.claims["sub"],
            "upstream_status": exchange.response_status,
        }
        return orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": result})


@dataclass
class FailingHook(RewritingHook):
    name: str = "test-failing"

    def response_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        raise HookFailure("the test hook refuses", request_id=1)


HOOK = RewritingHook()


@pytest.fixture(scope="module")
def datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("extproc"), hooks=[HOOK]) as running:
        yield running


def streams(datapath: DataPath) -> int:
    return envoy_counter(datapath.gateway.envoy, STREAMS_STARTED)


def test_a_hooked_method_answers_with_the_body_its_hook_wrote(datapath: DataPath) -> None:
    response = datapath.post("finance", jsonrpc("ping"), token=datapath.token("finance", sub="alice"))
    assert response.status_code == 200
    assert response.json()["result"] == {"hook": "test-ping", "subject": "alice", "upstream_status": 200}
    assert orjson.loads(HOOK.seen[-1]) == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_a_hook_can_replace_the_request_the_server_receives(datapath: DataPath) -> None:
    HOOK.into_tools_list = True
    try:
        datapath.post("finance", jsonrpc("ping"), token=datapath.token("finance"))
    finally:
        HOOK.into_tools_list = False
    assert [tool["name"] for tool in orjson.loads(HOOK.seen[-1])["result"]["tools"]] == list(TOOLS["finance"])


def test_a_plain_tools_call_opens_no_ext_proc_stream(datapath: DataPath) -> None:
    before = streams(datapath)
    response = datapath.post(
        "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance")
    )
    assert response.status_code == 200 and "result" in response.json()
    assert streams(datapath) == before


def test_a_client_sent_hook_header_engages_no_hook(datapath: DataPath) -> None:
    before = streams(datapath)
    forged = {HOOK_HEADER: "test-ping board-packet/finance"}
    response = datapath.post(
        "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance"), headers=forged
    )
    assert "result" in response.json()
    assert streams(datapath) == before


def test_a_hooked_request_the_policy_denies_never_reaches_its_hook(datapath: DataPath) -> None:
    before, seen = streams(datapath), len(HOOK.seen)
    response = datapath.post("finance", jsonrpc("ping"))  # no token: 401 from ext_authz
    assert response.status_code == 401
    assert (streams(datapath), len(HOOK.seen)) == (before, seen)


def test_a_hook_that_refuses_answers_a_json_rpc_error_instead_of_the_body(tmp_path: Path) -> None:
    with start_datapath(tmp_path, hooks=[FailingHook()]) as datapath:
        response = datapath.post("finance", jsonrpc("ping"), token=datapath.token("finance"))
    assert response.status_code == 200
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32603, "message": "the test hook refuses"},
    }


def test_two_hooks_cannot_claim_the_same_method() -> None:
    with pytest.raises(ValueError, match="both claim ping"):
        Hooks([RewritingHook(), RewritingHook(name="other")])


def test_a_hook_name_outside_the_mark_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="not \\[a-z0-9-\\]\\+"):
        Hooks([RewritingHook(name="two words")])


def test_a_batch_engaging_two_hooks_is_refused() -> None:
    hooks = Hooks([RewritingHook(), RewritingHook(name="other", methods=frozenset({"tools/list"}))])
    with pytest.raises(ValueError, match="several response hooks"):
        hooks.for_methods(["ping", "tools/list"])


# --- other wirings, against the default hooks (tools-list) ------------------------------------


@contextmanager
def second_envoy(
    datapath: DataPath, workdir: Path, ext_proc: str, *, matcher: bool = True
) -> Iterator[EnvoyProcess]:
    """Another Envoy in front of the same ext_authz + ext_proc server, wired differently."""
    servers = [compiled.server for compiled in datapath.bundle.servers.values()]
    bootstrap = render_bootstrap(servers, ext_authz=datapath.gateway.ext_authz.address, ext_proc=ext_proc)
    if not matcher:  # the bare filter, as Envoy Gateway's EnvoyExtensionPolicy installs it
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [
            f["typed_config"]["extension_config"] if f["name"] == EXT_PROC_FILTER else f
            for f in hcm["http_filters"]
        ]
    with start_envoy(bootstrap, workdir) as envoy:
        yield envoy


def post(
    envoy: EnvoyProcess, datapath: DataPath, body: bytes, roles: tuple[str, ...] = ("analyst",)
) -> httpx2.Response:
    headers = {
        "host": datapath.host("finance"),
        "authorization": f"Bearer {datapath.token('finance', roles=roles)}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
    }
    return httpx2.post(envoy.url + "/mcp", content=body, headers=headers, timeout=10, trust_env=False)


@pytest.fixture(scope="module")
def default_hooks_datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("extproc-default")) as running:
        yield running


def test_an_unreachable_ext_proc_fails_hooked_requests_closed_and_nothing_else(
    default_hooks_datapath: DataPath, tmp_path: Path
) -> None:
    with second_envoy(default_hooks_datapath, tmp_path, ext_proc="127.0.0.1:1") as envoy:
        listed = post(envoy, default_hooks_datapath, jsonrpc("tools/list"))
        called = post(envoy, default_hooks_datapath, tools_call(*ALLOWED_CALLS["finance"]))
    assert listed.status_code == 500 and b"query_financials" not in listed.content
    assert called.status_code == 200 and "result" in called.json()


def test_without_the_matcher_every_request_opens_a_stream_and_only_marked_ones_are_hooked(
    default_hooks_datapath: DataPath, tmp_path: Path
) -> None:
    address = default_hooks_datapath.gateway.ext_authz.address
    with second_envoy(default_hooks_datapath, tmp_path, ext_proc=address, matcher=False) as envoy:
        called = post(envoy, default_hooks_datapath, tools_call(*ALLOWED_CALLS["finance"]))
        listed: Any = post(envoy, default_hooks_datapath, jsonrpc("tools/list"), roles=("intern",)).json()
        opened = envoy_counter(envoy, STREAMS_STARTED)
    assert "result" in called.json()
    assert listed["result"]["tools"] == []
    assert opened == 2
