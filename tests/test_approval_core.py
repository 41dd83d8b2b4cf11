"""The pure core of approvals: canonical JSON, the ARAP binding, the record's state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callwarden.policy import approval as ap
from callwarden.policy.canonical import argument_digest, binding_hash, binding_set, structurally_equal
from tests.support.store_contract import new_record

NOW = datetime(2026, 6, 2, 10, 30, tzinfo=UTC)

REQUEST: dict[str, Any] = {
    "subject": {
        "type": "identity",
        "id": "alice",
        "properties": {"roles": ["analyst"], "act": {"sub": "agent"}},
    },
    "resource": {"type": "account", "id": "acct-991", "properties": {"amount": 50000}},
    "action": {"name": "transfer"},
    "context": {"agent": "board-agent", "mcp": {"server": "board-packet/finance", "tool": "transfer_funds"}},
}


def record(**changes: Any) -> ap.AccessRequestRecord:
    """A pending request created at NOW, waiting an hour."""
    created = {"created_at": ap.format_time(NOW), "expires_at": ap.format_time(NOW + timedelta(hours=1))}
    return new_record("board-packet").with_changes(**{**created, **changes})


# --- canonical JSON and the binding --------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, True),
        ({"a": 1.0}, {"a": 1}, True),  # one number in RFC 8785 form
        ({"a": None}, {}, False),  # absent is not null
        ({"a": [1, 2]}, {"a": [2, 1]}, False),  # arrays in order
        ({"a": True}, {"a": 1}, False),  # JSON types differ
        ({"a": "\u00e9"}, {"a": "e\u0301"}, False),  # code points, no normalisation
        ({"a": 2**60}, {"a": 2**60}, False),  # beyond JCS: equal to nothing, never raises
        ({"a": float("nan")}, {"a": float("nan")}, False),
    ],
)
def test_structural_equality_is_arap_s_definition(left: Any, right: Any, equal: bool) -> None:
    assert structurally_equal(left, right) is equal


def test_the_binding_set_leaves_out_the_actor_chain_profile_members_and_time() -> None:
    noisy = {
        **REQUEST,
        "context": {
            **REQUEST["context"],
            "time": "2026-06-02T10:31:00Z",
            "approval": {"id": "x"},
            "evaluation_id": "e",
        },
    }
    assert "act" not in binding_set(noisy)["subject"]["properties"]
    assert binding_hash(noisy) == binding_hash(REQUEST)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["subject"].update(id="bob"),
        lambda r: r["subject"]["properties"].update(roles=[]),
        lambda r: r["resource"]["properties"].update(amount=50001),
        lambda r: r["action"].update(name="read"),
        lambda r: r["context"].update(agent="other-agent"),
    ],
    ids=["subject", "roles", "resource", "action", "agent"],
)
def test_any_change_to_the_bound_members_changes_the_binding_hash(change: Any) -> None:
    import copy

    changed = copy.deepcopy(REQUEST)
    change(changed)
    assert binding_hash(changed) != binding_hash(REQUEST)


def test_the_argument_digest_ignores_member_order_and_treats_absent_arguments_as_empty() -> None:
    assert argument_digest({"a": 1, "b": 2}) == argument_digest({"b": 2, "a": 1})
    assert argument_digest(None) == argument_digest({})
    assert argument_digest({"a": 1}) != argument_digest({"a": 2})
    assert argument_digest({}).startswith("sha256:")


# --- the state machine -----------------------------------------------------------------------


def test_a_pending_request_can_be_approved_once_and_the_approval_ends_at_the_requested_time() -> None:
    approved = ap.approve(record(), "carol", NOW, until=NOW + timedelta(minutes=5))
    assert (approved.state, approved.approver, approved.approved_until) == (
        "approved",
        "carol",
        "2026-06-02T10:35:00Z",
    )
    with pytest.raises(ap.InvalidTransition):
        ap.approve(approved, "dave", NOW)
    with pytest.raises(ap.InvalidTransition):
        ap.deny(approved, "dave", NOW)


def test_an_approval_never_outlives_the_request() -> None:
    approved = ap.approve(record(), "carol", NOW, until=NOW + timedelta(days=30))
    assert approved.approved_until == record().expires_at


@pytest.mark.parametrize("terminal", ["denied", "expired", "cancelled", "failed"])
def test_terminal_states_are_final(terminal: ap.ApprovalState) -> None:
    done = record(state=terminal, execution="withdrawn")
    for step in (
        lambda r: ap.approve(r, "carol", NOW),
        lambda r: ap.deny(r, "carol", NOW),
        lambda r: ap.cancel(r, NOW),
        lambda r: ap.claim(r, NOW),
    ):
        with pytest.raises(ap.InvalidTransition):
            step(done)


def test_a_pending_request_past_its_expiry_is_expired_and_cannot_be_approved() -> None:
    later = NOW + timedelta(hours=2)
    assert ap.expire_if_due(record(), later).state == "expired"
    with pytest.raises(ap.InvalidTransition):
        ap.approve(record(), "carol", later)


def test_an_approved_call_is_claimed_once_then_finished_once() -> None:
    approved = ap.approve(record(), "carol", NOW)
    claimed = ap.claim(approved, NOW)
    with pytest.raises(ap.InvalidTransition):
        ap.claim(claimed, NOW)
    done = ap.finish(claimed, {"content": [], "isError": False}, "approved-executed")
    assert (done.execution, done.disposition) == ("executed", "approved-executed")
    with pytest.raises(ap.InvalidTransition):
        ap.finish(done, None, "approved-executed")


def test_an_approval_past_approved_until_cannot_be_claimed() -> None:
    approved = ap.approve(record(), "carol", NOW, until=NOW + timedelta(minutes=1))
    with pytest.raises(ap.InvalidTransition):
        ap.claim(approved, NOW + timedelta(minutes=1))


def test_cancel_withdraws_a_pending_or_unstarted_request_but_never_one_that_ran() -> None:
    assert ap.cancel(record(), NOW).state == "cancelled"
    withdrawn = ap.cancel(ap.approve(record(), "carol", NOW), NOW)
    assert (withdrawn.state, withdrawn.execution) == ("approved", "withdrawn")
    with pytest.raises(ap.InvalidTransition):
        ap.claim(withdrawn, NOW)
    running = ap.claim(ap.approve(record(), "carol", NOW), NOW)
    with pytest.raises(ap.InvalidTransition):
        ap.cancel(running, NOW)


def test_task_ids_are_unguessable_kubernetes_names() -> None:
    ids = {ap.new_task_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(task_id) == 35 and task_id.startswith("ar-") and task_id.islower() for task_id in ids)


def test_a_claimed_call_without_a_result_is_lost_after_the_patience_and_never_claimed_again() -> None:
    claimed = ap.claim(ap.approve(record(), "carol", NOW), NOW)
    assert claimed.claimed_at == ap.format_time(NOW)
    with pytest.raises(ap.InvalidTransition):
        ap.lose(claimed, NOW + timedelta(minutes=4), timedelta(minutes=5))
    lost = ap.lose(claimed, NOW + timedelta(minutes=5), timedelta(minutes=5))
    assert lost.execution == "lost"
    for step in (
        lambda r: ap.claim(r, NOW),
        lambda r: ap.finish(r, None, "approved-executed"),
        lambda r: ap.cancel(r, NOW),
    ):
        with pytest.raises(ap.InvalidTransition):
            step(lost)


@pytest.mark.parametrize(
    ("make", "prunable"),
    [
        (record, False),  # pending: a reviewer may still decide
        (lambda: ap.deny(record(), "carol", NOW), True),
        (lambda: ap.approve(record(), "carol", NOW), False),  # an unused approval still usable
        (lambda: ap.claim(ap.approve(record(), "carol", NOW), NOW), False),  # running
        (
            lambda: ap.finish(ap.claim(ap.approve(record(), "carol", NOW), NOW), None, "approved-executed"),
            True,
        ),
        (lambda: ap.cancel(record(), NOW), True),
    ],
    ids=["pending", "denied", "approved-unused", "running", "executed", "cancelled"],
)
def test_only_records_that_are_over_can_be_pruned(make: Any, prunable: bool) -> None:
    later = NOW + timedelta(minutes=30)
    assert ap.prunable(make(), later, timedelta(minutes=10)) is prunable
    assert ap.prunable(make(), later, timedelta(days=1)) is False  # not old enough, whatever it is


def test_an_expired_request_is_prunable_once_old_enough() -> None:
    assert ap.prunable(record(), NOW + timedelta(hours=2), timedelta(minutes=30)) is True
