"""Per-stage costs of one Check, in process (µs, median of repeats, one thread).

    .venv/bin/python bench/stages.py [--json bench/results/stages.json] [--smoke]

Each stage is the data path's own function on the board-packet finance server, with a
CheckRequest shaped like the one Envoy sends (headers, raw body, context extension). The whole
`Enforcer.check` is measured too; the stages do not add up to it exactly (the decision log's
writer thread, metrics, and glue between the stages are not stages of their own).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from command import run_command  # noqa: E402
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest  # noqa: E402
from harness import EXAMPLE, cpu_us_per_call, write_config  # noqa: E402

from callwarden.demo.dpop import DpopKey  # noqa: E402
from callwarden.demo.issuers import RunningIssuers, start_issuers  # noqa: E402
from callwarden.extauthz import http_authz, metrics  # noqa: E402
from callwarden.extauthz.approvals import approval_desk  # noqa: E402
from callwarden.extauthz.audit import DecisionLog, new_decision_id  # noqa: E402
from callwarden.extauthz.decide import DECISION_HEADER, EnforcementState, Enforcer  # noqa: E402
from callwarden.extauthz.dpop import DpopRuntime, DpopVerifier  # noqa: E402
from callwarden.extauthz.extproc import Hooks  # noqa: E402
from callwarden.extauthz.jsonrpc import parse_body  # noqa: E402
from callwarden.extauthz.mission import MISSION_HEADER, MissionBook, presented_mission  # noqa: E402
from callwarden.extauthz.responses import allow_response  # noqa: E402
from callwarden.extauthz.service import default_hooks  # noqa: E402
from callwarden.extauthz.token import JwksStore, TokenValidator  # noqa: E402
from callwarden.policy.bundle import Bundle, CompiledServer, compile_bundle  # noqa: E402
from callwarden.policy.decide import decide, decide_messages  # noqa: E402
from callwarden.policy.loader import load_config, load_missions  # noqa: E402
from callwarden.policy.mapping import AuthorizationRequests  # noqa: E402
from callwarden.policy.mission import ActiveMission, mission_reference, transition  # noqa: E402
from callwarden.policy.model import Dpop  # noqa: E402
from callwarden.stores.approvals import ApprovalRecords  # noqa: E402
from callwarden.stores.sqlite import SqliteDocuments  # noqa: E402

FINANCE = "board-packet/finance"
DOCUMENTS = "board-packet/documents"
FINANCE_AUDIENCE = "https://finance.board.example/mcp"
DOCUMENTS_AUDIENCE = "https://documents.board.example/mcp"


def check_request(
    body: bytes, token: str, server: str = FINANCE, host: str = "finance.board.example"
) -> CheckRequest:
    """A CheckRequest as Envoy 1.40 sends it for a POST /mcp (headers seen in the tests' logs)."""
    request = CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "127.0.0.1"
    attributes.source.address.socket_address.port_value = 51234
    attributes.destination.address.socket_address.address = "127.0.0.1"
    attributes.destination.address.socket_address.port_value = 10000
    attributes.context_extensions["mcp_server"] = server
    http = attributes.request.http
    http.id = "12345678901234567890"
    http.method = "POST"
    http.path = "/mcp"
    http.host = host
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.size = len(body)
    http.raw_body = body
    http.headers.update(
        {
            ":authority": host,
            ":method": "POST",
            ":path": "/mcp",
            ":scheme": "http",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token}",
            "content-length": str(len(body)),
            "content-type": "application/json",
            "mcp-protocol-version": "2025-06-18",
            "user-agent": "bench",
            "x-forwarded-proto": "http",
            "x-request-id": "5f0c6a0e-6b55-4a36-9d0e-3f1f0a3b8a0c",
        }
    )
    return request


def request_bodies() -> dict[str, bytes]:
    allowed = json.loads((EXAMPLE / "requests" / "query-q3-example-corp.json").read_text())
    denied = json.loads((EXAMPLE / "requests" / "query-q3-other-corp.json").read_text())
    batch = [{**allowed, "id": index} for index in range(1, 6)]
    return {
        name: json.dumps(body).encode()
        for name, body in (("allowed", allowed), ("denied", denied), ("batch", batch))
    }


@dataclass(frozen=True)
class MissionBench:
    """The example mission, approved, in a book; a CheckRequest naming it; it bound to finance."""

    book: MissionBook
    check: CheckRequest
    headers: Any  # the check's header map (a protobuf map)
    active: ActiveMission


