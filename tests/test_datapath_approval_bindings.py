"""An approval covers exactly one call: every change to it ends not executed, or executed exactly once.

Real Envoy (ext_authz + ext_proc), the real finance MCP server, real tokens from the demo issuer;
each case makes its own held call, approves it, then does what the case says.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callwarden.extauthz.tasks import DISPOSITION_META
from callwarden.policy import approval as ap
from callwarden.policy.model import ToolPolicy
from callwarden.stores.approvals import ApprovalRecords
from tests.support.datapath import DataPath, jsonrpc, running_approvals_datapath
from tests.test_datapath_approvals import NAMESPACE, TASKS_META, approve, call, get_task, transfer, transfers

pytestmark = pytest.mark.integration

Case = Callable[[DataPath, ApprovalRecords, str], dict[str, Any]]


datapath = pytest.fixture(scope="module", name="datapath")(running_approvals_datapath)


@pytest.fixture(scope="module")
def store(datapath: DataPath) -> ApprovalRecords:
    assert datapath.approvals is not None and isinstance(datapath.approvals.store, ApprovalRecords)
    # Every case here asks as alice: more held calls than one subject may open by default.
    datapath.approvals.settings = dataclasses.replace(datapath.approvals.settings, max_submissions=1000)
    return datapath.approvals.store


_amounts = iter(range(100_000, 200_000, 17))


def held(datapath: DataPath, *, tasks: bool = True) -> tuple[str, int]:
    """A fresh held transfer (distinct amount): its task id and amount."""
    amount = next(_amounts)
    answer = call(datapath, transfer(amount, tasks=tasks))["result"]
    task_id = (
        answer["taskId"]
        if tasks
        else answer["_meta"]["io.modelcontextprotocol/authorization"]["authorizationContextId"]
    )
    return task_id, amount


def approved(datapath: DataPath, store: ApprovalRecords) -> tuple[int, str]:
    """The server's transfer count before, and a fresh held transfer a reviewer approved."""
    before = transfers(datapath)
    task_id, _ = held(datapath)
    approve(store, task_id)
    return before, task_id


def assert_not_executed(result: dict[str, Any]) -> None:
    assert result["isError"] is True
    assert result["_meta"][DISPOSITION_META] == "denied-not-executed"
    assert "did not run" in result["content"][0]["text"]


