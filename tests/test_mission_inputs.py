"""Hostile input on the two new input paths: the `callwarden-mission` header (and the token's
`mission` claim), and the mission YAML a proposer submits. Each is refused with a specific
reason, never guessed at, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from callwarden.extauthz.mission import parse_mission_header, presented_mission
from callwarden.policy.loader import ConfigError, load_missions
from callwarden.policy.mission import MissionRejected, mission_reference
from tests.support.missions import BOARD_PACKET, EXAMPLE, GOOD_HEADER, HOSTILE_HEADERS

REFERENCE = mission_reference(BOARD_PACKET.spec)
GOOD = GOOD_HEADER


@pytest.mark.parametrize(
    "value",
    [
        GOOD,
        f"board-packet/q3-board-packet;ref={REFERENCE}",
        f"board-packet/q3-board-packet \t; \tref={REFERENCE}",
    ],
    ids=["canonical", "no-space", "tabs-and-spaces"],
)
def test_the_header_names_a_mission_and_its_reference(value: str) -> None:
    assert parse_mission_header(value) == ("board-packet/q3-board-packet", REFERENCE)


@pytest.mark.parametrize("value", list(HOSTILE_HEADERS.values()), ids=list(HOSTILE_HEADERS))
def test_a_malformed_header_is_refused_with_the_header_reason(value: str) -> None:
    with pytest.raises(MissionRejected) as raised:
        parse_mission_header(value)
    assert raised.value.reason == "mission-header"


HOSTILE_CLAIMS: dict[str, Any] = {
    "string": GOOD,
    "list": [{"id": "board-packet/q3-board-packet", "reference": REFERENCE}],
    "missing-reference": {"id": "board-packet/q3-board-packet"},
    "extra-member": {"id": "board-packet/q3-board-packet", "reference": REFERENCE, "scope": ["*"]},
    "id-not-a-string": {"id": ["board-packet", "q3"], "reference": REFERENCE},
    "reference-not-a-string": {"id": "board-packet/q3-board-packet", "reference": 1},
    "bad-id": {"id": "board-packet", "reference": REFERENCE},
    "bad-reference": {"id": "board-packet/q3-board-packet", "reference": "sha256:short"},
    "null": None,
}


@pytest.mark.parametrize("claim", list(HOSTILE_CLAIMS.values()), ids=list(HOSTILE_CLAIMS))
def test_a_malformed_mission_claim_is_refused_with_the_claim_reason(claim: Any) -> None:
    with pytest.raises(MissionRejected) as raised:
        presented_mission({}, {"sub": "alice", "mission": claim})
    assert raised.value.reason == "mission-claim"


def test_the_claim_alone_names_the_mission() -> None:
    claims = {"mission": {"id": "board-packet/q3-board-packet", "reference": REFERENCE}}
    assert presented_mission({}, claims) == ("board-packet/q3-board-packet", REFERENCE)


def test_header_and_claim_must_agree() -> None:
    claims = {"mission": {"id": "board-packet/other", "reference": REFERENCE}}
    with pytest.raises(MissionRejected) as raised:
        presented_mission({"callwarden-mission": GOOD}, claims)
    assert raised.value.reason == "mission-conflict"


def test_no_header_and_no_claim_is_no_mission() -> None:
    assert presented_mission({"authorization": "Bearer x"}, {"sub": "alice"}) is None


# --- mission files ------------------------------------------------------------------------------

VALID = (EXAMPLE / "q3-board-packet.yaml").read_text()


def load_text(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "mission.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as raised:
        load_missions([path])
    return [str(problem) for problem in raised.value.problems]


def test_the_example_mission_loads() -> None:
    [mission] = load_missions([EXAMPLE])
    assert mission.key == "board-packet/q3-board-packet" and mission.status.phase == "Proposed"


def test_an_unquoted_expiry_stays_the_string_that_was_written(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(VALID.replace('"2099-12-31T00:00:00Z"', "2099-12-31T00:00:00Z"))
    assert load_missions([path])[0].spec.expires == "2099-12-31T00:00:00Z"


HOSTILE_FILES: dict[str, tuple[str | bytes, str]] = {
    "carries-a-status": (VALID + "status:\n  phase: Approved\n", "status: a proposal carries no status"),
    "duplicate-key": (VALID.replace("  subject: alice\n", "  subject: alice\n  subject: bob\n"), "duplicate"),
    "bidi-override-in-purpose": (
        VALID.replace("prepare the Q3", "prepare the \u202eQ3"),
        "spec.purpose: contains the invisible or control character U+202E",
    ),
    "zero-width-in-subject": (VALID.replace("subject: alice", "subject: ali\u200bce"), "U+200B"),
    "expiry-with-offset": (VALID.replace("00:00:00Z", "00:00:00+02:00"), "spec.expires"),
    "expiry-not-a-time": (VALID.replace('"2099-12-31T00:00:00Z"', "tomorrow"), "spec.expires"),
    "unknown-field": (
        VALID.replace("  subject: alice\n", "  subject: alice\n  approvedBy: me\n"),
        "unknown field",
    ),
    "snake-case-field": (VALID.replace("clientId", "client_id"), "unknown field"),
    "agents-empty": (
        VALID.replace("  agents:\n    - clientId: board-agent\n", "  agents: []\n"),
        "spec.agents",
    ),
    "tools-wrong-type": (VALID.replace("tools: [create_doc]", "tools: create_doc"), "spec.scope[1].tools"),
    "glob-unicode-lookalike": (VALID.replace("[create_doc]", "[\u0441reate_doc]"), "spec.scope[1].tools[0]"),
    "oversized-purpose": (VALID.replace("prepare the Q3", "x" * 600), "spec.purpose"),
    "parent-not-a-reference": (
        VALID.replace("  subject: alice\n", "  subject: alice\n  parent: q3\n"),
        "spec.parent",
    ),
    "yaml-alias": (VALID.replace("  subject: alice\n", "  subject: &s alice\n  purpose2: *s\n"), "alias"),
    "not-utf8": (VALID.encode().replace(b"prepare", b"pr\xffepare"), "not UTF-8"),
    "truncated": (VALID[: VALID.index("  scope:") + 12], "spec"),
    "wrong-kind": (
        VALID.replace("kind: Mission", "kind: ToolPolicy"),
        "expected a callwarden.io/v1alpha1 Mission",
    ),
    "not-a-mapping": ("- just\n- a list\n", "expected a callwarden.io/v1alpha1 Mission"),
    "cel-that-does-not-compile": (
        VALID.replace('resource.id == "board-packet"', "resource.id =="),
        "spec.scope[1].when",
    ),
    "bad-namespace": (
        VALID.replace("namespace: board-packet", "namespace: Board_Packet"),
        "metadata.namespace",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(HOSTILE_FILES.values()), ids=list(HOSTILE_FILES))
def test_a_hostile_mission_file_is_refused_with_a_located_problem(
    tmp_path: Path, text: str | bytes, expected: str
) -> None:
    problems = load_text(tmp_path, text)
    assert any(expected in problem for problem in problems), problems
