"""The data path end to end: real Envoy, the real Enforcer, real MCP servers, client and issuers.

What an allowed call and a denied call look like to the MCP client and to the server, and how
each HTTP method and route is decided.
"""

from __future__ import annotations

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from callwarden.demo.agent import ToolCall, run_agent
from callwarden.extauthz.decide import DECISION_HEADER
from tests.support.datapath import (
    ALLOW_RULE,
    ALLOWED_CALLS,
    DENIED_CALL,
    DENY_RULE,
    DataPath,
    running_datapath,
    tools_call,
)

pytestmark = pytest.mark.integration

datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)

FINANCE_CHALLENGE = (
    'Bearer resource_metadata="https://finance.board.example/.well-known/oauth-protected-resource/mcp"'
)


# --- allowed and denied tools/call ------------------------------------------------------


def test_an_allowed_call_returns_the_tool_result_to_the_mcp_client(datapath: DataPath) -> None:
    tool, arguments = ALLOWED_CALLS["finance"]
    run = run_agent(
        datapath.url, datapath.token("finance"), [ToolCall(tool, arguments)], host=datapath.host("finance")
    )
    (outcome,) = run.calls()
    assert outcome.status == "allowed"
    assert outcome.result_text is not None and '"entity": "example-corp"' in outcome.result_text


def test_an_allowed_call_reaches_the_server_stamped_with_its_decision_id(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    response = datapath.post(
        "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance")
    )
    assert response.status_code == 200
    assert datapath.executed("finance") == before + 1
    stamped = datapath.servers.ledgers["finance"].calls()[-1].decision_id
    assert stamped is not None
    line = datapath.decision(stamped)
    assert (line["decision"], line["reasons"]) == ("allow", [ALLOW_RULE])


def test_a_client_sent_decision_id_is_replaced_before_the_server_sees_it(datapath: DataPath) -> None:
    forged = {DECISION_HEADER: "forged-by-the-client"}
    datapath.post(
        "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance"), headers=forged
    )
    stamped = datapath.servers.ledgers["finance"].calls()[-1].decision_id
    assert stamped is not None and stamped != "forged-by-the-client"
    assert datapath.decision(stamped)["decision"] == "allow"


