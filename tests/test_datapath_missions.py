"""Missions on the wire, through real Envoy to the real MCP servers: a call names its mission in
the `callwarden-mission` header (or the token's `mission` claim); every way a mission can fail
to bind is a specific denial that never reaches the server, and is logged with the mission."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from callwarden.demo.agent import run_agent
from callwarden.extauthz.mission import MissionBook
from callwarden.policy.mission import mission_reference
from callwarden.policy.model import Mission
from tests.support.datapath import ALLOWED_CALLS, DENIED_CALL, DENY_RULE, DataPath, start_datapath, tools_call
from tests.support.missions import BOARD_PACKET, HOSTILE_HEADERS, approved, make_mission, moved

pytestmark = pytest.mark.integration

KEY = BOARD_PACKET.key
APPROVED = approved(BOARD_PACKET)
FINANCE_CALL = tools_call(*ALLOWED_CALLS["finance"])


@pytest.fixture(scope="module", name="book")
def book_fixture() -> MissionBook:
    return MissionBook()


@pytest.fixture(scope="module", name="datapath")
def datapath_fixture(tmp_path_factory: pytest.TempPathFactory, book: MissionBook) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("missions"), missions=book) as running:
        yield running


def header(mission: Mission, reference: str | None = None) -> dict[str, str]:
    return {"callwarden-mission": f"{mission.key}; ref={reference or mission_reference(mission.spec)}"}


def error_of(response: httpx2.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def call(
    dp: DataPath, mission: Mission, *, server: str = "finance", body: bytes = FINANCE_CALL, **token: Any
) -> httpx2.Response:
    return dp.post(server, body, token=dp.token(server, **token), headers=header(mission))


def test_a_call_bound_to_an_approved_mission_is_allowed_by_it_and_logged_with_it(
    datapath: DataPath, book: MissionBook
) -> None:
    book.update([APPROVED])
    before = datapath.executed("finance")
    response = call(datapath, APPROVED)
    assert response.status_code == 200 and "result" in response.json()
    line = datapath.decision_of(response)
    assert line["reasons"] == [f"mission:{KEY}/scope[0]"]
    assert line["mission"] == {"id": KEY, "reference": mission_reference(BOARD_PACKET.spec)}
    assert line["requests"][0]["context"]["mission"] == {
        "id": KEY,
        "reference": mission_reference(BOARD_PACKET.spec),
        "purpose": BOARD_PACKET.spec.purpose,
    }
    assert datapath.executed("finance") == before + 1


def test_a_plain_call_logs_no_mission(datapath: DataPath) -> None:
    response = datapath.post("finance", FINANCE_CALL, token=datapath.token("finance"))
    assert "mission" not in datapath.decision_of(response)


def test_the_mission_claim_in_the_token_binds_like_the_header(datapath: DataPath, book: MissionBook) -> None:
    book.update([APPROVED])
    claim = {"mission": {"id": KEY, "reference": mission_reference(BOARD_PACKET.spec)}}
    response = datapath.post("finance", FINANCE_CALL, token=datapath.token("finance", extra=claim))
    assert datapath.decision_of(response)["reasons"] == [f"mission:{KEY}/scope[0]"]


EDITED = APPROVED.model_copy(update={"spec": make_mission(purpose="prepare anything for anyone").spec})
OTHER_NAMESPACE = approved(make_mission(namespace="elsewhere"))
WIDE = approved(make_mission(name="wide", scope=[{"servers": ["finance"], "tools": ["query_financials"]}]))


@dataclass(frozen=True)
class Violation:
    missions: list[Mission]  # what the store holds
    presented: Mission  # what the call names in its header
    reason: str  # the single reason the decision log gives
    token: dict[str, Any] = field(default_factory=dict)
    body: bytes = FINANCE_CALL


EXPIRING = make_mission(expires="2026-12-01T00:00:00Z")
VIOLATIONS = {
    "not-approved": Violation([BOARD_PACKET], BOARD_PACKET, "mission-not-approved"),
    "denied": Violation([moved(BOARD_PACKET, "deny")], BOARD_PACKET, "mission-denied"),
    "expired": Violation(
        [approved(EXPIRING, now=datetime(2026, 11, 1, tzinfo=UTC))], EXPIRING, "mission-expired"
    ),
    "revoked": Violation([moved(APPROVED, "revoke")], APPROVED, "mission-revoked"),
    "spec-edited-after-approval": Violation([EDITED], EDITED, "mission-changed"),
    "unknown": Violation([], APPROVED, "mission-unknown"),
    "another-users-mission": Violation([APPROVED], APPROVED, "mission-subject", {"sub": "bob"}),
    "unnamed-agent": Violation([APPROVED], APPROVED, "mission-agent", {"client_id": "other-agent"}),
    "other-namespace": Violation([OTHER_NAMESPACE], OTHER_NAMESPACE, "mission-namespace"),
    "deny-overlapping-the-scope": Violation([WIDE], WIDE, DENY_RULE, body=tools_call(*DENIED_CALL)),
}


@pytest.mark.parametrize("case", list(VIOLATIONS.values()), ids=list(VIOLATIONS))
def test_a_mission_that_cannot_bind_denies_the_call_before_the_server(
    datapath: DataPath, book: MissionBook, case: Violation
) -> None:
    book.update(case.missions)
    before = datapath.executed("finance")
    response = call(datapath, case.presented, body=case.body, **case.token)
    assert response.status_code == 200 and error_of(response)["code"] == -32001
    assert response.json()["id"] == 1  # the SDK client matches the error to its request
    line = datapath.decision_of(response)
    assert (line["decision"], line["reasons"]) == ("deny", [case.reason])
    assert line["mission"]["id"] == case.presented.key
    assert datapath.executed("finance") == before


def test_a_reference_that_is_not_the_missions_is_denied(datapath: DataPath, book: MissionBook) -> None:
    book.update([APPROVED])
    response = datapath.post(
        "finance",
        FINANCE_CALL,
        token=datapath.token("finance"),
        headers=header(APPROVED, "sha256:" + "A" * 43),
    )
    assert datapath.decision_of(response)["reasons"] == ["mission-reference"]
    assert "Mission rejected: mission-reference" in error_of(response)["message"]


def test_revoking_mid_task_denies_the_next_call(datapath: DataPath, book: MissionBook) -> None:
    book.update([APPROVED])
    assert "result" in call(datapath, APPROVED).json()
    book.update([moved(APPROVED, "revoke")])
    response = call(datapath, APPROVED)
    assert datapath.decision_of(response)["reasons"] == ["mission-revoked"]


def test_a_malformed_header_is_denied_with_the_header_reason(datapath: DataPath) -> None:
    response = datapath.post(
        "finance", FINANCE_CALL, token=datapath.token("finance"), headers={"callwarden-mission": "q3"}
    )
    assert datapath.decision_of(response)["reasons"] == ["mission-header"]


def test_a_session_stream_under_a_revoked_mission_is_refused(datapath: DataPath, book: MissionBook) -> None:
    book.update([moved(APPROVED, "revoke")])
    response = datapath.send("GET", "finance", token=datapath.token("finance"), headers=header(APPROVED))
    assert response.status_code == 403 and "mission-revoked" in response.text


def test_a_batch_under_a_rejected_mission_is_denied_whole(datapath: DataPath, book: MissionBook) -> None:
    book.update([])
    batch = (
        b"["
        + tools_call(*ALLOWED_CALLS["finance"], id=1)
        + b","
        + tools_call(*ALLOWED_CALLS["finance"], id=2)
        + b"]"
    )
    response = call(datapath, APPROVED, body=batch)
    assert [item["id"] for item in orjson.loads(response.content)] == [1, 2]


def test_envoys_http_ext_authz_forwards_the_mission_header(tmp_path: Path) -> None:
    with start_datapath(tmp_path, missions=MissionBook([APPROVED]), transport="http") as dp:
        response = call(dp, APPROVED)
        assert dp.decision_of(response)["reasons"] == [f"mission:{KEY}/scope[0]"]


SENDABLE_HOSTILE = {
    name: value
    for name, value in HOSTILE_HEADERS.items()
    if value and value.isascii() and value.isprintable() and value == value.strip()
}


@pytest.mark.parametrize("value", list(SENDABLE_HOSTILE.values()), ids=list(SENDABLE_HOSTILE))
def test_a_hostile_header_through_envoy_is_denied_logged_and_never_executed(
    datapath: DataPath, book: MissionBook, value: str
) -> None:
    book.update([APPROVED])
    before = datapath.executed("finance")
    response = datapath.post(
        "finance", FINANCE_CALL, token=datapath.token("finance"), headers={"callwarden-mission": value}
    )
    line = datapath.decision_of(response)
    assert (line["decision"], line["reasons"]) == ("deny", ["mission-header"])
    assert datapath.executed("finance") == before


def test_a_repeated_header_is_refused_whole(datapath: DataPath, book: MissionBook) -> None:
    book.update([APPROVED])
    good = header(APPROVED)["callwarden-mission"]
    response = datapath.client.post(
        datapath.url,
        content=FINANCE_CALL,
        headers=[
            ("host", datapath.host("finance")),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", f"Bearer {datapath.token('finance')}"),
            ("callwarden-mission", good),
            ("callwarden-mission", good),
        ],
    )
    assert datapath.decision_of(response)["reasons"] == ["mission-header"]


DOCUMENTS_ONLY = approved(
    make_mission(name="documents-only", scope=[{"servers": ["documents"], "tools": ["create_doc"]}])
)


def listed(dp: DataPath, server: str, headers: dict[str, str] | None = None) -> tuple[str, ...]:
    return run_agent(dp.url, dp.token(server), [], host=dp.host(server), headers=headers).tools


def test_a_tools_list_under_a_mission_lists_only_what_the_mission_can_reach(
    datapath: DataPath, book: MissionBook
) -> None:
    book.update([DOCUMENTS_ONLY])
    assert listed(datapath, "finance") == (
        "query_financials",
        "transfer_funds",
    )  # no mission: all it could call
    assert listed(datapath, "finance", header(DOCUMENTS_ONLY)) == ()
    assert listed(datapath, "documents", header(DOCUMENTS_ONLY)) == ("create_doc",)


def test_a_refused_calls_log_line_still_names_who_asked(datapath: DataPath, book: MissionBook) -> None:
    book.update([moved(APPROVED, "revoke")])
    line = datapath.decision_of(call(datapath, APPROVED))
    assert line["mission"] | {"reference": "-"} == {
        "id": KEY,
        "reference": "-",
        "subject": "alice",
        "agent": "board-agent",
    }
