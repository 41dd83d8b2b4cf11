"""Held calls end to end: real Envoy (ext_authz + ext_proc), the real finance MCP server, real tokens.

A transfer over the threshold is held for a reviewer (RequireApproval). A client that declares
the SEP-2663 tasks extension gets a `working` task and nothing runs; after approval its next
`tasks/get` runs the bound call exactly once and returns the result as the completed task; later
`tasks/get` return the same stored result without running it again. A client without tasks gets
an `isError` result and, after approval, its identical retry runs once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callwarden.demo.agent import ToolCall, run_agent
from callwarden.extauthz.tasks import (
    AUTHORIZATION_META,
    CLIENT_CAPABILITIES,
    DISPOSITION_META,
    TASKS_EXTENSION,
)
from callwarden.policy import approval as ap
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.support.datapath import DataPath, jsonrpc, running_approvals_datapath, start_datapath

pytestmark = pytest.mark.integration

NAMESPACE = "board-packet"
TASKS_META = {CLIENT_CAPABILITIES: {"extensions": {TASKS_EXTENSION: {}}}}


datapath = pytest.fixture(scope="module", name="datapath")(running_approvals_datapath)


@pytest.fixture(scope="module")
def store(datapath: DataPath) -> ApprovalRecords:
    assert datapath.approvals is not None and isinstance(datapath.approvals.store, ApprovalRecords)
    return datapath.approvals.store


def transfer(amount: int, *, to: str = "acct-991", tasks: bool = True, id: int = 1) -> bytes:
    params: dict[str, Any] = {"name": "transfer_funds", "arguments": {"to": to, "amount": amount}}
    if tasks:
        params["_meta"] = TASKS_META
    return jsonrpc("tools/call", params, id=id)


def transfers(datapath: DataPath) -> int:
    return datapath.servers.ledgers["finance"].count("transfer_funds")


def call(datapath: DataPath, body: bytes, token: str | None = None) -> dict[str, Any]:
    response = datapath.post("finance", body, token=token or datapath.token("finance"))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def get_task(
    datapath: DataPath, task_id: str, token: str | None = None, method: str = "tasks/get"
) -> dict[str, Any]:
    return call(datapath, jsonrpc(method, {"taskId": task_id}, id=7), token)


def approve(store: ApprovalRecords, task_id: str, *, minutes: int = 30) -> None:
    now = datetime.now(UTC)
    ap.transition(
        store, NAMESPACE, task_id, lambda r: ap.approve(r, "carol", now, now + timedelta(minutes=minutes))
    )


def test_a_held_call_becomes_a_working_task_and_does_not_run(datapath: DataPath) -> None:
    before = transfers(datapath)
    answer = call(datapath, transfer(50_000, to="acct-100"))
    task = answer["result"]
    assert (task["resultType"], task["status"]) == ("task", "working")
    assert task["taskId"].startswith("ar-")
    assert task["_meta"][AUTHORIZATION_META]["remediation"] == "available"
    assert transfers(datapath) == before


def test_nothing_the_client_sees_carries_binding_material(datapath: DataPath) -> None:
    text = json.dumps(call(datapath, transfer(50_000, to="acct-101")))
    for secret in ("binding_token", "evaluation_id", "access_request", 'approval"', "/access/v1"):
        assert secret not in text


def test_after_approval_the_next_get_runs_the_call_exactly_once(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    task_id = call(datapath, transfer(60_000, to="acct-200"))["result"]["taskId"]
    assert get_task(datapath, task_id)["result"]["status"] == "working"
    approve(store, task_id)
    completed = get_task(datapath, task_id)["result"]
    assert (completed["resultType"], completed["status"]) == ("complete", "completed")
    result = completed["result"]
    assert result["isError"] is False
    assert result["_meta"][DISPOSITION_META] == "approved-executed"
    assert "60000 EUR to acct-200 completed" in result["content"][0]["text"]
    assert transfers(datapath) == before + 1
    again = get_task(datapath, task_id)["result"]
    assert again["result"] == result
    assert transfers(datapath) == before + 1


def test_identical_retries_while_pending_share_one_task(datapath: DataPath) -> None:
    first = call(datapath, transfer(70_000, to="acct-300"))["result"]["taskId"]
    second = call(datapath, transfer(70_000, to="acct-300"))["result"]["taskId"]
    other = call(datapath, transfer(70_001, to="acct-300"))["result"]["taskId"]
    assert first == second != other


def test_a_client_without_tasks_is_told_to_retry_and_the_identical_retry_runs_once(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    held = call(datapath, transfer(80_000, to="acct-400", tasks=False))["result"]
    assert held["isError"] is True
    assert "reviewer" in held["content"][0]["text"]
    envelope = held["_meta"][AUTHORIZATION_META]
    assert envelope["reason"] == "insufficient_authorization"
    approve(store, envelope["authorizationContextId"])
    ran = call(datapath, transfer(80_000, to="acct-400", tasks=False))["result"]
    assert ran.get("isError") is not True
    assert "80000 EUR to acct-400 completed" in ran["content"][0]["text"]
    assert transfers(datapath) == before + 1
    again = call(datapath, transfer(80_000, to="acct-400", tasks=False))["result"]
    assert again["isError"] is True  # a new request: an approval is used once
    assert transfers(datapath) == before + 1


def test_the_decision_log_records_each_held_call_with_its_access_request(datapath: DataPath) -> None:
    response = datapath.post("finance", transfer(90_000, to="acct-500"), token=datapath.token("finance"))
    line = datapath.decision_of(response)
    assert line["decision"] == "deny"
    assert line["reasons"] == ["approval:requested"]
    assert line["approval"]["id"] == response.json()["result"]["taskId"]
    assert line["approval"]["state"] == "pending"


def test_the_decision_log_line_of_a_completion_names_the_approver(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    task_id = call(datapath, transfer(91_000, to="acct-501"))["result"]["taskId"]
    approve(store, task_id)
    response = datapath.post(
        "finance", jsonrpc("tasks/get", {"taskId": task_id}, id=8), token=datapath.token("finance")
    )
    line = datapath.decision_of(response)
    assert (line["decision"], line["reasons"]) == ("allow", ["approval:completing"])
    assert line["approval"] == {
        "id": task_id,
        "state": "approved",
        "execution": "claimed",
        "approver": "carol",
    }


def test_the_official_mcp_client_without_tasks_is_held_then_its_identical_retry_runs_once(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    arguments = {"to": "acct-sdk", "amount": 95_000}
    url, token, host = datapath.url, datapath.token("finance"), datapath.host("finance")
    (held,) = run_agent(url, token, [ToolCall("transfer_funds", arguments)], host=host).calls()
    assert held.tool_error is True
    assert held.result_text is not None and "A reviewer must approve it" in held.result_text
    assert transfers(datapath) == before
    [record] = [r for r in store.all() if r.resource["id"] == "acct-sdk"]
    approve(store, record.id)
    (ran,) = run_agent(url, token, [ToolCall("transfer_funds", arguments)], host=host).calls()
    assert (ran.status, ran.tool_error) == ("allowed", False)
    assert ran.result_text is not None and "95000 EUR to acct-sdk completed" in ran.result_text
    assert transfers(datapath) == before + 1


def test_behind_the_http_ext_authz_transport_the_flow_is_the_same(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    store = ApprovalRecords(SqliteDocuments(tmp_path_factory.mktemp("http-store") / "approvals.db"))
    with start_datapath(tmp_path_factory.mktemp("http"), approvals=store, transport="http") as datapath:
        task = call(datapath, transfer(52_000, to="acct-http"))["result"]
        assert (task["resultType"], task["status"], transfers(datapath)) == ("task", "working", 0)
        approve(store, task["taskId"])
        completed = get_task(datapath, task["taskId"])["result"]
        assert (completed["status"], transfers(datapath)) == ("completed", 1)
        assert get_task(datapath, task["taskId"])["result"]["result"] == completed["result"]
        assert transfers(datapath) == 1