@pytest.mark.parametrize(
    "request_id",
    [7, 0, 2**53 - 1, "call-7", "7", ""],
    ids=["int", "zero", "max-int", "str", "digit-str", "empty-str"],
)
def test_a_denied_call_answers_32001_with_the_request_id_unchanged(
    datapath: DataPath, request_id: int | str
) -> None:
    response = datapath.post(
        "finance", tools_call(*DENIED_CALL, id=request_id), token=datapath.token("finance")
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == request_id and type(answer["id"]) is type(request_id)
    assert answer["error"]["code"] == -32001
    assert DENY_RULE in answer["error"]["message"]


def test_a_denied_call_never_executes_on_the_server(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    datapath.post("finance", tools_call(*DENIED_CALL), token=datapath.token("finance"))
    assert datapath.executed("finance") == before


def test_a_denied_response_carries_the_decision_id_of_its_log_line(datapath: DataPath) -> None:
    response = datapath.post("finance", tools_call(*DENIED_CALL), token=datapath.token("finance"))
    line = datapath.decision(response.headers[DECISION_HEADER])
    assert (line["decision"], line["code"], line["reasons"]) == ("deny", -32001, [DENY_RULE])


def test_the_mcp_client_sees_a_denial_as_error_32001_with_its_decision_id(datapath: DataPath) -> None:
    run = run_agent(
        datapath.url, datapath.token("finance"), [ToolCall(*DENIED_CALL)], host=datapath.host("finance")
    )
    (outcome,) = run.calls()
    assert (outcome.status, outcome.error_code) == ("denied", -32001)
    assert outcome.decision_id is not None
    assert datapath.decision(outcome.decision_id)["reasons"] == [DENY_RULE]


# --- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["finance", "documents", "workflow"])
def test_each_host_is_decided_by_its_own_mcp_server(datapath: DataPath, name: str) -> None:
    before = datapath.executed(name)
    response = datapath.post(name, tools_call(*ALLOWED_CALLS[name]), token=datapath.token(name))
    assert datapath.decision_of(response)["server"] == f"board-packet/{name}"
    assert datapath.executed(name) == before + 1


def test_a_path_no_route_claims_is_404_from_envoy_without_a_check(datapath: DataPath) -> None:
    lines = len(datapath.decisions())
    response = datapath.send("POST", "finance", tools_call(*ALLOWED_CALLS["finance"]), path="/other")
    assert response.status_code == 404
    assert len(datapath.decisions()) == lines


def test_a_host_no_route_claims_is_404(datapath: DataPath) -> None:
    response = datapath.send(
        "POST", "finance", tools_call(*ALLOWED_CALLS["finance"]), headers={"host": "payroll.board.example"}
    )
    assert response.status_code == 404


def _check_request(datapath: DataPath, *, host: str, mcp_server: str | None) -> CheckRequest:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "POST", host, "/mcp"
    http.headers["authorization"] = f"Bearer {datapath.token('documents')}"
    http.raw_body = tools_call(*ALLOWED_CALLS["documents"])
    if mcp_server is not None:
        request.attributes.context_extensions["mcp_server"] = mcp_server
    return request


@pytest.mark.parametrize("named", ["board-packet/documents", "documents"], ids=["key", "bare-name"])
def test_the_routes_context_extension_names_the_server_whatever_the_host(
    datapath: DataPath, named: str
) -> None:
    request = _check_request(datapath, host="finance.board.example", mcp_server=named)
    response = datapath.gateway.ext_authz.enforcer.check(request)
    assert response.HasField("ok_response")
    decision_id = response.ok_response.headers[0].header.value
    assert datapath.decision(decision_id)["server"] == "board-packet/documents"


def test_an_unknown_server_in_the_context_extension_is_404_not_a_host_fallback(datapath: DataPath) -> None:
    request = _check_request(datapath, host="documents.board.example", mcp_server="board-packet/payroll")
    response = datapath.gateway.ext_authz.enforcer.check(request)
    assert response.denied_response.status.code == 404
    decision_id = next(
        h.header.value for h in response.denied_response.headers if h.header.key == DECISION_HEADER
    )
    assert datapath.decision(decision_id)["reasons"] == ["no-route"]


def test_without_a_context_extension_the_host_and_path_route(datapath: DataPath) -> None:
    request = _check_request(datapath, host="documents.board.example:8080", mcp_server=None)
    response = datapath.gateway.ext_authz.enforcer.check(request)
    decision_id = response.ok_response.headers[0].header.value
    assert datapath.decision(decision_id)["server"] == "board-packet/documents"


# --- HTTP methods ------------------------------------------------------------------------


def test_get_opens_the_sse_stream_with_layer_1_only(datapath: DataPath) -> None:
    headers = {
        "host": datapath.host("finance"),
        "authorization": f"Bearer {datapath.token('finance')}",
        "accept": "text/event-stream",
    }
    with datapath.client.stream("GET", datapath.url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")  # the server's stream
        line = datapath.decision_of(response)
    assert (line["decision"], line["http_method"], line["reasons"]) == ("allow", "GET", ["authenticated"])


def test_delete_reaches_the_server_with_layer_1_only(datapath: DataPath) -> None:
    response = datapath.send("DELETE", "finance", token=datapath.token("finance"))
    # The stateless demo server has no session to end: its own answer proves the request got there.
    assert "Session termination not supported" in response.text
    line = datapath.decision_of(response)
    assert (line["decision"], line["http_method"], line["reasons"]) == ("allow", "DELETE", ["authenticated"])


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_without_a_token_are_401_with_the_challenge(datapath: DataPath, method: str) -> None:
    response = datapath.send(method, "finance")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == FINANCE_CHALLENGE


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_other_http_methods_are_405(datapath: DataPath, method: str) -> None:
    response = datapath.send(
        method, "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance")
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, DELETE"
    assert datapath.decision_of(response)["reasons"] == ["http-method"]


def test_a_put_never_executes_on_the_server(datapath: DataPath) -> None:
    before = datapath.executed("finance")
    datapath.send("PUT", "finance", tools_call(*ALLOWED_CALLS["finance"]), token=datapath.token("finance"))
    assert datapath.executed("finance") == before
