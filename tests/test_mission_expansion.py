"""Expansions proposed on the denial path into the real (SQLite) store: once per missing grant,
and never more than a bounded number pending per mission, so an agent probing outside its task
cannot flood the store or its reviewers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from callwarden.extauthz.mission import MAX_PENDING_EXPANSIONS, MissionBook
from callwarden.extauthz.mission_sync import PROPOSER, proposer_for
from callwarden.policy.decide import JsonRpcError, Verdict
from callwarden.policy.mission import OUTSIDE_PREFIX, ActiveMission, child_key, child_spec, mission_reference
from callwarden.stores.missions import MissionRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.support.missions import BOARD_PACKET

KEY = BOARD_PACKET.key


@pytest.fixture(name="records")
def records_fixture(tmp_path: Path) -> Iterator[MissionRecords]:
    documents = SqliteDocuments(tmp_path / "missions.db")
    records = MissionRecords(documents)
    records.propose(BOARD_PACKET, "alice")
    records.move(KEY, "approve", "carol")
    yield records
    documents.close()


def outside(group: str) -> Verdict:
    request: dict[str, Any] = {
        "resource": {"type": "reviewer_group", "id": group},
        "context": {
            "mcp": {"server": "board-packet/workflow", "method": "tools/call", "tool": "notify_reviewer"}
        },
    }
    error = JsonRpcError(-32001, "outside")
    return Verdict(False, "tools/call", "notify_reviewer", error, (f"{OUTSIDE_PREFIX}{KEY}",), (request,))


def resolved(book: MissionBook) -> ActiveMission:
    return book.index.resolve(KEY, mission_reference(BOARD_PACKET.spec), datetime.now(UTC))


def expansion(active: ActiveMission, group: str) -> str:
    resource = {"type": "reviewer_group", "id": group}
    return child_key(active, child_spec(active, "board-packet/workflow", "notify_reviewer", resource))


def test_a_call_outside_proposes_its_expansion_once(records: MissionRecords) -> None:
    book = MissionBook(records.all(), proposer=proposer_for(records))
    active = resolved(book)
    assert book.propose_expansions(active, [outside("all-staff")]) == [outside("all-staff")]
    book.update(records.all())
    book.propose_expansions(active, [outside("all-staff")])
    child = records.get(expansion(active, "all-staff"))
    assert child is not None and child.metadata.annotations["callwarden.io/proposed-by"] == PROPOSER
    assert len(records.all()) == 2


def test_past_the_pending_limit_nothing_more_is_proposed_and_the_denial_says_why(
    records: MissionRecords,
) -> None:
    book = MissionBook(records.all(), proposer=proposer_for(records))
    active = resolved(book)
    for index in range(MAX_PENDING_EXPANSIONS):
        book.propose_expansions(active, [outside(f"group-{index}")])
    book.update(records.all())
    [answer] = book.propose_expansions(active, [outside("one-too-many")])
    assert answer.error is not None
    assert f"already has {MAX_PENDING_EXPANSIONS} expansions pending review" in answer.error.message
    assert records.get(expansion(active, "one-too-many")) is None
    assert len(records.all()) == 1 + MAX_PENDING_EXPANSIONS