def mission_bench(
    body: bytes, token: str, finance: CompiledServer, claims: Mapping[str, Any]
) -> MissionBench:
    [mission] = load_missions([EXAMPLE / "missions"])
    status = transition(mission, "approve", "bench", datetime.now(UTC))
    book = MissionBook([mission.model_copy(update={"status": status})])
    check = check_request(body, token)
    check.attributes.request.http.headers[MISSION_HEADER] = (
        f"{mission.key}; ref={mission_reference(mission.spec)}"
    )
    headers = check.attributes.request.http.headers
    active = book.bind(finance, presented_mission(headers, claims) or ("", ""), claims)
    return MissionBench(book, check, headers, active)


def bundle_for(issuer_config: Path, *, finance_dpop: Dpop | None = None) -> Bundle:
    """The bench configuration; `finance_dpop` turns DPoP on for finance (as the example ships)."""
    config = load_config([issuer_config])
    if finance_dpop is not None:
        finance = config.servers[FINANCE]
        spec = finance.spec.model_copy(update={"dpop": finance_dpop})
        config.servers[FINANCE] = finance.model_copy(update={"spec": spec})
    return compile_bundle(config)


FINANCE_URI = "http://finance.board.example/mcp"  # as check_request's headers address it


def _signed_proofs(key: DpopKey, token: str, count: int) -> Iterator[str]:
    """Fresh DPoP proofs signed ahead of time (each is good once: the replay cache sees to it),
    so that only verifying one is measured."""
    return iter([key.proof("POST", FINANCE_URI, token) for _ in range(count)])


def dpop_costs(
    issuers: RunningIssuers, config_dir: Path, jwks: JwksStore, us: Callable[..., float], calls: int
) -> tuple[dict[str, float], dict[str, float]]:
    """DPoP's per-request share: one proof check (ES256 signature, claims, replay cache), which
    no cache can save, and the whole check with a proof. `calls` bounds how many proofs are used."""
    key = DpopKey.generate()
    token = issuers["finance"].mint(
        "alice", FINANCE_AUDIENCE, "board-agent", roles=["analyst"], ttl=3600, extra={"cnf": {"jkt": key.jkt}}
    )
    required = Dpop(mode="required", algorithms=["ES256"])
    bundle = bundle_for(config_dir, finance_dpop=required)
    runtime = DpopRuntime.single_process()
    verifier = DpopVerifier(FINANCE, required, runtime)
    proofs = _signed_proofs(key, token, calls)
    stage = us(
        lambda: verifier.verify(next(proofs), method="POST", uri=FINANCE_URI, token=token, jkt=key.jkt),
        scale=20,
    )
    body = request_bodies()["allowed"]
    checks = iter([_dpop_check(body, token, proof) for proof in _signed_proofs(key, token, calls)])
    with tempfile.TemporaryDirectory() as tmp:
        decision_log = DecisionLog(path=str(Path(tmp) / "decisions.log"))
        enforcer = Enforcer(EnforcementState.build(bundle, jwks, runtime), decision_log)
        whole = us(lambda: enforcer.check(next(checks)), scale=20)
        decision_log.close()
    return (
        {"DPoP proof check (ES256, per request: never cached)": stage},
        {"Enforcer.check, allowed, cached token + DPoP proof": whole},
    )


def _dpop_check(body: bytes, token: str, proof: str) -> CheckRequest:
    request = check_request(body, token)
    headers = request.attributes.request.http.headers
    headers["authorization"] = f"DPoP {token}"
    headers["dpop"] = proof
    return request


