"""`callwarden demo`: the board-packet scenario end to end on this machine.

Three official-SDK MCP servers and three local issuers start on free loopback ports; the
example configuration is pointed at them; real Envoy with callwarden's ext_authz goes in
front; an agent built on the official MCP client then makes the scenario's calls. The demo
prints what was decided and the decision log lines, and checks its own claims: every call
decided as the scenario expects, and no denied call ever executed on its server.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol

from callwarden.demo.agent import AgentRun, Outcome, ToolCall, run_agent
from callwarden.demo.approval import ApprovalFlow, run_approval_flow
from callwarden.demo.dpop import DpopKey
from callwarden.demo.issuers import LocalIssuer, RunningIssuers, start_issuers
from callwarden.demo.mission import MISSION_EXECUTIONS, run_mission_story
from callwarden.demo.servers import RunningServers, start_servers
from callwarden.extauthz.approvals import approval_desk
from callwarden.extauthz.mission_sync import follow_mission_file
from callwarden.extauthz.service import Gateway, start_gateway
from callwarden.policy.bundle import Bundle, compile_bundle
from callwarden.policy.loader import Config, config_from_objects, load_config
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.sqlite import SqliteDocuments

EXAMPLE: Final = Path(__file__).resolve().parents[2] / "examples" / "board-packet"
NAMESPACE: Final = "board-packet"
AGENT: Final = "board-agent"


@dataclass(frozen=True)
class Session:
    """One agent session against one server: who the token names and which calls it makes."""

    title: str
    server: str
    sub: str
    roles: tuple[str, ...]
    calls: tuple[tuple[ToolCall, str], ...]  # each call with the outcome the scenario expects
    client_id: str = AGENT
    # Which token the agent presents; "stolen": a DPoP-bound token replayed as Bearer, without its key.
    credential: Literal["valid", "none", "expired", "stolen"] = "valid"


SCENARIO: Final = (
    Session(
        "analyst's agent, finance",
        "finance",
        "alice",
        ("analyst",),
        (
            (ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"}), "allowed"),
            (ToolCall("query_financials", {"period": "2026-Q3", "entity": "other-corp"}), "denied"),
            (ToolCall("query_financials", {"period": "2026-Q2", "entity": "example-corp"}), "denied"),
            (ToolCall("delete_ledger", {"entity": "example-corp"}), "denied"),  # a tool no rule names
        ),
    ),
    Session(
        "analyst's agent, documents",
        "documents",
        "alice",
        ("analyst",),
        (
            (ToolCall("create_doc", {"template": "board-packet", "title": "Q3 board packet"}), "allowed"),
            (ToolCall("create_doc", {"template": "press-release", "title": "Q3 results"}), "denied"),
        ),
    ),
    Session(
        "analyst's agent, workflow",
        "workflow",
        "alice",
        ("analyst",),
        (
            (ToolCall("notify_reviewer", {"group": "audit-committee", "deadline": "2026-12-01"}), "allowed"),
            (ToolCall("notify_reviewer", {"group": "all-staff", "deadline": "2026-12-01"}), "denied"),
        ),
    ),
    Session(
        "intern's agent, finance",
        "finance",
        "bob",
        ("intern",),
        ((ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"}), "denied"),),
    ),
    Session(
        "no token, finance",
        "finance",
        "alice",
        ("analyst",),
        ((ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"}), "unauthenticated"),),
        credential="none",
    ),
    Session(
        "expired token, finance",
        "finance",
        "alice",
        ("analyst",),
        ((ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"}), "unauthenticated"),),
        credential="expired",
    ),
    Session(
        "stolen DPoP-bound token, finance",
        "finance",
        "alice",
        ("analyst",),
        ((ToolCall("query_financials", {"period": "2026-Q3", "entity": "example-corp"}), "unauthenticated"),),
        credential="stolen",
    ),
)


def _objects(config: Config) -> list[dict[str, Any]]:
    return [
        obj.model_dump(by_alias=True, exclude_none=True)
        for obj in (*config.servers.values(), *config.policies.values())
    ]


class Upstreams(Protocol):
    """Where each example server runs (`RunningServers`, or any stand-in a test starts)."""

    def base_url(self, name: str) -> str: ...


class IssuerEndpoint(Protocol):
    """What the configuration needs of an issuer: its `iss` value and its JWKS URL."""

    @property
    def issuer(self) -> str: ...

    @property
    def jwks_uri(self) -> str: ...


class Issuers(Protocol):
    def __getitem__(self, name: str, /) -> IssuerEndpoint: ...


def localize(config: Config, servers: Upstreams, issuers: Issuers) -> Config:
    """The example configuration, pointed at the upstreams and issuers started on this machine.

    Each McpServer `name` gets `servers.base_url(name)` as its upstream and trusts `issuers[name]`
    (its `iss` and JWKS URL), so tests can substitute issuers of their own (an outage, a rotation).
    """
    objects = _objects(config)
    for obj in objects:
        if obj["kind"] != "McpServer":
            continue
        name = obj["metadata"]["name"]
        obj["spec"]["upstream"] = {"url": servers.base_url(name)}
        for issuer in obj["spec"]["issuers"]:
            issuer["issuer"] = issuers[name].issuer
            issuer["jwksUri"] = issuers[name].jwks_uri
    return config_from_objects(objects)


def agent_credentials(
    session: Session, resource: str, dpop_mode: str, issuer: LocalIssuer
) -> tuple[str | None, DpopKey | None]:
    """The token the session's agent presents, and the key it proves possession with (None:
    it presents the token as Bearer). A server that takes DPoP gets tokens bound to the agent's
    key (`cnf.jkt`, RFC 9449 §6); a "stolen" token is such a token without its key."""
    if session.credential == "none":
        return None, None
    key = None if dpop_mode == "disabled" else DpopKey.generate()
    bound = {"cnf": {"jkt": key.jkt}} if key is not None else None
    ttl = -120 if session.credential == "expired" else 300
    token = issuer.mint(session.sub, resource, session.client_id, roles=session.roles, ttl=ttl, extra=bound)
    return token, None if session.credential == "stolen" else key


def _run_session(session: Session, gateway: Gateway, issuers: RunningIssuers, bundle: Bundle) -> AgentRun:
    server = bundle.servers[f"{NAMESPACE}/{session.server}"].server
    path = server.spec.route.path_prefix
    host = server.spec.route.hosts[0] if server.spec.route.hosts else None
    calls = [call for call, _ in session.calls]
    token, key = agent_credentials(
        session, server.spec.resource, server.spec.dpop.mode, issuers[session.server]
    )
    return run_agent(gateway.url + path, token, calls, host=host, dpop=key)


def _reason(outcome: Outcome, decisions: Mapping[str, Mapping[str, Any]]) -> str:
    """Why: the rules that allowed (from the decision log), the 401 challenge, or the denial."""
    if outcome.status == "allowed":
        line = decisions.get(outcome.decision_id or "")
        rules = ", ".join(line["reasons"]) if line else "no decision log line"
        result = " ".join((outcome.result_text or "").split())
        return f"allowed by {rules}" + (f"; result: {result[:40]}" if result else "")
    if outcome.status == "unauthenticated" and outcome.www_authenticate:
        return outcome.www_authenticate
    return (outcome.error_message or "")[:100]


def _print_table(rows: Sequence[tuple[str, str, str, str, str]], out: IO[str]) -> None:
    headers = ("session", "call", "decision", "decision id", "reason / result")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    line = "  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths, strict=True)) + "  " + headers[-1]
    print(line, file=out)
    print("-" * len(line), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1], file=out)


def run_demo(config_dir: Path = EXAMPLE, out: IO[str] = sys.stdout) -> int:
    """Run the scenario; 0 when every decision was the expected one and no denied call ran."""
    with (
        tempfile.TemporaryDirectory(prefix="callwarden-demo-") as workdir,
        start_servers(dict.fromkeys(("finance", "documents", "workflow"), 0)) as servers,
        start_issuers(dict.fromkeys(("finance", "documents", "workflow"), 0)) as issuers,
    ):
        store_path = str(Path(workdir) / "approvals.db")
        store = ApprovalRecords(SqliteDocuments(store_path))
        desk = approval_desk(store, Path(workdir) / "binding-key.pem", "urn:callwarden:demo", create_key=True)
        bundle = compile_bundle(
            localize(load_config([config_dir]), servers, issuers), approvals=desk.authority
        )
        audit_path = Path(workdir) / "decisions.jsonl"
        decided: list[tuple[Session, ToolCall, Outcome]] = []
        surprises: list[str] = []
        expected_executions: dict[tuple[str, str], int] = {}
        told = io.StringIO()  # the mission story, printed after the table
        with (
            follow_mission_file(Path(workdir) / "missions.db", interval=0.05) as missions,
            start_gateway(
                bundle,
                Path(workdir) / "envoy",
                audit_path=str(audit_path),
                approvals=desk,
                missions=missions.book,
            ) as gateway,
        ):
            print(f"gateway {gateway.url} (Envoy) -> ext_authz {gateway.ext_authz.address}\n", file=out)
            for session in SCENARIO:
                run = _run_session(session, gateway, issuers, bundle)
                outcomes = run.calls() or tuple(o for o in run.outcomes if o.status != "allowed")[:1]
                if len(outcomes) < len(session.calls):  # the run ended early: say so, never skip
                    missing = [call.describe() for call, _ in session.calls[len(outcomes) :]]
                    surprises.append(f"{session.title}: no outcome for {', '.join(missing)}")
                for (call, expected), outcome in zip(session.calls, outcomes, strict=False):
                    decided.append((session, call, outcome))
                    if outcome.status != expected:
                        surprises.append(
                            f"{session.title}: {call.describe()} was {outcome.status}, not {expected}"
                        )
                    if outcome.status == "allowed":
                        key = (session.server, call.tool)
                        expected_executions[key] = expected_executions.get(key, 0) + 1
            finance = bundle.servers[f"{NAMESPACE}/finance"].server
            reviewer_session = Session("approval flow", "finance", "alice", ("analyst",), ())
            token, agent_key = agent_credentials(
                reviewer_session, finance.spec.resource, finance.spec.dpop.mode, issuers["finance"]
            )
            assert token is not None  # a valid credential always has a token
            url = gateway.url + finance.spec.route.path_prefix
            flow = io.StringIO()  # printed after the scenario's table
            approval_surprises = run_approval_flow(
                ApprovalFlow(url, finance.spec.route.hosts[0], token, agent_key, store, store_path),
                servers,
                flow,
            )
            expected_executions[("finance", "transfer_funds")] = 1
            catalogs = _catalogs(gateway, issuers, bundle)
            story = run_mission_story(
                gateway,
                issuers,
                bundle,
                records=missions.records,
                sync=missions,
                audit_paths=[audit_path],
                out=told,
            )
            for key, count in MISSION_EXECUTIONS.items():
                expected_executions[key] = expected_executions.get(key, 0) + count
            gateway.ext_authz.decision_log.flush()
        entries = [json.loads(line) for line in audit_path.read_text().splitlines()]
        decisions = {entry["decision_id"]: entry for entry in entries}
        rows = [
            (
                session.title,
                call.describe(),
                outcome.status,
                outcome.decision_id or "-",
                _reason(outcome, decisions),
            )
            for session, call, outcome in decided
        ]
        _print_table(rows, out)
        out.write(flow.getvalue())
        _print_catalogs(catalogs, out)
        surprises += approval_surprises + story + _unexpected_executions(servers, expected_executions)
        print("\ndecision log (tools/call lines):", file=out)
        for entry in entries:
            if entry.get("method") == "tools/call" or entry.get("code") == 401:
                print(_summarize(entry), file=out)
        out.write(told.getvalue())
    for surprise in surprises:
        print(f"UNEXPECTED: {surprise}", file=out)
    print("\ndemo " + ("failed" if surprises else "passed: every call decided as expected"), file=out)
    return 1 if surprises else 0


# Who the side-by-side catalogs are listed for: the same board agent, for two people.
CATALOG_CALLERS: Final = (("analyst", "alice", ("analyst",)), ("intern", "bob", ("intern",)))


def _catalogs(
    gateway: Gateway, issuers: RunningIssuers, bundle: Bundle
) -> list[tuple[str, tuple[tuple[str, ...], ...]]]:
    """Each server's tools/list as each of CATALOG_CALLERS sees it through the gateway."""
    return [
        (
            server,
            tuple(
                _run_session(Session(title, server, sub, roles, ()), gateway, issuers, bundle).tools
                for title, sub, roles in CATALOG_CALLERS
            ),
        )
        for server in ("finance", "documents", "workflow")
    ]


