"""The mission core: its reference, approval, resolution with a precise reason for every refusal,
scope matching within ToolPolicy guardrails, and lineage through approved expansions."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callwarden.policy.mission import (
    ActiveMission,
    MissionIndex,
    MissionRejected,
    MissionTransitionError,
    child_key,
    child_spec,
    decide_in_mission,
    effective_phase,
    mission_reference,
    transition,
)
from callwarden.policy.model import Mission, MissionSpec, MissionStatus, ToolPolicy
from callwarden.policy.pdp import compile_pdp
from tests.support.missions import BOARD_PACKET, approved, make_mission, moved

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
KEY = "board-packet/q3-board-packet"


def request(
    server: str, tool: str, resource_id: str, *, method: str = "tools/call", **props: Any
) -> dict[str, Any]:
    return {
        "subject": {"type": "identity", "id": "alice", "properties": {"roles": ["analyst"]}},
        "action": {"name": "call"},
        "resource": {"type": "thing", "id": resource_id, "properties": props},
        "context": {
            "agent": "board-agent",
            "mcp": {"server": f"board-packet/{server}", "method": method, "tool": tool},
        },
    }


def active(*missions: Mission) -> ActiveMission:
    index = MissionIndex(missions)
    root = missions[0]
    return index.resolve(root.key, mission_reference(root.spec), NOW)


def policy(*rules: dict[str, Any]) -> ToolPolicy:
    return ToolPolicy.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "ToolPolicy",
            "metadata": {"name": "guard", "namespace": "board-packet"},
            "spec": {"targets": ["*"], "rules": list(rules)},
        }
    )


def decide(mission: ActiveMission, call: dict[str, Any], *rules: dict[str, Any]) -> Any:
    pdp = compile_pdp([policy(*rules)] if rules else [])
    return decide_in_mission(pdp.evaluate(call), call, mission)


# --- the reference -------------------------------------------------------------------------


def test_reference_is_sha256_of_the_jcs_spec_in_unpadded_base64url() -> None:
    reference = mission_reference(BOARD_PACKET.spec)
    assert reference.startswith("sha256:")
    assert len(base64.urlsafe_b64decode(reference.removeprefix("sha256:") + "=")) == 32


def test_reference_ignores_key_order_and_defaults_written_out() -> None:
    body = BOARD_PACKET.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    reordered = MissionSpec.model_validate({**dict(reversed(list(body.items()))), "parent": None})
    assert mission_reference(reordered) == mission_reference(BOARD_PACKET.spec)


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "prepare the Q3 board packet for all staff"},
        {"subject": "bob"},
        {"expires": "2100-01-01T00:00:00Z"},
        {"agents": [{"clientId": "board-agent"}, {"clientId": "other-agent"}]},
        {"scope": [{"servers": ["finance"], "tools": ["*"]}]},
    ],
    ids=["purpose", "subject", "expiry", "agents", "scope"],
)
def test_any_edit_of_the_spec_changes_the_reference(change: dict[str, Any]) -> None:
    assert mission_reference(make_mission(**change).spec) != mission_reference(BOARD_PACKET.spec)


# --- approving -----------------------------------------------------------------------------


def test_approval_records_the_approved_reference_approver_and_history() -> None:
    status = transition(BOARD_PACKET, "approve", "carol", NOW)
    assert (status.phase, status.approver, status.time) == ("Approved", "carol", "2026-12-03T10:00:00Z")
    assert status.reference == mission_reference(BOARD_PACKET.spec)
    assert [(step.phase, step.by) for step in status.history] == [("Approved", "carol")]


@pytest.mark.parametrize(
    ("phase_from", "command"),
    [
        ("Approved", "approve"),
        ("Approved", "deny"),
        ("Proposed", "revoke"),
        ("Revoked", "approve"),
        ("Denied", "approve"),
    ],
)
def test_a_command_that_does_not_apply_to_the_phase_is_refused(phase_from: str, command: str) -> None:
    mission = BOARD_PACKET
    if phase_from != "Proposed":
        mission = approved(mission)
    if phase_from in ("Revoked",):
        mission = moved(mission, "revoke")
    if phase_from == "Denied":
        mission = moved(BOARD_PACKET, "deny")
    with pytest.raises(MissionTransitionError):
        transition(mission, command, "carol", datetime.now(UTC))


def test_an_expired_mission_cannot_be_approved() -> None:
    with pytest.raises(MissionTransitionError, match="Expired"):
        transition(make_mission(expires="2020-01-01T00:00:00Z"), "approve", "carol", NOW)


def test_a_spec_edited_after_approval_shows_as_changed_and_can_be_approved_again() -> None:
    edited = approved(BOARD_PACKET).model_copy(update={"spec": make_mission(purpose="something else").spec})
    assert effective_phase(edited, NOW) == "Changed"
    assert transition(edited, "approve", "carol", NOW).reference == mission_reference(edited.spec)


# --- resolving a presented mission ------------------------------------------------------------


def rejection(index: MissionIndex, key: str = KEY, reference: str | None = None, now: datetime = NOW) -> str:
    with pytest.raises(MissionRejected) as raised:
        index.resolve(key, reference or mission_reference(BOARD_PACKET.spec), now)
    return raised.value.reason


def test_an_approved_unexpired_mission_at_its_reference_resolves() -> None:
    resolved = active(approved(BOARD_PACKET))
    assert resolved.key == KEY and [grant.index for grant in resolved.grants] == [0, 1, 2]
    assert resolved.context() == {
        "id": KEY,
        "reference": mission_reference(BOARD_PACKET.spec),
        "purpose": "prepare the Q3 board packet for the audit committee",
    }


def test_each_refusal_has_its_own_reason() -> None:
    good = approved(BOARD_PACKET)
    edited = good.model_copy(update={"spec": make_mission(purpose="changed").spec})
    unrunnable = make_mission(scope=[{"servers": ["finance"], "tools": ["q"], "when": "resource.id =="}])
    # Approved past the CLI (which refuses it): a status written by hand with kubectl.
    by_hand = MissionStatus(phase="Approved", reference=mission_reference(unrunnable.spec))
    bad_cel = unrunnable.model_copy(update={"status": by_hand})
    assert rejection(MissionIndex([]), "board-packet/nope") == "mission-unknown"
    assert rejection(MissionIndex([BOARD_PACKET])) == "mission-not-approved"
    assert rejection(MissionIndex([moved(BOARD_PACKET, "deny")])) == "mission-denied"
    assert rejection(MissionIndex([moved(good, "revoke")])) == "mission-revoked"
    assert rejection(MissionIndex([edited]), reference=mission_reference(edited.spec)) == "mission-changed"
    assert rejection(MissionIndex([good]), reference="sha256:" + "A" * 43) == "mission-reference"
    assert rejection(MissionIndex([good]), now=datetime(2100, 1, 1, tzinfo=UTC)) == "mission-expired"
    assert rejection(MissionIndex([bad_cel]), reference=mission_reference(bad_cel.spec)) == "mission-invalid"


@pytest.mark.parametrize(
    ("subject", "agent", "actors", "reason"),
    [
        ("bob", "board-agent", None, "mission-subject"),
        ("alice", "other-agent", None, "mission-agent"),
        ("alice", None, None, "mission-agent"),
    ],
    ids=["another-users-token", "unnamed-agent", "no-agent-claim"],
)
def test_the_caller_must_be_the_missions_subject_and_a_named_agent(
    subject: str, agent: str | None, actors: list[str] | None, reason: str
) -> None:
    with pytest.raises(MissionRejected) as raised:
        active(approved(BOARD_PACKET)).check_caller(subject, agent, actors)
    assert raised.value.reason == reason


def test_an_agent_named_with_an_actor_chain_must_present_exactly_that_chain() -> None:
    mission = active(approved(make_mission(agents=[{"clientId": "board-agent", "actors": ["orchestrator"]}])))
    mission.check_caller("alice", "board-agent", ["orchestrator"])
    for chain in (None, ["other"], ["orchestrator", "extra"]):
        with pytest.raises(MissionRejected, match="does not name this agent"):
            mission.check_caller("alice", "board-agent", chain)


# --- deciding within the scope ------------------------------------------------------------------


def test_a_call_inside_the_scope_is_allowed_by_the_grant_that_covers_it() -> None:
    decision = decide(
        active(approved(BOARD_PACKET)),
        request("finance", "query_financials", "example-corp", period="2026-Q3"),
    )
    assert decision.allowed and decision.reasons == (f"mission:{KEY}/scope[0]",)


def test_the_mission_covers_a_call_that_toolpolicy_would_hold_for_approval() -> None:
    hold = {"name": "hold", "tools": ["create_doc"], "effect": "RequireApproval"}
    assert decide(
        active(approved(BOARD_PACKET)), request("documents", "create_doc", "board-packet"), hold
    ).allowed


def test_a_deny_rule_overlapping_the_scope_wins() -> None:
    deny = {"name": "no-finance", "tools": ["query_financials"], "effect": "Deny"}
    call = request("finance", "query_financials", "example-corp", period="2026-Q3")
    decision = decide(active(approved(BOARD_PACKET)), call, deny)
    assert not decision.allowed and not decision.requestable
    assert decision.reasons == ("board-packet/guard/no-finance",)


def test_a_call_outside_the_scope_is_denied_naming_the_proposed_expansion() -> None:
    mission = active(approved(BOARD_PACKET))
    call = request("workflow", "notify_reviewer", "all-staff")
    decision = decide(mission, call)
    expansion = child_key(
        mission, child_spec(mission, "board-packet/workflow", "notify_reviewer", call["resource"])
    )
    assert not decision.allowed and not decision.requestable  # no per-call access request beside it
    assert decision.reasons == (f"mission-outside:{KEY}",)
    assert f"proposed expansion {expansion}" in decision.message


def test_a_standing_allow_rule_does_not_widen_the_mission() -> None:
    allow = {"name": "anything", "tools": ["*"], "effect": "Allow"}
    decision = decide(active(approved(BOARD_PACKET)), request("finance", "transfer_funds", "x"), allow)
    assert decision.reasons == (f"mission-outside:{KEY}",)


def test_a_grant_on_another_server_does_not_cover_the_same_tool_here() -> None:
    assert not decide(
        active(approved(BOARD_PACKET)), request("documents", "query_financials", "example-corp")
    ).allowed


def test_a_grant_whose_condition_fails_never_allows() -> None:
    mission = active(
        approved(
            make_mission(scope=[{"servers": ["*"], "tools": ["*"], "when": "resource.properties.missing"}])
        )
    )
    decision = decide(mission, request("finance", "query_financials", "example-corp"))
    assert not decision.allowed and "failed" in decision.message


def test_methods_other_than_tools_call_are_decided_by_toolpolicy_alone() -> None:
    listing = request("finance", "", "finance", method="tools/list")
    open_list = {"name": "list", "methods": ["tools/list"], "effect": "Allow"}
    assert decide(active(approved(BOARD_PACKET)), listing, open_list).reasons == ("board-packet/guard/list",)
    assert not decide(active(approved(BOARD_PACKET)), listing).allowed


# --- lineage -------------------------------------------------------------------------------------


def expansion(parent: Mission, resource_id: str = "all-staff", **spec: Any) -> Mission:
    parent_active = MissionIndex([parent]).resolve(parent.key, mission_reference(parent.spec), NOW)
    proposed = child_spec(
        parent_active,
        "board-packet/workflow",
        "notify_reviewer",
        {"type": "reviewer_group", "id": resource_id},
    )
    body = proposed.model_dump(mode="json", by_alias=True, exclude_none=True) | spec
    name = child_key(parent_active, proposed).split("/")[1]
    return make_mission(name=name, **body)


def test_an_approved_expansion_widens_its_parent_and_is_named_in_the_decision() -> None:
    parent = approved(BOARD_PACKET)
    child = approved(expansion(parent))
    mission = active(parent, child)
    decision = decide(
        mission,
        {
            **request("workflow", "notify_reviewer", "all-staff"),
            "resource": {"type": "reviewer_group", "id": "all-staff"},
        },
    )
    assert decision.allowed and decision.reasons == (f"mission:{child.key}/scope[0]",)
    assert mission.lineage == (child.key,) and mission.key == KEY


def test_an_expansion_is_exactly_the_missing_grant() -> None:
    child = expansion(approved(BOARD_PACKET))
    assert child.spec.parent == mission_reference(BOARD_PACKET.spec)
    assert [g.model_dump(exclude_none=True) for g in child.spec.scope] == [
        {
            "servers": ["workflow"],
            "tools": ["notify_reviewer"],
            "when": 'resource.type == "reviewer_group" && resource.id == "all-staff"',
        }
    ]
    assert (child.spec.subject, child.spec.agents, child.spec.expires) == (
        BOARD_PACKET.spec.subject,
        BOARD_PACKET.spec.agents,
        BOARD_PACKET.spec.expires,
    )


def test_an_expansion_quotes_hostile_resource_ids_as_cel_string_literals() -> None:
    child = expansion(approved(BOARD_PACKET), resource_id='x" || true || "')
    [grant] = MissionIndex([approved(child)]).resolve(child.key, mission_reference(child.spec), NOW).grants
    assert grant.when is not None
    outside = {
        **request("workflow", "notify_reviewer", "anyone"),
        "resource": {"type": "reviewer_group", "id": "anyone"},
    }
    assert not decide(active(approved(child)), outside).allowed


@pytest.mark.parametrize(
    "variant",
    ["proposed", "other-subject", "expired", "edited-after-approval"],
)
def test_only_an_approved_expansion_of_the_same_subject_and_in_time_widens(variant: str) -> None:
    parent = approved(BOARD_PACKET)
    child = {
        "proposed": expansion(parent),
        "other-subject": approved(expansion(parent, subject="bob")),
        "expired": approved(expansion(parent), now=NOW - timedelta(days=1)).model_copy(
            update={"spec": expansion(parent, expires="2026-12-03T09:00:00Z").spec}
        ),
        "edited-after-approval": approved(expansion(parent)).model_copy(
            update={"spec": expansion(parent, purpose="x").spec}
        ),
    }[variant]
    assert active(parent, child).lineage == ()


def test_lineage_lists_every_descendant_whatever_its_phase() -> None:
    parent = approved(BOARD_PACKET)
    child = approved(expansion(parent))
    grandchild = expansion(child, resource_id="board")
    denied = moved(expansion(parent, resource_id="press"), "deny")
    index = MissionIndex([parent, child, grandchild, denied])
    assert [m.key for m in index.lineage_of(KEY)] == [KEY, *sorted([child.key, denied.key]), grandchild.key]


def test_the_catalog_under_a_mission_is_what_its_grants_can_reach() -> None:
    mission = active(approved(BOARD_PACKET))
    assert mission.reaches("board-packet/finance", "query_financials")
    assert not mission.reaches("board-packet/finance", "transfer_funds")
    assert not mission.reaches("board-packet/documents", "query_financials")


def test_a_mission_whose_condition_does_not_compile_cannot_be_approved() -> None:
    broken = make_mission(scope=[{"servers": ["finance"], "tools": ["q"], "when": "resource.id =="}])
    with pytest.raises(MissionTransitionError, match=r"cannot be approved: spec.scope\[0\].when"):
        transition(broken, "approve", "carol", NOW)