def test_changed_arguments_are_a_new_request_and_the_approved_call_still_runs_once(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    task_id, amount = held(datapath, tasks=False)
    approve(store, task_id)
    changed = call(datapath, transfer(amount + 1, tasks=False))["result"]
    assert changed["isError"] is True and "reviewer" in changed["content"][0]["text"]
    assert transfers(datapath) == before
    ran = call(datapath, transfer(amount, tasks=False))["result"]
    assert ran.get("isError") is not True
    assert transfers(datapath) == before + 1


@pytest.mark.parametrize(
    "token",
    [
        pytest.param({"sub": "bob"}, id="another-subject"),
        pytest.param({"client_id": "other-agent"}, id="another-agent"),
    ],
)
def test_another_user_or_agent_cannot_see_or_complete_the_task(
    datapath: DataPath, store: ApprovalRecords, token: dict[str, Any]
) -> None:
    before, task_id = approved(datapath, store)
    for method in ("tasks/get", "tasks/cancel"):
        answer = get_task(datapath, task_id, datapath.token("finance", **token), method=method)
        assert answer["error"] == {"code": -32602, "message": "Failed to retrieve task: Task not found"}
    assert transfers(datapath) == before
    assert get_task(datapath, task_id)["result"]["status"] == "completed"  # the requester still can
    assert transfers(datapath) == before + 1


def test_an_approval_that_expired_before_the_get_is_not_executed(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    task_id, _ = held(datapath)
    now = datetime.now(UTC)
    ap.transition(
        store, NAMESPACE, task_id, lambda r: ap.approve(r, "carol", now, now + timedelta(seconds=1))
    )
    time.sleep(1.5)
    completed = get_task(datapath, task_id)["result"]
    assert completed["status"] == "completed"
    assert_not_executed(completed["result"])
    assert transfers(datapath) == before


def test_an_offboarded_user_s_approved_call_is_not_executed(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before, task_id = approved(datapath, store)
    completed = get_task(datapath, task_id, datapath.token("finance", roles=()))["result"]
    assert_not_executed(completed["result"])
    assert transfers(datapath) == before
    assert_not_executed(get_task(datapath, task_id)["result"]["result"])  # final, even with the old roles
    assert transfers(datapath) == before


def test_a_policy_that_now_denies_wins_over_the_approval(datapath: DataPath, store: ApprovalRecords) -> None:
    before, task_id = approved(datapath, store)
    assert datapath.config is not None
    freeze = ToolPolicy.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "ToolPolicy",
            "metadata": {"name": "freeze", "namespace": NAMESPACE},
            "spec": {
                "targets": ["finance"],
                "rules": [{"name": "no-transfers", "tools": ["transfer_funds"], "effect": "Deny"}],
            },
        }
    )
    original = datapath.config
    datapath.recompile(dataclasses.replace(original, policies={**original.policies, freeze.key: freeze}))
    try:
        completed = get_task(datapath, task_id)["result"]
    finally:
        datapath.recompile(original)
    assert_not_executed(completed["result"])
    assert transfers(datapath) == before


def test_cancel_after_approval_but_before_execution_means_it_never_runs(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before, task_id = approved(datapath, store)
    cancelled = get_task(datapath, task_id, method="tasks/cancel")["result"]
    assert cancelled["status"] == "cancelled"
    assert get_task(datapath, task_id)["result"]["status"] == "cancelled"
    assert transfers(datapath) == before


def test_cancel_after_execution_is_refused_and_the_result_stands(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before, task_id = approved(datapath, store)
    result = get_task(datapath, task_id)["result"]["result"]
    refused = get_task(datapath, task_id, method="tasks/cancel")
    assert refused["error"]["code"] == -32602
    assert "cannot be cancelled" in refused["error"]["message"]
    assert get_task(datapath, task_id)["result"]["result"] == result
    assert transfers(datapath) == before + 1


def test_a_denied_request_completes_as_not_executed(datapath: DataPath, store: ApprovalRecords) -> None:
    before = transfers(datapath)
    task_id, _ = held(datapath)
    ap.transition(store, NAMESPACE, task_id, lambda r: ap.deny(r, "carol", datetime.now(UTC)))
    completed = get_task(datapath, task_id)["result"]
    assert completed["status"] == "completed"
    assert_not_executed(completed["result"])
    assert transfers(datapath) == before


@pytest.mark.parametrize(
    "task_id",
    [
        "ar-" + "0" * 32,
        "ar-" + "A" * 32,
        "ar-" + "0" * 31,
        "../etc",
        "",
        7,
        None,
        ["ar-x"],
        "ar-" + "0" * 32 + "\u200b",
    ],
    ids=["unknown", "uppercase", "short", "path", "empty", "number", "null", "array", "zero-width"],
)
def test_hostile_task_ids_are_unknown_tasks_or_ordinary_denials(datapath: DataPath, task_id: Any) -> None:
    before = transfers(datapath)
    answer = call(datapath, jsonrpc("tasks/get", {"taskId": task_id}, id=9))
    assert answer["id"] == 9
    assert answer["error"]["code"] in (-32602, -32001)  # ours: not found; anything else: an unknown method
    assert transfers(datapath) == before


def test_submissions_are_rate_limited_per_subject_with_a_non_requestable_denial(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    assert datapath.approvals is not None
    token = datapath.token("finance", sub="mallory")
    generous = datapath.approvals.settings
    datapath.approvals.settings = dataclasses.replace(generous, max_submissions=3)
    try:
        for _ in range(3):
            assert call(datapath, transfer(next(_amounts)), token)["result"]["status"] == "working"
        refused = call(datapath, transfer(next(_amounts)), token)["result"]
    finally:
        datapath.approvals.settings = generous
    assert refused["isError"] is True
    assert refused["_meta"]["io.modelcontextprotocol/authorization"]["remediation"] == "unavailable"


def _call(arguments: Any, meta: Any = None, *, id: Any = 31) -> bytes:
    params: dict[str, Any] = {"name": "transfer_funds", "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return jsonrpc("tools/call", params, id=id)


HOSTILE_CALLS: list[Any] = [
    (
        "capability-a-string",
        _call({"to": "h1", "amount": 60_000}, {"io.modelcontextprotocol/clientCapabilities": "tasks"}),
        "held",
    ),
    (
        "tasks-a-list",
        _call(
            {"to": "h2", "amount": 60_000},
            {
                "io.modelcontextprotocol/clientCapabilities": {
                    "extensions": {"io.modelcontextprotocol/tasks": []}
                }
            },
        ),
        "held",
    ),
    (
        "extensions-null",
        _call(
            {"to": "h3", "amount": 60_000},
            {"io.modelcontextprotocol/clientCapabilities": {"extensions": None}},
        ),
        "held",
    ),
    ("meta-a-list", _call({"to": "h4", "amount": 60_000}, ["tasks"]), "held"),
    ("rtl-override-account", _call({"to": "acct\u202e199", "amount": 60_000}, TASKS_META), "task"),
    ("amount-beyond-2^53", _call({"to": "h5", "amount": 2**60}), "denied"),
    ("amount-a-string", _call({"to": "h6", "amount": "60000"}), "held"),  # CEL double() reads it
    (
        "positional-params",
        json.dumps(
            {"jsonrpc": "2.0", "id": 31, "method": "tools/call", "params": ["transfer_funds", {"to": "h7"}]}
        ).encode(),
        "denied",
    ),
    (
        "in-a-batch",
        b"[" + _call({"to": "h8", "amount": 60_000}) + b"," + jsonrpc("ping", id=32) + b"]",
        "denied",
    ),
    (
        "duplicate-keys",
        b'{"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"transfer_funds","arguments":{"to":"h9","amount":1,"amount":60000}}}',
        "rejected",
    ),
]


@pytest.mark.parametrize("case", HOSTILE_CALLS, ids=[c[0] for c in HOSTILE_CALLS])
def test_hostile_held_calls_never_run_and_never_crash(
    datapath: DataPath, store: ApprovalRecords, case: Any
) -> None:
    _, body, expected = case
    before, records = transfers(datapath), len(store.all())
    response = datapath.post("finance", body, token=datapath.token("finance", sub=f"hostile-{case[0]}"))
    assert response.status_code == 200
    answer = response.json()
    if expected == "task":
        assert answer["result"]["status"] == "working"
    elif expected == "held":  # capabilities that are not the extension's shape: the no-tasks answer
        assert answer["result"]["isError"] is True and "reviewer" in answer["result"]["content"][0]["text"]
    else:
        first = answer[0] if isinstance(answer, list) else answer
        assert first["error"]["code"] in (-32001, -32600, -32602, -32700)
        assert len(store.all()) == records  # a plain denial opens no access request
    assert transfers(datapath) == before


def test_a_call_claimed_by_a_replica_that_died_fails_and_is_never_run_again(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    assert datapath.approvals is not None
    before, task_id = approved(datapath, store)
    # The other replica claimed the call and went away before any result came back.
    ap.transition(store, NAMESPACE, task_id, lambda r: ap.claim(r, datetime.now(UTC)))
    assert get_task(datapath, task_id)["result"]["status"] == "working"
    patient = datapath.approvals.settings
    datapath.approvals.settings = dataclasses.replace(patient, completion_patience=timedelta(0))
    try:
        failed = get_task(datapath, task_id)["result"]
    finally:
        datapath.approvals.settings = patient
    assert (failed["status"], failed["error"]["code"]) == ("failed", -32603)
    assert get_task(datapath, task_id)["result"]["status"] == "failed"
    assert transfers(datapath) == before


# A reviewer may also edit the status with kubectl (whoever may update accessrequests/status can):
# whatever it says, only a well-formed approval of exactly this call ever runs it, and once.
HOSTILE_STATUSES: list[Any] = [
    ("approved-without-times", {"state": "approved", "execution": "none"}),
    (
        "approved-until-garbage",
        {"state": "approved", "execution": "none", "decidedAt": "x", "approvedUntil": "soon"},
    ),
    (
        "approved-in-the-past",
        {
            "state": "approved",
            "execution": "none",
            "decidedAt": "2020-01-01T00:00:00Z",
            "approvedUntil": "2020-01-02T00:00:00Z",
        },
    ),
    ("state-with-a-space", {"state": "approved ", "execution": "none"}),
    ("state-uppercase", {"state": "APPROVED", "execution": "none"}),
    ("executed-without-result", {"state": "approved", "execution": "executed"}),
    ("state-a-number", {"state": 1, "execution": "none"}),
    ("claimed-at-garbage", {"state": "approved", "execution": "claimed", "claimedAt": "soon"}),
    ("no-status", None),
]


@pytest.mark.parametrize("case", HOSTILE_STATUSES, ids=[c[0] for c in HOSTILE_STATUSES])
def test_a_hand_edited_status_never_runs_the_call(
    datapath: DataPath, store: ApprovalRecords, case: Any
) -> None:
    before = transfers(datapath)
    task_id, _ = held(datapath)
    stored = store.documents.get("accessrequests", NAMESPACE, task_id)
    assert stored is not None
    store.documents.replace_status("accessrequests", {**stored, "status": case[1]})
    for _ in range(2):
        response = datapath.post(
            "finance", jsonrpc("tasks/get", {"taskId": task_id}, id=5), token=datapath.token("finance")
        )
        assert response.status_code == 200
        answer = response.json()
        assert "result" in answer or answer["error"]["code"] in (-32602, -32603)
    assert transfers(datapath) == before


def test_an_expired_token_never_completes_a_task_and_a_current_one_then_does(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    before, task_id = approved(datapath, store)
    expired = datapath.token("finance", ttl=-120)
    refused = datapath.post("finance", jsonrpc("tasks/get", {"taskId": task_id}, id=3), token=expired)
    assert refused.status_code == 401
    assert transfers(datapath) == before
    assert get_task(datapath, task_id)["result"]["status"] == "completed"
    assert transfers(datapath) == before + 1


def test_an_approval_a_mapping_copies_from_the_arguments_never_runs_another_call(
    datapath: DataPath, store: ApprovalRecords
) -> None:
    """A careless mapping that lets the caller write `context.approval`: the PDP may accept the
    approval (it binds what the mapping put in the request), but the call it would run must be
    exactly the approved one, and it is not."""
    assert datapath.config is not None
    original = datapath.config
    finance = original.servers[f"{NAMESPACE}/finance"]
    tools = []
    for tool in finance.spec.tools:
        if tool.name == "transfer_funds" and tool.mapping is not None:
            evaluation = tool.mapping["evaluation"]
            context = {**evaluation["context"], "approval": "$params.arguments.?approval"}
            tools.append(
                tool.model_copy(update={"mapping": {"evaluation": {**evaluation, "context": context}}})
            )
        else:
            tools.append(tool)
    leaky = finance.model_copy(update={"spec": finance.spec.model_copy(update={"tools": tools})})
    datapath.recompile(dataclasses.replace(original, servers={**original.servers, leaky.key: leaky}))
    try:
        before = transfers(datapath)
        task_id, amount = held(datapath, tasks=False)
        approve(store, task_id)
        record = store.get(NAMESPACE, task_id)
        assert record is not None
        smuggled = {"to": "acct-991", "amount": amount, "approval": record.approval()}
        body = jsonrpc("tools/call", {"name": "transfer_funds", "arguments": smuggled})
        response = datapath.post("finance", body, token=datapath.token("finance"))
        assert response.json()["error"]["code"] == -32001
        # The PDP did accept the approval; the desk refused to run a call other than the approved one.
        assert datapath.decision_of(response)["reasons"] == ["approval:already-used"]
        assert transfers(datapath) == before
    finally:
        datapath.recompile(original)
