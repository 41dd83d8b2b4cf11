"""The board-packet mission as the seed tells it, standalone: a person approves "prepare the Q3
board packet for the audit committee" once with `callwarden missions approve`; the agent (the
official MCP client) calls three servers behind three issuers through real Envoy under that one
approval; notifying all staff is outside the mission, is denied and proposes an expansion; the
expansion is approved and the call goes through; `callwarden audit --mission` prints exactly
these calls, in order, with the lineage, the same bytes however the log lines are split."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from callwarden.demo.agent import Outcome, ToolCall, run_agent
from callwarden.demo.mission import wait_until
from callwarden.extauthz.mission_sync import PollingSync, follow_mission_file
from callwarden.policy.mission import mission_reference
from tests.support.datapath import DataPath, start_datapath, tools_call
from tests.support.missions import BOARD_PACKET, EXAMPLE

pytestmark = pytest.mark.integration

CALLWARDEN: Final = str(Path(sys.executable).parent / "callwarden")
KEY: Final = BOARD_PACKET.key
REFERENCE: Final = mission_reference(BOARD_PACKET.spec)
ALL_STAFF: Final = ToolCall("notify_reviewer", {"group": "all-staff", "deadline": "2026-12-01"})
IN_SCOPE: Final = (
    ("finance", ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"})),
    ("documents", ToolCall("create_doc", {"template": "board-packet", "title": "Q3 board packet"})),
    ("workflow", ToolCall("notify_reviewer", {"group": "audit-committee", "deadline": "2026-12-01"})),
)


def callwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CALLWARDEN, *args], capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Story:
    datapath: DataPath
    sync: PollingSync
    store: Path
    in_scope: list[Outcome]
    outside: Outcome
    expansion: str
    after_expansion: Outcome
    executed_before_expansion: int


def phase(sync: PollingSync, key: str) -> str | None:
    """The phase ext_authz sees for mission `key` (None until the store's change reached it)."""
    mission = sync.book.index.get(key)
    return None if mission is None else mission.status.phase


def agent_call(dp: DataPath, server: str, call: ToolCall) -> Outcome:
    run = run_agent(
        dp.url,
        dp.token(server),
        [call],
        host=dp.host(server),
        headers={"callwarden-mission": f"{KEY}; ref={REFERENCE}"},
    )
    [outcome] = run.calls()
    return outcome


@pytest.fixture(scope="module", name="story")
def story_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    workdir = tmp_path_factory.mktemp("story")
    store = workdir / "missions.db"
    with (
        follow_mission_file(store, interval=0.05) as sync,
        start_datapath(workdir, missions=sync.book) as dp,
    ):
        proposed = callwarden(
            "missions",
            "propose",
            "-f",
            str(EXAMPLE / "q3-board-packet.yaml"),
            "--store",
            str(store),
            "--as",
            "alice",
        )
        assert proposed.returncode == 0, proposed.stderr
        approved = callwarden("missions", "approve", KEY, "--store", str(store), "--as", "carol")
        assert approved.returncode == 0, approved.stderr
        assert wait_until(lambda: phase(sync, KEY) == "Approved")
        in_scope = [agent_call(dp, server, call) for server, call in IN_SCOPE]
        outside = agent_call(dp, "workflow", ALL_STAFF)
        expansion = (outside.error_message or "").split("proposed expansion ")[-1].split(" ")[0]
        executed = dp.executed("workflow")
        assert wait_until(lambda: sync.book.index.get(expansion) is not None)
        moved = callwarden("missions", "approve", expansion, "--store", str(store), "--as", "carol")
        assert moved.returncode == 0, moved.stderr
        assert wait_until(lambda: phase(sync, expansion) == "Approved")
        after = agent_call(dp, "workflow", ALL_STAFF)
        dp.gateway.ext_authz.decision_log.flush()
        yield Story(dp, sync, store, in_scope, outside, expansion, after, executed)


def audit(story: Story, *logs: Path, as_json: bool = True) -> subprocess.CompletedProcess[str]:
    return callwarden(
        "audit",
        "--mission",
        KEY,
        "--store",
        str(story.store),
        *(["--json"] if as_json else []),
        *map(str, logs),
    )


def trail_of(story: Story) -> dict[str, Any]:
    result = audit(story, story.datapath.audit_path)
    assert result.returncode == 0, result.stderr
    trail: dict[str, Any] = json.loads(result.stdout)
    return trail


def test_one_approval_covers_calls_on_three_servers_under_three_issuers(story: Story) -> None:
    assert [o.status for o in story.in_scope] == ["allowed", "allowed", "allowed"]
    assert story.datapath.issuers is not None
    issuers = {story.datapath.issuers[server].issuer for server, _ in IN_SCOPE}
    assert len(issuers) == 3
    reasons = [story.datapath.decision(o.decision_id or "")["reasons"] for o in story.in_scope]
    assert reasons == [[f"mission:{KEY}/scope[0]"], [f"mission:{KEY}/scope[1]"], [f"mission:{KEY}/scope[2]"]]


def test_a_call_outside_the_mission_is_denied_and_proposes_an_expansion(story: Story) -> None:
    assert story.outside.status == "denied"
    assert f"outside mission {KEY}" in (story.outside.error_message or "")
    shown = callwarden("missions", "show", story.expansion, "--store", str(story.store))
    child = json.loads(shown.stdout)
    assert child["spec"]["parent"] == REFERENCE
    assert child["spec"]["scope"] == [
        {
            "servers": ["workflow"],
            "tools": ["notify_reviewer"],
            "when": 'resource.type == "reviewer_group" && resource.id == "all-staff"',
        }
    ]
    assert child["metadata"]["annotations"]["callwarden.io/proposed-by"] == "callwarden-extauthz"
    assert [(step["phase"], step["by"]) for step in child["status"]["history"]] == [("Approved", "carol")]


def test_the_denied_call_never_reached_the_server(story: Story) -> None:
    assert story.executed_before_expansion == 1  # audit-committee only
    groups = [call.arguments["group"] for call in story.datapath.servers.ledgers["workflow"].calls()]
    assert groups == ["audit-committee", "all-staff"]  # all-staff ran once: after the expansion


def test_approving_the_expansion_widens_the_task_without_a_new_identity(story: Story) -> None:
    assert story.after_expansion.status == "allowed"
    line = story.datapath.decision(story.after_expansion.decision_id or "")
    assert line["reasons"] == [f"mission:{story.expansion}/scope[0]"]
    assert line["mission"] == {"id": KEY, "reference": REFERENCE}


def test_the_audit_lists_exactly_the_missions_calls_in_order_with_the_lineage(story: Story) -> None:
    trail = trail_of(story)
    calls = [
        (e["server"].split("/")[1], e["tool"], e["resource"], e["decision"], e.get("granted_by"))
        for e in trail["events"]
        if e["kind"] == "call" and e["method"] == "tools/call"
    ]
    assert calls == [
        ("finance", "query_financials", "financials/example-corp", "allow", KEY),
        ("documents", "create_doc", "document_template/board-packet", "allow", KEY),
        ("workflow", "notify_reviewer", "reviewer_group/audit-committee", "allow", KEY),
        ("workflow", "notify_reviewer", "reviewer_group/all-staff", "deny", None),
        ("workflow", "notify_reviewer", "reviewer_group/all-staff", "allow", story.expansion),
    ]
    transitions = [(e["mission"], e["phase"], e["by"]) for e in trail["events"] if e["kind"] == "transition"]
    assert transitions == [
        (KEY, "Proposed", "alice"),
        (KEY, "Approved", "carol"),
        (story.expansion, "Proposed", "callwarden-extauthz"),
        (story.expansion, "Approved", "carol"),
    ]
    assert [child["id"] for child in trail["lineage"]] == [story.expansion]
    assert trail["lineage"][0]["parent"] == REFERENCE and trail["verified"]


def test_every_call_in_the_trail_names_subject_agent_and_carries_the_approved_reference(story: Story) -> None:
    calls = [e for e in trail_of(story)["events"] if e["kind"] == "call" and e["method"] == "tools/call"]
    assert {(e["subject"], e["agent"], e["reference_ok"]) for e in calls} == {("alice", "board-agent", True)}


def test_the_audit_is_byte_identical_for_shuffled_lines_from_three_replicas(
    story: Story, tmp_path: Path
) -> None:
    lines = story.datapath.audit_path.read_text().splitlines(keepends=True)
    outputs = set()
    for seed in range(3):
        shuffled = lines[:]
        random.Random(seed).shuffle(shuffled)
        replicas = [tmp_path / f"seed{seed}-replica{r}.jsonl" for r in range(3)]
        for index, replica in enumerate(replicas):
            replica.write_text("".join(shuffled[index::3]))
        for as_json in (True, False):
            result = audit(story, *replicas, as_json=as_json)
            outputs.add((as_json, result.stdout))
    single = {
        (as_json, audit(story, story.datapath.audit_path, as_json=as_json).stdout)
        for as_json in (True, False)
    }
    assert outputs == single


def test_the_audit_refuses_a_file_that_is_not_a_decision_log(story: Story, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.jsonl"
    bogus.write_text('{"decision_id": "x", "time": "yesterday"}\n')
    result = audit(story, story.datapath.audit_path, bogus)
    assert result.returncode == 2 and f"{bogus}:1" in result.stderr


def test_revoking_the_mission_mid_task_denies_the_next_call(story: Story) -> None:
    revoked = callwarden("missions", "revoke", KEY, "--store", str(story.store), "--as", "carol")
    assert revoked.returncode == 0, revoked.stderr
    assert wait_until(lambda: phase(story.sync, KEY) == "Revoked")
    dp = story.datapath
    server, call = IN_SCOPE[0]
    body = tools_call(call.tool, call.arguments)
    response = dp.post(
        server, body, token=dp.token(server), headers={"callwarden-mission": f"{KEY}; ref={REFERENCE}"}
    )
    assert dp.decision_of(response)["reasons"] == ["mission-revoked"]
    listed = callwarden("missions", "list", "--store", str(story.store))
    assert any(line.startswith(KEY + " ") and "Revoked" in line for line in listed.stdout.splitlines())
