"""The ext_proc foundation: body hooks for particular JSON-RPC methods, behind real Envoy.

ext_authz marks an allowed request whose method has a hook; Envoy runs the ext_proc filter only
for marked requests; the hook rewrites the request body, the response body, or refuses. The hooks
here are test hooks on `ping` (a method every MCP server answers), so the foundation is shown
without any feature built on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from callwarden.demo.servers import TOOLS
from callwarden.extauthz.extproc import HOOK_HEADER, Exchange, HookFailure, Hooks
from tests.support.datapath import ALLOWED_CALLS, DataPath, jsonrpc, start_datapath, tools_call
from tests.support.envoy import envoy_counter

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
    forged = {HOOK_HEADER: "test-ping"}
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


def test_a_batch_engaging_two_hooks_is_refused() -> None:
    hooks = Hooks([RewritingHook(), RewritingHook(name="other", methods=frozenset({"tools/list"}))])
    with pytest.raises(ValueError, match="several response hooks"):
        hooks.for_methods(["ping", "tools/list"])
