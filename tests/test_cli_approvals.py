"""`callwarden approvals` against the standalone store: what a reviewer types and sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callwarden.cli import main
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.sqlite import SqliteDocuments
from tests.support.store_contract import new_record

NAMESPACE = "board-packet"


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    return tmp_path / "approvals.db"


@pytest.fixture
def store(store_file: Path) -> ApprovalRecords:
    return ApprovalRecords(SqliteDocuments(store_file))


def approvals(store_file: Path, *args: str) -> int:
    return main(["approvals", "--store", str(store_file), *args])


def test_list_shows_what_a_reviewer_needs(
    store: ApprovalRecords, store_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = store.create(new_record(NAMESPACE))
    assert approvals(store_file, "list") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "NAMESPACE",
        "ID",
        "TOOL",
        "SUBJECT",
        "RESOURCE",
        "STATE",
        "EXECUTION",
        "EXPIRES",
    ]
    assert row.split()[:7] == [
        NAMESPACE,
        record.id,
        "transfer_funds",
        "alice@example.com",
        "acct-991",
        "pending",
        "none",
    ]


def test_approve_until_a_duration_records_the_approver_an_event_and_a_log_line(
    store: ApprovalRecords, store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = store.create(new_record(NAMESPACE))
    audit = tmp_path / "decisions.jsonl"
    assert (
        approvals(
            store_file, "--audit-log", str(audit), "approve", record.id, "--until", "30m", "--as", "carol"
        )
        == 0
    )
    stored = store.get(NAMESPACE, record.id)
    assert stored is not None and (stored.state, stored.approver) == ("approved", "carol")
    [line] = [json.loads(text) for text in audit.read_text().splitlines()]
    assert (line["kind"], line["approver"], line["approval"]["id"], line["decision"]) == (
        "approval",
        "carol",
        record.id,
        "approved",
    )
    assert json.loads(capsys.readouterr().out) == line
    events = SqliteDocuments(store_file).events(NAMESPACE, record.id)
    assert [e["reason"] for e in events] == ["Approved"]
    assert "carol" in events[0]["message"]


def test_a_decided_request_cannot_be_decided_again(
    store: ApprovalRecords, store_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = store.create(new_record(NAMESPACE))
    assert approvals(store_file, "deny", record.id, "--as", "carol", "--comment", "no") == 0
    assert approvals(store_file, "approve", record.id, "--as", "mallory") == 2
    assert "is denied" in capsys.readouterr().err
    stored = store.get(NAMESPACE, record.id)
    assert stored is not None and (stored.state, stored.approver, stored.comment) == ("denied", "carol", "no")


def test_show_prints_the_access_request_object(
    store: ApprovalRecords, store_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = store.create(new_record(NAMESPACE))
    assert approvals(store_file, "-n", NAMESPACE, "show", record.id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["kind"], shown["metadata"]["name"], shown["spec"]["tool"]) == (
        "AccessRequest",
        record.id,
        "transfer_funds",
    )


@pytest.mark.parametrize(
    "until",
    ["yesterday", "30", "-5m", "9999999m", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "1m\n"],
)
def test_hostile_until_values_are_refused_and_nothing_changes(
    store: ApprovalRecords, store_file: Path, until: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record = store.create(new_record(NAMESPACE))
    assert approvals(store_file, "approve", record.id, f"--until={until}", "--as", "carol") == 2
    assert "callwarden:" in capsys.readouterr().err
    stored = store.get(NAMESPACE, record.id)
    assert stored is not None and stored.state == "pending"


@pytest.mark.parametrize("task_id", ["ar-" + "0" * 32, "../x", "", "ar-\u0430"])
def test_an_unknown_id_is_an_input_error(
    store_file: Path, task_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    SqliteDocuments(store_file)
    assert approvals(store_file, "approve", task_id, "--as", "carol") == 2
    assert "no access request" in capsys.readouterr().err


def test_as_is_refused_in_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["approvals", "--kubernetes", "approve", "ar-x", "--as", "carol"]) == 2
    assert "--as is for the standalone store" in capsys.readouterr().err


def test_prune_deletes_only_what_is_over(
    store: ApprovalRecords, store_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = store.create(new_record(NAMESPACE))
    decided = store.create(new_record(NAMESPACE))
    assert approvals(store_file, "deny", decided.id, "--as", "carol") == 0
    capsys.readouterr()
    assert approvals(store_file, "prune", "--older-than", "0s") == 0
    assert json.loads(capsys.readouterr().out) == {"pruned": [f"{NAMESPACE}/{decided.id}"]}
    assert store.get(NAMESPACE, pending.id) is not None and store.get(NAMESPACE, decided.id) is None
    assert approvals(store_file, "prune", "--older-than", "forever") == 2
