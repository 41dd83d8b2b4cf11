"""What every approval store must do, whatever its backend: imported by one test module per backend,
each of which provides the `store` fixture (an `ApprovalRecords`) and the `namespace` it may use."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from callwarden.policy import approval as ap
from callwarden.policy.canonical import argument_digest, binding_hash
from callwarden.stores.approvals import ApprovalRecords

REQUEST = {
    "subject": {"type": "identity", "id": "alice@example.com"},
    "resource": {"type": "account", "id": "acct-991"},
    "action": {"name": "transfer"},
    "context": {"agent": "board-agent"},
}


def new_record(
    namespace: str, *, subject: str = "alice@example.com", amount: int = 50000
) -> ap.AccessRequestRecord:
    now = datetime.now(UTC)
    arguments = {"to": "acct-991", "amount": amount}
    return ap.AccessRequestRecord(
        id=ap.new_task_id(),
        namespace=namespace,
        server=f"{namespace}/finance",
        tool="transfer_funds",
        arguments_digest=argument_digest(arguments),
        call={"name": "transfer_funds", "arguments": arguments},
        subject={**REQUEST["subject"], "id": subject},
        resource=REQUEST["resource"],
        action=REQUEST["action"],
        context=REQUEST["context"],
        binding_hash=binding_hash(REQUEST),
        revision="rev-1",
        agent="board-agent",
        actors=({"sub": "board-agent"},),
        created_at=ap.format_time(now),
        expires_at=ap.format_time(now + timedelta(hours=1)),
    )


def test_a_created_record_reads_back_equal_with_a_version(store: ApprovalRecords, namespace: str) -> None:
    created = store.create(new_record(namespace))
    assert created.version is not None
    assert store.get(namespace, created.id) == created
    assert store.get(namespace, "ar-00000000000000000000000000000000") is None


def test_creating_the_same_id_twice_conflicts(store: ApprovalRecords, namespace: str) -> None:
    record = store.create(new_record(namespace))
    with pytest.raises(ap.StoreConflict):
        store.create(record)


def test_a_transition_on_a_stale_version_conflicts(store: ApprovalRecords, namespace: str) -> None:
    created = store.create(new_record(namespace))
    now = datetime.now(UTC)
    store.replace(ap.approve(created, "carol", now))
    with pytest.raises(ap.StoreConflict):
        store.replace(ap.deny(created, "dave", now))
    assert store.get(namespace, created.id).state == "approved"  # type: ignore[union-attr]


def test_of_many_concurrent_claims_exactly_one_wins(store: ApprovalRecords, namespace: str) -> None:
    created = store.create(new_record(namespace))
    ap.transition(store, namespace, created.id, lambda r: ap.approve(r, "carol", datetime.now(UTC)))
    winners: list[str] = []
    losers: list[str] = []

    def contend(name: str) -> None:
        try:
            ap.transition(store, namespace, created.id, lambda r: ap.claim(r, datetime.now(UTC)))
            winners.append(name)
        except (ap.InvalidTransition, ap.StoreConflict):
            losers.append(name)

    threads = [threading.Thread(target=contend, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == 5


def test_records_are_found_by_subject(store: ApprovalRecords, namespace: str) -> None:
    first = store.create(new_record(namespace, subject="erin"))
    other_amount = store.create(new_record(namespace, subject="erin", amount=1))
    store.create(new_record(namespace, subject="frank"))
    assert {r.id for r in store.for_subject(namespace, "erin")} == {first.id, other_amount.id}


def test_a_finished_result_is_stored_with_the_record(store: ApprovalRecords, namespace: str) -> None:
    created = store.create(new_record(namespace))
    now = datetime.now(UTC)
    claimed = store.replace(ap.claim(store.replace(ap.approve(created, "carol", now)), now))
    result = {"content": [{"type": "text", "text": "done"}], "isError": False}
    store.replace(ap.finish(claimed, result, "approved-executed"))
    stored = store.get(namespace, created.id)
    assert stored is not None
    assert (stored.execution, stored.result, stored.disposition) == ("executed", result, "approved-executed")


def test_a_record_is_deleted_only_on_the_version_read(store: ApprovalRecords, namespace: str) -> None:
    created = store.create(new_record(namespace))
    moved = store.replace(ap.deny(created, "carol", datetime.now(UTC)))
    with pytest.raises(ap.StoreConflict):
        store.delete(created)
    store.delete(moved)
    assert store.get(namespace, created.id) is None
    assert created.id not in {r.id for r in store.for_subject(namespace, created.subject_id)}
