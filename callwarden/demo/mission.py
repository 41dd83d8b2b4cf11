"""The mission part of `callwarden demo`: one approval, three servers, one expansion, the audit.

A person (carol) approves "prepare the Q3 board packet for the audit committee" once; the
board agent then calls finance, documents and workflow (three issuers) under that mission with
no further prompt; notifying all staff is outside it, so the call is denied and proposes an
expansion; carol approves the expansion and the same call goes through; the audit trail of the
mission, rebuilt from the decision log, ends the story.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

import orjson

from callwarden.demo.agent import ToolCall, run_agent
from callwarden.demo.dpop import DpopKey
from callwarden.demo.issuers import RunningIssuers
from callwarden.extauthz.mission_sync import PollingSync
from callwarden.extauthz.service import Gateway
from callwarden.policy.bundle import Bundle
from callwarden.policy.loader import load_missions
from callwarden.policy.mission import MissionIndex, MissionRejected, mission_reference
from callwarden.policy.trail import build_trail, render_text
from callwarden.stores.missions import MissionRecords

MISSIONS: Final = Path(__file__).resolve().parents[2] / "examples" / "board-packet" / "missions"
APPROVER: Final = "carol"
AGENT: Final = "board-agent"


@dataclass(frozen=True)
class Step:
    server: str
    call: ToolCall
    expected: str  # "allowed" or "denied"


STORY: Final = (
    Step("finance", ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"}), "allowed"),
    Step(
        "documents",
        ToolCall("create_doc", {"template": "board-packet", "title": "Q3 board packet"}),
        "allowed",
    ),
    Step(
        "workflow",
        ToolCall("notify_reviewer", {"group": "audit-committee", "deadline": "2026-12-01"}),
        "allowed",
    ),
    Step("workflow", ToolCall("notify_reviewer", {"group": "all-staff", "deadline": "2026-12-01"}), "denied"),
)
AFTER_EXPANSION: Final = Step(
    "workflow", ToolCall("notify_reviewer", {"group": "all-staff", "deadline": "2026-12-01"}), "allowed"
)
# What the servers run during the story: every allowed call once, the denied one never.
MISSION_EXECUTIONS: Final = {
    ("finance", "query_financials"): 1,
    ("documents", "create_doc"): 1,
    ("workflow", "notify_reviewer"): 2,
}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _enforced(sync: PollingSync, key: str, reference: str) -> bool:
    """Whether ext_authz already binds calls to mission `key`, approved at `reference` (not merely
    loaded: the poll may have read it between the proposal and the approval)."""
    try:
        sync.book.index.resolve(key, reference, datetime.now(UTC))
    except MissionRejected:
        return False
    return True


def _expanded(sync: PollingSync, key: str, reference: str) -> bool:
    """Whether ext_authz already enforces an approved expansion of mission `key`."""
    try:
        return bool(sync.book.index.resolve(key, reference, datetime.now(UTC)).lineage)
    except MissionRejected:
        return False


def _call(
    step: Step, gateway: Gateway, issuers: RunningIssuers, bundle: Bundle, header: str
) -> tuple[str, str]:
    server = bundle.servers[f"board-packet/{step.server}"].server
    # A server that takes DPoP gets a token bound to the agent's key (as in the demo's sessions).
    key = None if server.spec.dpop.mode == "disabled" else DpopKey.generate()
    bound = None if key is None else {"cnf": {"jkt": key.jkt}}
    token = issuers[step.server].mint("alice", server.spec.resource, AGENT, roles=("analyst",), extra=bound)
    run = run_agent(
        gateway.url + server.spec.route.path_prefix,
        token,
        [step.call],
        host=server.spec.route.hosts[0],
        headers={"callwarden-mission": header},
        dpop=key,
    )
    [outcome] = run.calls() or (run.outcomes[-1],)
    return outcome.status, outcome.error_message or ""


def run_mission_story(
    gateway: Gateway,
    issuers: RunningIssuers,
    bundle: Bundle,
    *,
    records: MissionRecords,
    sync: PollingSync,
    audit_paths: Sequence[Path],
    out: IO[str],
) -> list[str]:
    """Tell the story on a running gateway whose ext_authz follows `records` through `sync`;
    the surprises (empty when every step went as told)."""
    surprises: list[str] = []
    [mission] = load_missions([MISSIONS])
    reference = mission_reference(mission.spec)
    records.propose(mission, "alice")
    records.move(mission.key, "approve", APPROVER)
    header = f"{mission.key}; ref={reference}"
    print(f"\nmission {mission.key}: {mission.spec.purpose!r}", file=out)
    print(f"  approved once by {APPROVER} at {reference}", file=out)
    if not wait_until(lambda: _enforced(sync, mission.key, reference)):
        return ["the approved mission never reached ext_authz"]
    expansion = ""
    for step in STORY:
        status, message = _call(step, gateway, issuers, bundle, header)
        print(f"  {step.server:<9} {step.call.describe():<70} {status}", file=out)
        if status != step.expected:
            surprises.append(f"mission: {step.call.describe()} was {status}, not {step.expected}")
        if "proposed expansion " in message:
            expansion = message.split("proposed expansion ", 1)[1].split(" ", 1)[0]
    if not expansion:
        return [*surprises, "mission: the call outside the mission proposed no expansion"]
    if not wait_until(lambda: records.get(expansion) is not None):
        return [*surprises, f"mission: expansion {expansion} was not proposed"]
    print(f"  outside the mission: expansion {expansion} proposed; {APPROVER} approves it", file=out)
    records.move(expansion, "approve", APPROVER)
    if not wait_until(lambda: _expanded(sync, mission.key, reference)):
        return [*surprises, "mission: the approved expansion never reached ext_authz"]
    status, _ = _call(AFTER_EXPANSION, gateway, issuers, bundle, header)
    print(f"  {AFTER_EXPANSION.server:<9} {AFTER_EXPANSION.call.describe():<70} {status}", file=out)
    if status != AFTER_EXPANSION.expected:
        surprises.append(f"mission: after the expansion the call was {status}")
    gateway.ext_authz.decision_log.flush()
    lines = [
        (f"{path}:{number}", orjson.loads(raw))
        for path in audit_paths
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1)
    ]
    lineage = MissionIndex(records.all("board-packet")).lineage_of(mission.key)
    trail = build_trail(lineage, lines)
    print(f"\ncallwarden audit --mission {mission.key}:", file=out)
    out.write(render_text(trail))
    if not trail["verified"]:
        surprises.append("mission: the audit trail did not verify")
    return surprises
