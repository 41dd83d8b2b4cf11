"""The demo's approval flow: a held transfer, a reviewer's approval, exactly-once completion.

Runs after the scenario, through the same gateway: the analyst's agent asks for a transfer over
the threshold while declaring the MCP tasks extension, gets a `working` task and the finance
server runs nothing; a reviewer approves (what `callwarden approvals approve` does); the next
`tasks/get` runs the transfer once and returns its result; the one after returns the same
result and the server still ran it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final

import httpx2

from callwarden.demo.dpop import DpopAuth, DpopKey
from callwarden.demo.servers import RunningServers
from callwarden.policy import approval as ap
from callwarden.stores.approvals import ApprovalRecords

TRANSFER: Final = {"name": "transfer_funds", "arguments": {"to": "acct-991", "amount": 50_000}}
TASKS_META: Final[dict[str, Any]] = {
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}
}


@dataclass(frozen=True)
class ApprovalFlow:
    """Where the flow runs: the finance MCP endpoint on the gateway, a token, the approval store."""

    url: str
    host: str
    token: str
    key: DpopKey | None  # the agent's DPoP key when the server takes DPoP (then the token is bound)
    store: ApprovalRecords
    store_path: str


def run_approval_flow(flow: ApprovalFlow, servers: RunningServers, out: IO[str]) -> list[str]:
    """Drive the flow and print each step; returns what went other than expected."""
    surprises: list[str] = []
    ledger = servers.ledgers["finance"]

    def expect(what: str, ok: bool) -> None:
        if not ok:
            surprises.append(f"approval flow: {what}")

    auth = DpopAuth(flow.token, flow.key) if flow.key is not None else None
    with httpx2.Client(timeout=15, trust_env=False, auth=auth) as http:
        post = _poster(http, flow)
        task = post(1, "tools/call", {**TRANSFER, "_meta": TASKS_META}).get("result", {})
        task_id = str(task.get("taskId"))
        print(
            f"\napproval flow: transfer_funds(amount=50000) -> task {task_id} {task.get('status')}", file=out
        )
        print(f"  {task.get('statusMessage')}", file=out)
        expect("the held call is a working task", task.get("status") == "working")
        expect("nothing ran while pending", ledger.count("transfer_funds") == 0)
        now = datetime.now(UTC)
        until = now + timedelta(minutes=30)
        ap.transition(
            flow.store, "board-packet", task_id, lambda r: ap.approve(r, "treasury-reviewer", now, until)
        )
        print(
            f"  reviewer: callwarden approvals --store {flow.store_path} approve {task_id} --until 30m",
            file=out,
        )
        for attempt in (1, 2):
            answer = post(10 + attempt, "tasks/get", {"taskId": task_id}).get("result", {})
            result = answer.get("result", {})
            text = " ".join(block.get("text", "") for block in result.get("content", []))
            disposition = result.get("_meta", {}).get("net.openid.authzen/disposition")
            print(f"  tasks/get #{attempt}: {answer.get('status')} ({disposition}): {text[:70]}", file=out)
            expect(f"tasks/get #{attempt} completed the task", answer.get("status") == "completed")
            expect(
                f"tasks/get #{attempt}: the transfer ran exactly once", ledger.count("transfer_funds") == 1
            )
    print(f"  finance server ran transfer_funds {ledger.count('transfer_funds')} time(s)", file=out)
    return surprises


def _poster(http: httpx2.Client, flow: ApprovalFlow) -> Callable[[int, str, dict[str, Any]], dict[str, Any]]:
    headers = {"host": flow.host, "accept": "application/json, text/event-stream"}
    if flow.key is None:
        headers["authorization"] = f"Bearer {flow.token}"

    def post(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        answer: dict[str, Any] = http.post(flow.url, json=message, headers=headers).json()
        return answer

    return post
