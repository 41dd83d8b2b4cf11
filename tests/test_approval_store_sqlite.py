"""The standalone approval store: one SQLite file (WAL), shared by threads and processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.support.store_contract import *  # noqa: F403 - the contract every backend passes
from tests.support.store_contract import new_record


@pytest.fixture
def namespace() -> str:
    return "board-packet"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApprovalRecords]:
    documents = SqliteDocuments(tmp_path / "approvals.db")
    yield ApprovalRecords(documents)
    documents.close()


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    SqliteDocuments(tmp_path / "a.db").close()
    with sqlite3.connect(tmp_path / "a.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_second_handle_on_the_same_file_sees_every_transition(tmp_path: Path) -> None:
    writer = ApprovalRecords(SqliteDocuments(tmp_path / "a.db"))
    reader = ApprovalRecords(SqliteDocuments(tmp_path / "a.db"))
    created = writer.create(new_record("ns"))
    assert reader.get("ns", created.id) == created


def test_events_are_kept_per_object(tmp_path: Path) -> None:
    documents = SqliteDocuments(tmp_path / "a.db")
    records = ApprovalRecords(documents)
    created = records.create(new_record("ns"))
    records.event(created, "Approved", "approved by carol")
    assert [(e["reason"], e["message"]) for e in documents.events("ns", created.id)] == [
        ("Approved", "approved by carol")
    ]