def _print_catalogs(catalogs: Sequence[tuple[str, tuple[tuple[str, ...], ...]]], out: IO[str]) -> None:
    print("\ntools/list, filtered by the same policy (the board agent for each caller):", file=out)
    columns = [f"{title} ({sub})" for title, sub, _ in CATALOG_CALLERS]
    cells = [[", ".join(tools) or "(none)" for tools in listed] for _, listed in catalogs]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    for first, row in [("server", columns), *((server, cells[i]) for i, (server, _) in enumerate(catalogs))]:
        print(
            "  ".join([first.ljust(9), *(c.ljust(w) for c, w in zip(row, widths, strict=True))]).rstrip(),
            file=out,
        )


def _unexpected_executions(servers: RunningServers, expected: Mapping[tuple[str, str], int]) -> list[str]:
    """Compare what the servers executed with what was allowed: a denied call must never run."""
    problems = []
    for name in ("finance", "documents", "workflow"):
        for tool, count in servers.ledgers[name].counts().items():
            if count != expected.get((name, tool), 0):
                problems.append(
                    f"{name}.{tool} executed {count} times, {expected.get((name, tool), 0)} allowed"
                )
    return problems


def _summarize(entry: Mapping[str, Any]) -> str:
    request = entry["requests"][0] if entry.get("requests") else {}
    subject = request.get("subject", {}).get("id", "-")
    resource = request.get("resource", {})
    return json.dumps(
        {
            "decision_id": entry["decision_id"],
            "server": entry["server"],
            "tool": entry.get("tool"),
            "subject": subject,
            "resource": f"{resource.get('type', '-')}/{resource.get('id', '-')}",
            "decision": entry["decision"],
            "code": entry["code"],
            "reasons": entry["reasons"],
        }
    )
