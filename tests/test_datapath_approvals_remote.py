"""A remote PDP's requestable denial, honoured on the data path (real Envoy, MCP server, HTTP PDP).

The finance server is decided by a remote AuthZEN PDP that is an ARAP ARS (`callwarden pdp`'s
API with its own store and key). A held transfer is submitted to that ARS with the denial echoed;
the task stays `working` while the ARS says pending; once the ARS approves, the next `tasks/get`
re-evaluates at the remote PDP with the ARS's approval unchanged at `context.approval` and runs
the call once. A requestable denial whose ARS cannot take the request stays a plain denial:
`context.access_request` alone never permits anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callwarden.authzen.access_requests import AccessRequestServer
from callwarden.authzen.api import RunningPdp, start_pdp
from callwarden.authzen.client import RemotePdps
from callwarden.extauthz.jose import JwsSigner, load_signing_key
from callwarden.policy import approval as ap
from callwarden.policy.bundle import compile_bundle
from callwarden.policy.loader import load_config
from callwarden.policy.pdp import compile_pdp
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.support.datapath import DataPath, jsonrpc, start_datapath
from tests.test_datapath_approvals import call, get_task, transfer, transfers
from tests.test_remote_pdp import EXAMPLE, with_remote_pdps

pytestmark = pytest.mark.integration

ISSUER = "urn:callwarden:remote-ars"


@pytest.fixture(scope="module")
def remote_store(tmp_path_factory: pytest.TempPathFactory) -> ApprovalRecords:
    return ApprovalRecords(SqliteDocuments(tmp_path_factory.mktemp("remote") / "ars.db"))


@pytest.fixture(scope="module")
def remote_pdp(
    tmp_path_factory: pytest.TempPathFactory, remote_store: ApprovalRecords
) -> Iterator[RunningPdp]:
    signer = JwsSigner(load_signing_key(tmp_path_factory.mktemp("key") / "k.pem", create=True), ISSUER)
    policies = list(load_config([EXAMPLE]).policies.values())
    pdp = compile_pdp(policies, approvals=ap.BoundApprovals(remote_store, signer, audience=ISSUER))
    with start_pdp(
        pdp, listen="127.0.0.1:0", access=AccessRequestServer(remote_store, signer, ISSUER)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def datapath(tmp_path_factory: pytest.TempPathFactory, remote_pdp: RunningPdp) -> Iterator[DataPath]:
    local = ApprovalRecords(SqliteDocuments(tmp_path_factory.mktemp("local") / "approvals.db"))
    with (
        RemotePdps(failure_threshold=1000) as factory,
        start_datapath(tmp_path_factory.mktemp("dp"), remote_pdp=factory, approvals=local) as running,
    ):
        assert running.config is not None
        config = with_remote_pdps(running.config, {"finance": remote_pdp.base_url})
        running.bundle = compile_bundle(config, remote_pdp=factory, approvals=running.authority)
        running.gateway.ext_authz.swap(running.bundle)
        yield running


def remote_record(store: ApprovalRecords, amount: int) -> ap.AccessRequestRecord:
    [record] = [r for r in store.all() if r.resource.get("properties", {}).get("amount") == amount]
    return record


def test_the_remote_ars_holds_the_request_and_its_approval_runs_the_call_once(
    datapath: DataPath, remote_store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    task_id = call(datapath, transfer(55_000, to="acct-remote"))["result"]["taskId"]
    held = remote_record(remote_store, 55_000)  # submitted, denial echoed, binding token accepted
    assert held.state == "pending"
    assert get_task(datapath, task_id)["result"]["status"] == "working"
    now = datetime.now(UTC)
    ap.transition(
        remote_store,
        "default",
        held.id,
        lambda r: ap.approve(r, "remote-reviewer", now, now + timedelta(hours=1)),
    )
    completed = get_task(datapath, task_id)["result"]
    assert completed["status"] == "completed", completed
    assert completed["result"]["isError"] is False
    assert transfers(datapath) == before + 1
    assert get_task(datapath, task_id)["result"]["result"] == completed["result"]
    assert transfers(datapath) == before + 1


def test_a_remote_denial_ends_the_task_not_executed(
    datapath: DataPath, remote_store: ApprovalRecords
) -> None:
    before = transfers(datapath)
    task_id = call(datapath, transfer(56_000, to="acct-remote"))["result"]["taskId"]
    held = remote_record(remote_store, 56_000)
    ap.transition(
        remote_store, "default", held.id, lambda r: ap.deny(r, "remote-reviewer", datetime.now(UTC))
    )
    completed = get_task(datapath, task_id)["result"]
    assert completed["status"] == "completed"
    assert completed["result"]["isError"] is True
    assert transfers(datapath) == before


def test_a_requestable_denial_whose_ars_cannot_take_it_is_a_plain_denial(
    datapath: DataPath, remote_store: ApprovalRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callwarden.authzen.access_requests import AccessRequestServer as Ars

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the ARS is down")

    # A fault the real ARS cannot be asked to produce on cue: it fails (HTTP 500) on every submission.
    monkeypatch.setattr(Ars, "submit", refuse)
    before = transfers(datapath)
    answer = call(
        datapath,
        jsonrpc("tools/call", {"name": "transfer_funds", "arguments": {"to": "x", "amount": 57_000}}),
    )
    assert answer["error"]["code"] == -32001
    assert transfers(datapath) == before


def test_cancelling_the_task_cancels_the_request_at_the_remote_ars(
    datapath: DataPath, remote_store: ApprovalRecords
) -> None:
    task_id = call(datapath, transfer(58_000, to="acct-remote"))["result"]["taskId"]
    assert get_task(datapath, task_id, method="tasks/cancel")["result"]["status"] == "cancelled"
    assert remote_record(remote_store, 58_000).state == "cancelled"
