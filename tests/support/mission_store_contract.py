"""What every mission store must do, whatever its backend: imported by one test module per backend,
each of which provides the `records` fixture (a `MissionRecords`) and the `namespace` it may use."""

from __future__ import annotations

import threading

import pytest

from callwarden.policy.mission import PROPOSED_BY, MissionTransitionError, mission_reference
from callwarden.stores.documents import StoreConflict
from callwarden.stores.missions import MissionRecords
from tests.support.missions import BOARD_PACKET, make_mission


def test_a_proposal_reads_back_with_its_spec_and_proposer_and_no_decision(
    records: MissionRecords, namespace: str
) -> None:
    proposed = records.propose(make_mission(namespace=namespace), "alice")
    stored = records.get(proposed.key)
    assert stored is not None and stored.spec == BOARD_PACKET.spec
    assert stored.metadata.annotations[PROPOSED_BY] == "alice"
    assert (stored.status.phase, stored.status.reference, stored.status.history) == ("Proposed", None, [])


def test_a_second_proposal_of_the_same_name_conflicts(records: MissionRecords, namespace: str) -> None:
    records.propose(make_mission(namespace=namespace), "alice")
    with pytest.raises(StoreConflict):
        records.propose(make_mission(namespace=namespace, purpose="something else"), "mallory")


def test_approving_records_the_reference_the_approver_and_the_history(
    records: MissionRecords, namespace: str
) -> None:
    key = records.propose(make_mission(namespace=namespace), "alice").key
    approved = records.move(key, "approve", "carol")
    assert (approved.status.phase, approved.status.approver) == ("Approved", "carol")
    assert approved.status.reference == mission_reference(BOARD_PACKET.spec)
    revoked = records.move(key, "revoke", "dave")
    assert [(step.phase, step.by) for step in revoked.status.history] == [
        ("Approved", "carol"),
        ("Revoked", "dave"),
    ]


def test_a_command_that_does_not_apply_is_refused_and_changes_nothing(
    records: MissionRecords, namespace: str
) -> None:
    key = records.propose(make_mission(namespace=namespace), "alice").key
    with pytest.raises(MissionTransitionError):
        records.move(key, "revoke", "carol")
    stored = records.get(key)
    assert stored is not None and stored.status.phase == "Proposed"


def test_moving_a_mission_that_does_not_exist_says_so(records: MissionRecords, namespace: str) -> None:
    with pytest.raises(LookupError):
        records.move(f"{namespace}/nope", "approve", "carol")


def test_of_two_reviewers_acting_at_once_exactly_one_transition_wins(
    records: MissionRecords, namespace: str
) -> None:
    key = records.propose(make_mission(namespace=namespace), "alice").key
    outcomes: list[str] = []

    def act(command: str) -> None:
        try:
            records.move(key, command, command)
            outcomes.append("won")
        except (StoreConflict, MissionTransitionError):  # lost the race, or saw the winner's phase
            outcomes.append("lost")

    threads = [threading.Thread(target=act, args=(command,)) for command in ("approve", "deny")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "won"]
    stored = records.get(key)
    assert stored is not None and len(stored.status.history) == 1