def measure(smoke: bool) -> dict[str, Any]:
    loops, repeats = (200, 1) if smoke else (20_000, 5)

    def us(operation: Callable[[], Any], scale: int = 1) -> float:
        return cpu_us_per_call(operation, loops=max(50, loops // scale), repeats=repeats)

    bodies = request_bodies()
    with (
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
        tempfile.TemporaryDirectory() as tmp,
    ):
        issuers_config = write_config(issuers, Path(tmp) / "config")
        bundle = bundle_for(issuers_config)
        finance = bundle.servers[FINANCE]
        jwks = JwksStore()
        rs_tokens = [
            issuers["finance"].mint("alice", FINANCE_AUDIENCE, "board-agent", roles=["analyst"], ttl=3600)
            for _ in range(2)
        ]
        es_tokens = [
            issuers["documents"].mint("alice", DOCUMENTS_AUDIENCE, "board-agent", roles=["analyst"], ttl=3600)
            for _ in range(2)
        ]
        cached = TokenValidator(finance.server, jwks)
        # One-entry caches and two alternating tokens: every validation is a full signature check.
        uncached_rs = TokenValidator(finance.server, jwks, cache_size=1)
        uncached_es = TokenValidator(bundle.servers[DOCUMENTS].server, jwks, cache_size=1)
        rs_headers = [f"Bearer {t}" for t in rs_tokens]
        es_headers = [f"Bearer {t}" for t in es_tokens]
        claims = cached.validate(rs_headers[0])
        uncached_es.validate(es_headers[0])
        flip = iter(range(10**12))

        check = check_request(bodies["allowed"], rs_tokens[0])
        wire = check.SerializeToString()
        params = json.loads(bodies["allowed"])["params"]
        mapped = finance.mapping.map("tools/call", params, claims)
        assert isinstance(mapped, AuthorizationRequests)

        log_path = Path(tmp) / "decisions.log"
        decision_log = DecisionLog(path=str(log_path))
        missions = mission_bench(bodies["allowed"], rs_tokens[0], finance, claims)
        enforcer = Enforcer(EnforcementState.build(bundle, jwks), decision_log, missions=missions.book)
        line = _sample_line(enforcer, check, log_path, decision_log)
        hooks = Hooks(default_hooks(decision_log))  # what the data path runs: the tools-list hook
        hooked = Enforcer(EnforcementState.build(bundle, jwks), decision_log, hooks)

        def log_and_flush() -> None:
            for _ in range(100):
                decision_log.record(line)
            decision_log.flush()

        stages = {
            "CheckRequest decode (protobuf, 1 KB)": us(lambda: CheckRequest.FromString(wire)),
            "body parse (strict JSON-RPC, tools/call)": us(
                lambda: parse_body(bodies["allowed"], max_bytes=1 << 20)
            ),
            "body parse (batch of 5)": us(lambda: parse_body(bodies["batch"], max_bytes=1 << 20)),
            "token, cached": us(lambda: cached.validate(rs_headers[0])),
            "token, first seen RS256 (full check)": us(
                lambda: uncached_rs.validate(rs_headers[next(flip) % 2]), scale=20
            ),
            "token, first seen ES256 (full check)": us(
                lambda: uncached_es.validate(es_headers[next(flip) % 2]), scale=20
            ),
            "mapping (tools/call)": us(lambda: finance.mapping.map("tools/call", params, claims)),
            "PDP (embedded, allowed)": us(lambda: finance.pdp.evaluate_all(mapped.requests)),
            "decide: mapping + PDP": us(lambda: decide(finance, "tools/call", params, claims)),
            "mission: none presented (the plain call's share)": us(
                lambda: presented_mission(check.attributes.request.http.headers, claims)
            ),
            "mission: header parse + bind (index, caller)": us(
                lambda: missions.book.bind(
                    finance, presented_mission(missions.headers, claims) or ("", ""), claims
                )
            ),
            "decide under a mission: mapping + PDP + scope": us(
                lambda: decide(finance, "tools/call", params, claims, mission=missions.active)
            ),
            "decision id": us(new_decision_id),
            "response build (allow) + serialize": us(
                lambda: allow_response({DECISION_HEADER: "01J0000000000000000000000"}, []).SerializeToString()
            ),
            "metrics (counter + histogram)": us(_metrics_once),
            "body hook lookup (tools/call: no ext_proc hook)": us(lambda: hooks.for_methods(["tools/call"])),
            "decision log: record (caller's share)": us(lambda: decision_log.record(line)),
            "decision log: record + write (per line, amortised)": round(
                us(log_and_flush, scale=100) / 100, 2
            ),
        }
        decision_log.flush()
        whole = {
            "Enforcer.check, allowed, cached token": us(lambda: enforcer.check(check)),
            "Enforcer.check, allowed under a mission, cached token": us(
                lambda: enforcer.check(missions.check)
            ),
            "Enforcer.check, allowed, cached token, body hooks registered": us(lambda: hooked.check(check)),
            "Enforcer.check, denied, cached token": us(
                lambda: enforcer.check(check_request(bodies["denied"], rs_tokens[0])), scale=2
            ),
            "Enforcer.check, batch of 5, cached token": us(
                lambda: enforcer.check(check_request(bodies["batch"], rs_tokens[0])), scale=2
            ),
            "building a CheckRequest (subtract from the two above)": us(
                lambda: check_request(bodies["denied"], rs_tokens[0]), scale=2
            ),
        }
        queue_only = _QueueOnlyLog(path=os.devnull)
        quiet_enforcer = Enforcer(EnforcementState.build(bundle, jwks), queue_only)
        whole["Enforcer.check, allowed, decision log writer never woken (diagnostic)"] = us(
            lambda: quiet_enforcer.check(check)
        )
        whole["HTTP ext_authz: one request through the server (allowed, cached token)"] = us(
            _http_exchange(enforcer, bodies["allowed"], rs_tokens[0])
        )
        queue_only.close()
        held_stage, held_whole = _with_approvals(Path(tmp), issuers_config, jwks, check, us, claims=claims)
        stages["approval check of an allowed call (no store access)"] = held_stage
        whole["Enforcer.check, allowed, approvals on (SQLite store)"] = held_whole
        decision_log.close()
        dpop_stage, dpop_whole = dpop_costs(
            issuers, Path(tmp) / "config", jwks, us, calls=max(50, loops // 20) * (repeats + 1) + 10
        )
        stages.update(dpop_stage)
        whole.update(dpop_whole)
        jwks.close()
    return {
        "unit": "CPU µs per operation (all threads of the process), median of repeats",
        "stages": stages,
        "whole_check": whole,
    }


class _QueueOnlyLog(DecisionLog):
    """Diagnostic only: serialises each line as `record` does but never wakes the writer thread,
    to show what the writer's per-line wake-up costs the checking thread."""

    def __init__(self, path: str) -> None:
        super().__init__(path=path)
        self.kept: list[bytes] = []

    def record(self, line: Mapping[str, Any]) -> None:
        self.kept.append(orjson.dumps(dict(line), option=orjson.OPT_APPEND_NEWLINE))


def _with_approvals(
    tmp: Path,
    config: Path,
    jwks: JwksStore,
    check: CheckRequest,
    us: Callable[[Callable[[], Any]], float],
    *,
    claims: Mapping[str, Any],
) -> tuple[float, float]:
    """The allowed call again, with the approval workflow on: a call no RequireApproval rule holds
    must not touch the store (the desk only looks at a verdict that is requestable or approval-made).
    Returns (the desk's look at the allowed verdict, the whole check)."""
    store = ApprovalRecords(SqliteDocuments(tmp / "approvals.db"))
    desk = approval_desk(store, tmp / "binding-key.pem", "urn:bench", create_key=True)
    bundle = compile_bundle(load_config([config]), approvals=desk.authority)
    approvals_log = DecisionLog(path=os.devnull)
    enforcer = Enforcer(EnforcementState.build(bundle, jwks), approvals_log, approvals=desk)
    finance = bundle.servers[FINANCE]
    body = parse_body(bytes(check.attributes.request.http.raw_body), max_bytes=1 << 20)
    verdicts = decide_messages(finance, body.messages, claims)
    first = body.messages[0]
    stage = us(
        lambda: enforcer._held(
            desk, server=finance, first=first, is_batch=False, verdicts=verdicts, claims=claims
        )
    )
    cost = us(lambda: enforcer.check(check))
    approvals_log.close()
    desk.close()
    return stage, cost


class _Discard:
    """The transport of an HTTP ext_authz connection, minus the socket."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _http_exchange(enforcer: Enforcer, body: bytes, token: str) -> Callable[[], None]:
    """One HTTP ext_authz request as Envoy sends it, parsed, decided and answered in process."""
    head = (
        f"POST /mcp HTTP/1.1\r\nhost: finance.board.example\r\ncontent-length: {len(body)}\r\n"
        f"authorization: Bearer {token}\r\ncontent-type: application/json\r\n"
        "x-envoy-expected-rq-timeout-ms: 1000\r\nx-forwarded-proto: http\r\n"
        "x-request-id: 5f0c6a0e-6b55-4a36-9d0e-3f1f0a3b8a0c\r\n\r\n"
    )
    request = head.encode() + body
    connection = http_authz.connection(enforcer.decide)
    connection.connection_made(_Discard())  # duck-typed: write and close are all it uses
    return lambda: connection.data_received(request)


def _metrics_once() -> None:
    metrics.count_decision(FINANCE, "allow", "200")  # as Enforcer._record counts
    metrics.CHECK_LATENCY.observe(0.0001)


def _sample_line(
    enforcer: Enforcer, check: CheckRequest, log_path: Path, decision_log: DecisionLog
) -> dict[str, Any]:
    """A real decision log line, as the enforcer wrote it."""
    enforcer.check(check)
    decision_log.flush()
    line: dict[str, Any] = json.loads(log_path.read_text().splitlines()[-1])
    return line


def main() -> None:
    run_command(__doc__, measure, "a few loops only: proves it runs")


if __name__ == "__main__":
    main()
