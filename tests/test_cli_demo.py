"""`callwarden demo` as a user runs it: the installed command, real Envoy, servers, issuers and agent."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

pytestmark = pytest.mark.integration

CALLWARDEN: Final = str(Path(sys.executable).parent / "callwarden")
HEADER: Final = ("session", "call", "decision", "decision id", "reason / result")


@pytest.fixture(scope="module")
def demo() -> Iterator[subprocess.CompletedProcess[str]]:
    yield subprocess.run([CALLWARDEN, "demo"], capture_output=True, text=True, timeout=120, check=False)


def _table(demo: subprocess.CompletedProcess[str]) -> list[str]:
    """The table's rows: from the line after the dashes to the first blank line."""
    lines = demo.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    return lines[start : lines.index("", start)]


def _row(demo: subprocess.CompletedProcess[str], call: str) -> str:
    return next(row for row in _table(demo) if call in row)


def test_the_demo_exits_0_and_says_it_passed(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo passed: every call decided as expected" in demo.stdout


def test_the_demo_prints_the_decision_table(demo: subprocess.CompletedProcess[str]) -> None:
    header = next(line for line in demo.stdout.splitlines() if line.startswith("session"))
    assert header.split() == " ".join(HEADER).split()
    assert len(_table(demo)) == 12  # one row per call of the scenario


def test_an_allowed_row_names_the_rule_that_allowed(demo: subprocess.CompletedProcess[str]) -> None:
    row = _row(demo, "create_doc(template='board-packet'")
    assert "allowed by board-packet/board-packet-task/draft-board-packet; result: doc-0001" in row


def test_an_unauthenticated_row_shows_the_challenge(demo: subprocess.CompletedProcess[str]) -> None:
    rows = [row for row in _table(demo) if "unauthenticated" in row]
    assert len(rows) == 3
    # finance requires DPoP (examples/board-packet): its challenge is the DPoP scheme's
    assert all('DPoP resource_metadata="https://finance.board.example/' in row for row in rows)
    assert 'error="invalid_token", error_description="token expired"' in rows[1]


def test_a_stolen_dpop_bound_token_is_useless_without_its_key(demo: subprocess.CompletedProcess[str]) -> None:
    row = _row(demo, "stolen DPoP-bound token")
    assert "unauthenticated" in row
    assert "this server accepts only DPoP-bound tokens" in row


def test_a_denied_row_shows_the_denial(demo: subprocess.CompletedProcess[str]) -> None:
    row = _row(demo, "entity='other-corp'")
    assert "denied by rule 'board-packet/finance-guardrails/only-examp" in row


def test_the_demo_tells_the_mission_story_and_prints_its_audit_trail(
    demo: subprocess.CompletedProcess[str],
) -> None:
    out = demo.stdout
    assert (
        "mission board-packet/q3-board-packet: 'prepare the Q3 board packet for the audit committee'" in out
    )
    assert "  approved once by carol at sha256:" in out
    assert "outside the mission: expansion board-packet/q3-board-packet-x" in out
    trail = out[out.index("callwarden audit --mission board-packet/q3-board-packet:") :]
    rows = [line.split() for line in trail.splitlines() if line.split()[1:2] in (["allow"], ["deny"])]
    assert [(row[1], row[3], row[4]) for row in rows] == [
        ("allow", "query_financials", "resource=financials/example-corp"),
        ("allow", "create_doc", "resource=document_template/board-packet"),
        ("allow", "notify_reviewer", "resource=reviewer_group/audit-committee"),
        ("deny", "notify_reviewer", "resource=reviewer_group/all-staff"),
        ("allow", "notify_reviewer", "resource=reviewer_group/all-staff"),
    ]
    assert "verified: every call carries the mission's approved reference" in trail


def test_the_demo_shows_the_analyst_s_and_the_intern_s_catalogs_side_by_side(
    demo: subprocess.CompletedProcess[str],
) -> None:
    lines = demo.stdout.splitlines()
    start = lines.index("tools/list, filtered by the same policy (the board agent for each caller):") + 1
    assert [line.split() for line in lines[start : start + 4]] == [
        ["server", "analyst", "(alice)", "intern", "(bob)"],
        [
            "finance",
            "query_financials,",
            "transfer_funds",
            "(none)",
        ],  # small transfers run, large ones wait
        ["documents", "create_doc", "(none)"],
        ["workflow", "notify_reviewer", "(none)"],
    ]
