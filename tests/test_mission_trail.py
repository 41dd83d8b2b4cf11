"""The audit trail of a mission from decision-log lines: ordered, complete, checked, and the
same bytes for the same lines in any order and any split across replicas."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from callwarden.policy.mission import mission_reference, transition
from callwarden.policy.trail import TrailError, build_trail, render_json, render_text
from tests.support.missions import BOARD_PACKET, approved

APPROVED_AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
MISSION = approved(BOARD_PACKET, now=APPROVED_AT)
REFERENCE = mission_reference(BOARD_PACKET.spec)
KEY = BOARD_PACKET.key


def line(
    second: int,
    decision_id: str,
    *,
    tool: str = "query_financials",
    decision: str = "allow",
    reasons: tuple[str, ...] = (f"mission:{KEY}/scope[0]",),
    mission: dict[str, str] | None = None,
    agent: str = "board-agent",
    server: str = "board-packet/finance",
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "time": f"2026-12-03T10:00:{second:02d}.000100Z",
        "decision_id": decision_id,
        "server": server,
        "method": "tools/call",
        "tool": tool,
        "decision": decision,
        "code": 200 if decision == "allow" else -32001,
        "reasons": list(reasons),
        "requests": [
            {
                "subject": {"type": "identity", "id": "alice"},
                "resource": {"type": "financials", "id": "example-corp"},
                "context": {"agent": agent, "actors": [{"sub": "orchestrator"}]},
            }
        ],
    }
    if mission is not None:
        entry["mission"] = mission
    return entry


BOUND = {"id": KEY, "reference": REFERENCE}
LINES = [
    line(1, "01A", mission=BOUND),
    line(2, "01B", tool="create_doc", mission=BOUND, server="board-packet/documents"),
    line(3, "01C", decision="deny", reasons=(f"mission-outside:{KEY}",), mission=BOUND),
    line(3, "01D", mission=None, reasons=("board-packet/x/y",)),  # the same agent, no mission
    line(4, "01E", mission=None, agent="someone-else"),
    line(5, "01F", mission={"id": "board-packet/other", "reference": REFERENCE}),
]


def trail(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return build_trail([MISSION], [(f"log:{i}", entry) for i, entry in enumerate(lines)])


def test_the_trail_starts_with_the_approval_and_lists_the_missions_calls_in_time_order() -> None:
    events = trail(LINES)["events"]
    assert [(e["kind"], e.get("decision_id")) for e in events] == [
        ("transition", None),
        ("call", "01A"),
        ("call", "01B"),
        ("call", "01C"),
        ("unbound", "01D"),
    ]
    assert events[0] | {"time": "-"} == {
        "kind": "transition",
        "time": "-",
        "mission": KEY,
        "phase": "Approved",
        "by": "carol",
        "reference": REFERENCE,
    }


def test_each_call_names_server_tool_decision_rules_subject_agent_and_actors() -> None:
    call = trail(LINES)["events"][1]
    assert {k: call[k] for k in ("server", "tool", "decision", "rules", "subject", "agent", "actors")} == {
        "server": "board-packet/finance",
        "tool": "query_financials",
        "decision": "allow",
        "rules": [f"mission:{KEY}/scope[0]"],
        "subject": "alice",
        "agent": "board-agent",
        "actors": ["orchestrator"],
    }
    assert call["granted_by"] == KEY and call["reference_ok"]


def test_an_allowed_line_under_another_reference_fails_verification() -> None:
    forged = line(6, "01G", mission={"id": KEY, "reference": "sha256:" + "B" * 43})
    result = trail([*LINES, forged])
    assert (result["verified"], result["violations"]) == (False, 1)
    assert "REFERENCE-MISMATCH" in render_text(result) and "NOT VERIFIED" in render_text(result)


def test_a_denied_line_under_another_reference_is_shown_but_is_no_violation() -> None:
    stale = line(
        6, "01G", decision="deny", reasons=("mission-reference",), mission={"id": KEY, "reference": "x"}
    )
    assert trail([*LINES, stale])["verified"]


def test_calls_without_a_mission_count_only_inside_the_approved_window() -> None:
    revoked_at = datetime(2026, 12, 3, 10, 0, 30, tzinfo=UTC)
    revoked = MISSION.model_copy(update={"status": transition(MISSION, "revoke", "carol", revoked_at)})
    lines = [("a", line(10, "01P", mission=None)), ("b", line(45, "01Q", mission=None))]
    result = build_trail([revoked], lines)
    assert [(e["kind"], e.get("decision_id")) for e in result["events"]] == [
        ("transition", None),
        ("unbound", "01P"),
        ("transition", None),
    ]


def test_a_line_seen_twice_counts_once() -> None:
    assert trail([*LINES, LINES[0]]) == trail(LINES)


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_lines_from_three_replicas_give_byte_identical_output(seed: int) -> None:
    replicas: list[list[dict[str, Any]]] = [[], [], []]
    for index, entry in enumerate(LINES):
        replicas[index % 3].append(entry)
    shuffled = [entry for replica in replicas for entry in replica]
    random.Random(seed).shuffle(shuffled)
    assert render_text(trail(shuffled)) == render_text(trail(LINES))
    assert render_json(trail(shuffled)) == render_json(trail(LINES))


@pytest.mark.parametrize(
    "entry",
    [
        [],
        "text",
        {"time": "2026-12-03T10:00:00Z"},
        {"decision_id": "x"},
        {"decision_id": "x", "time": "noon"},
    ],
    ids=["list", "string", "no-id", "no-time", "bad-time"],
)
def test_a_line_that_is_not_a_decision_line_is_named(entry: Any) -> None:
    with pytest.raises(TrailError, match="log:0"):
        build_trail([MISSION], [("log:0", entry)])


def test_a_call_refused_for_its_mission_is_shown_with_the_caller_the_line_names() -> None:
    refused = line(
        7,
        "01R",
        decision="deny",
        reasons=("mission-revoked",),
        mission={**BOUND, "subject": "alice", "agent": "board-agent"},
    )
    refused["requests"] = []  # it reached no PDP
    [event] = [e for e in trail([refused])["events"] if e["kind"] == "call"]
    assert (event["subject"], event["agent"], event["rules"]) == ("alice", "board-agent", ["mission-revoked"])
