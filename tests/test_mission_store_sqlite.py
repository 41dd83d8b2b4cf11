"""The standalone mission store: Mission objects in one SQLite file (the contract every backend passes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.mission_sync import PollingSync
from callwarden.stores.missions import PLURAL, MissionRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.support.mission_store_contract import *  # noqa: F403 - the contract every backend passes
from tests.support.missions import make_mission


@pytest.fixture
def namespace() -> str:
    return "board-packet"


@pytest.fixture
def records(tmp_path: Path) -> Iterator[MissionRecords]:
    documents = SqliteDocuments(tmp_path / "missions.db")
    yield MissionRecords(documents)
    documents.close()


def test_listing_leaves_out_an_object_that_is_not_a_valid_mission(
    records: MissionRecords, namespace: str
) -> None:
    records.propose(make_mission(namespace=namespace), "alice")
    body = make_mission(namespace=namespace, name="broken").model_dump(
        mode="json", by_alias=True, exclude={"status"}
    )
    body["metadata"] = {"name": "broken", "namespace": namespace}
    body["spec"]["purpose"] = "approve \u202eevil"  # written past the model, as by hand into the file
    records.documents.create(PLURAL, body)
    assert [m.metadata.name for m in records.all(namespace)] == ["q3-board-packet"]


def test_until_the_missions_load_ext_authz_stays_ready_and_says_mission_calls_are_denied(
    records: MissionRecords,
) -> None:
    sync = PollingSync(records, MissionBook())
    assert sync.readiness() == (True, "missions not loaded yet: calls naming a mission are denied")
    sync.sync_once()
    assert sync.readiness() == (True, "0 mission(s) loaded")
