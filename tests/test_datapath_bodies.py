"""Bodies through real Envoy: what the strict parse refuses, and that a refusal never reaches the server.

Every refused body is answered with a JSON-RPC error whose message leads with the specific reason,
and logged with the same reason; the MCP server never executes anything.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import pytest

from callwarden.extauthz.envoy import EnvoyProcess, render_bootstrap
from tests.support.datapath import (
    ALLOWED_CALLS,
    DENIED_CALL,
    DENY_RULE,
    DataPath,
    jsonrpc,
    running_datapath,
    tools_call,
)

pytestmark = pytest.mark.integration

datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)

ALLOWED = tools_call(*ALLOWED_CALLS["finance"])
NESTED_PAST_THE_BOUND = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query_financials","arguments":'
    + b'{"a":' * 70
    + b"1"
    + b"}" * 70
    + b"}}"
)

# (raw body, extra request headers, reason, JSON-RPC code)
BODIES: dict[str, tuple[bytes, dict[str, str], str, int]] = {
    "not-utf8": (ALLOWED.replace(b"example-corp", b"example-\xffcorp"), {}, "not-utf8", -32700),
    "utf8-byte-order-mark": (b"\xef\xbb\xbf" + ALLOWED, {}, "not-utf8", -32700),
    "two-json-values": (ALLOWED + b"\n" + tools_call(*DENIED_CALL), {}, "trailing-data", -32700),
    "truncated-json": (ALLOWED[:-3], {}, "not-json", -32700),
    "duplicate-method": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call",'
        b'"params":{"name":"query_financials","arguments":{"period":"2026-Q3","entity":"other-corp"}}}',
        {},
        "duplicate-member",
        -32700,
    ),
    "duplicate-tool-name": (
        ALLOWED.replace(
            b'"name": "query_financials"', b'"name": "query_financials", "name": "export_ledger"'
        ),
        {},
        "duplicate-member",
        -32700,
    ),
    "duplicate-argument-differing-in-case": (
        ALLOWED.replace(b'"entity": "example-corp"', b'"entity": "example-corp", "Entity": "other-corp"'),
        {},
        "duplicate-member",
        -32700,
    ),
    "nested-past-the-bound": (NESTED_PAST_THE_BOUND, {}, "too-deep", -32700),
    "jsonrpc-1.0": (ALLOWED.replace(b'"2.0"', b'"1.0"'), {}, "not-jsonrpc", -32600),
    "no-jsonrpc-member": (
        b'{"id":1,"method":"tools/call","params":{"name":"query_financials"}}',
        {},
        "not-jsonrpc",
        -32600,
    ),
    "gzip-content-encoding": (
        gzip.compress(ALLOWED),
        {"content-encoding": "gzip"},
        "content-encoding",
        -32600,
    ),
}


def _refusal(datapath: DataPath, case: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body, headers, _, _ = BODIES[case]
    response = datapath.post("finance", body, token=datapath.token("finance"), headers=headers)
    assert response.status_code == 200
    return response.json(), datapath.decision_of(response)


def test_the_allowed_body_itself_is_allowed(datapath: DataPath) -> None:
    response = datapath.post("finance", ALLOWED, token=datapath.token("finance"))
    assert "result" in response.json()


@pytest.mark.parametrize("case", BODIES)
def test_a_refused_body_is_a_jsonrpc_error_naming_the_reason(datapath: DataPath, case: str) -> None:
    _, _, reason, code = BODIES[case]
    answer, _ = _refusal(datapath, case)
    assert answer["error"]["code"] == code
    assert answer["error"]["message"].startswith(f"Request rejected: {reason}: ")


@pytest.mark.parametrize("case", BODIES)
def test_a_refused_body_is_logged_with_the_reason(datapath: DataPath, case: str) -> None:
    _, _, reason, code = BODIES[case]
    _, line = _refusal(datapath, case)
    assert (line["decision"], line["code"], line["reasons"]) == ("deny", code, [f"body:{reason}"])


@pytest.mark.parametrize("case", BODIES)
def test_a_refused_body_never_executes_on_the_server(datapath: DataPath, case: str) -> None:
    before = datapath.executed("finance")
    _refusal(datapath, case)
    assert datapath.executed("finance") == before


def test_a_body_over_the_limit_is_413_from_envoy_and_never_checked_or_forwarded(datapath: DataPath) -> None:
    lines, executed = len(datapath.decisions()), datapath.executed("finance")
    padded = ALLOWED.replace(b'"example-corp"', b'"example-corp", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"')
    response = datapath.post("finance", padded, token=datapath.token("finance"))
    assert response.status_code == 413
    assert len(datapath.decisions()) == lines
    assert datapath.executed("finance") == executed


def test_positional_params_are_denied(datapath: DataPath) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]}'
    response = datapath.post("finance", body, token=datapath.token("finance"))
    assert response.json()["error"]["code"] == -32001
    assert datapath.decision_of(response)["reasons"] == ["positional-params"]


# --- batches -----------------------------------------------------------------------------


def _smuggling_batch() -> bytes:
    return (
        b"["
        + b",".join([jsonrpc("ping", id=1), tools_call(*DENIED_CALL, id=2), jsonrpc("ping", id=3)])
        + b"]"
    )


def test_a_tools_call_smuggled_among_pings_denies_the_whole_batch(datapath: DataPath) -> None:
    response = datapath.post("finance", _smuggling_batch(), token=datapath.token("finance"))
    answers = response.json()
    assert [(a["id"], a["error"]["code"]) for a in answers] == [(1, -32001), (2, -32001), (3, -32001)]
    assert DENY_RULE in answers[1]["error"]["message"]
    assert answers[0]["error"]["message"].startswith("batch denied: ")


def test_a_smuggled_tools_call_is_logged_as_the_denied_tools_call(datapath: DataPath) -> None:
    response = datapath.post("finance", _smuggling_batch(), token=datapath.token("finance"))
    line = datapath.decision_of(response)
    assert (line["method"], line["tool"], line["decision"]) == ("tools/call", "query_financials", "deny")
    assert line["reasons"] == [DENY_RULE]
    assert [call["method"] for call in line["calls"]] == ["ping", "tools/call", "ping"]


def test_a_batch_line_attributes_each_authzen_request_to_its_call(datapath: DataPath) -> None:
    response = datapath.post("finance", _smuggling_batch(), token=datapath.token("finance"))
    line = datapath.decision_of(response)
    assert [call["request_count"] for call in line["calls"]] == [0, 1, 0]
    assert [request["resource"]["type"] for request in line["requests"]] == ["financials"]


def test_a_denied_batch_never_reaches_the_server(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    batch = b"[" + ALLOWED.replace(b'"id": 1', b'"id": 9') + b"," + _smuggling_batch()[1:]
    answers = datapath.post("finance", batch, token=datapath.token("finance")).json()
    assert all("error" in answer for answer in answers)  # even the allowed call in it is refused
    assert datapath.executed("finance") == before


# --- escapes -----------------------------------------------------------------------------


def _escaped(body: bytes) -> bytes:
    return body.replace(b'"tools/call"', b'"tools\\u002fcall"').replace(
        b'"query_financials"', b'"query\\u005ffinancials"'
    )


def test_a_unicode_escaped_method_is_decided_as_tools_call(datapath: DataPath) -> None:
    response = datapath.post("finance", _escaped(tools_call(*DENIED_CALL)), token=datapath.token("finance"))
    assert response.json()["error"]["code"] == -32001
    line = datapath.decision_of(response)
    assert (line["method"], line["tool"], line["reasons"]) == ("tools/call", "query_financials", [DENY_RULE])


def test_a_unicode_escaped_allowed_call_runs_as_the_call_decided(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    response = datapath.post("finance", _escaped(ALLOWED), token=datapath.token("finance"))
    assert "result" in response.json()
    assert datapath.servers.ledgers["finance"].calls()[before:][0].arguments["entity"] == "example-corp"


# --- a body Envoy forwards only in part ---------------------------------------------------


def _partial_bodies(bootstrap: dict[str, Any], max_request_bytes: int) -> dict[str, Any]:
    """The same gateway, but Envoy checks the first `max_request_bytes` of a larger body."""
    for virtual_host in bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"]:
        for route in virtual_host["routes"]:
            if "direct_response" in route:  # a metadata document: never checked
                continue
            for config in route["typed_per_filter_config"].values():
                config["check_settings"]["with_request_body"] = {
                    "max_request_bytes": max_request_bytes,
                    "allow_partial_message": True,
                    "pack_as_bytes": True,
                }
    return bootstrap


@pytest.fixture(scope="module")
def partial_envoy(datapath: DataPath, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    servers = [compiled.server for compiled in datapath.bundle.servers.values()]
    bootstrap = render_bootstrap(servers, ext_authz=datapath.gateway.ext_authz.address)
    with EnvoyProcess(_partial_bodies(bootstrap, 1024), tmp_path_factory.mktemp("partial-envoy")) as envoy:
        yield envoy


def test_a_body_envoy_marks_partial_is_denied(datapath: DataPath, partial_envoy: EnvoyProcess) -> None:
    before = datapath.executed("finance")
    body = tools_call(ALLOWED_CALLS["finance"][0], {**ALLOWED_CALLS["finance"][1], "note": "x" * 2048})
    headers = {
        "host": datapath.host("finance"),
        "authorization": f"Bearer {datapath.token('finance')}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
    }
    response = datapath.client.post(partial_envoy.url + "/mcp", content=body, headers=headers)
    assert response.json()["error"]["message"].startswith("Request rejected: partial-body: ")
    assert datapath.decision_of(response)["reasons"] == ["body:partial-body"]
    assert datapath.executed("finance") == before
