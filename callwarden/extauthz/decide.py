"""One request view in, one answer out: route, Layer 1, strict parse, Layer 2.

The decision is transport-neutral: `Enforcer.decide` takes a `RequestView` (what Envoy tells
any ext_authz server about the original request) and returns an `Answer`. `Enforcer.check` is
the gRPC adapter (CheckRequest -> view, answer -> CheckResponse); `http_authz` is the HTTP one.

Every path through `Enforcer.check` ends in exactly one decision log line, and every path
that is not an explicit permit is a denial: an unknown route, an unsupported HTTP method,
a missing or bad token, a body that does not parse strictly, a mapping error, a PDP that
cannot answer, or a bug in this code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from callwarden.extauthz import metrics, tasks
from callwarden.extauthz.approvals import ApprovalDesk, Handled
from callwarden.extauthz.audit import DecisionLog, log_time, new_decision_id
from callwarden.extauthz.credentials import Authenticated, Authenticator, Unauthenticated
from callwarden.extauthz.dpop import DpopRuntime, DpopVerifier
from callwarden.extauthz.extproc import HOOK_HEADER, Hooks, hook_mark
from callwarden.extauthz.jsonrpc import BodyRejected, JsonRpcMessage, parse_body
from callwarden.extauthz.mission import MissionBook, presented_mission
from callwarden.extauthz.responses import CHECKER_FAILED_BODY, allow_response, deny_response
from callwarden.extauthz.tasks import TASK_METHODS
from callwarden.extauthz.token import JwksStore, TokenValidator
from callwarden.policy.bundle import Bundle, CompiledServer
from callwarden.policy.decide import (
    DENIED,
    JsonRpcError,
    Verdict,
    decide_messages,
    deciding_reasons,
    tool_of,
)
from callwarden.policy.mission import ActiveMission, MissionRejected

log = logging.getLogger(__name__)

DECISION_HEADER: Final = "x-callwarden-decision-id"
RESERVED_HEADER_PREFIX: Final = "x-callwarden-"
# JSON-RPC 2.0 "invalid request": bodies refused before parsing (encoding, truncation).
INVALID_REQUEST: Final = -32600
# Envoy sets this header on the check request when it forwarded only part of the body.
PARTIAL_BODY_HEADER: Final = "x-envoy-auth-partial-body"
JSON_CONTENT_TYPE: Final = {"content-type": "application/json"}


@dataclass(frozen=True)
class EnforcementState:
    """A bundle and the Layer 1 authenticators built for it; swapped as one reference."""

    bundle: Bundle
    authenticators: Mapping[str, Authenticator]

    @classmethod
    def build(cls, bundle: Bundle, jwks: JwksStore, dpop: DpopRuntime | None = None) -> EnforcementState:
        """`dpop` is the process's nonce keys and replay cache, kept across swaps; without one
        (benchmarks, one-off checks) a single-process runtime is made here."""
        runtime = dpop or DpopRuntime.single_process()
        authenticators = {key: _authenticator(s, jwks, runtime) for key, s in bundle.servers.items()}
        return cls(bundle, authenticators)


def _authenticator(server: CompiledServer, jwks: JwksStore, dpop: DpopRuntime) -> Authenticator:
    spec = server.server.spec
    return Authenticator(
        TokenValidator(server.server, jwks),
        DpopVerifier(server.key, spec.dpop, dpop),
        spec.dpop,
        server.resource_metadata_url,
    )


@dataclass(frozen=True)
class RequestView:
    """The original request as Envoy describes it, whatever the ext_authz transport.

    `headers` have lowercase names; `context_extensions` is empty over HTTP (gRPC only), and
    then the server is routed by host and path.
    """

    method: str
    host: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    context_extensions: Mapping[str, str]


@dataclass(frozen=True)
class Answer:
    """Allow (set `headers` upstream, remove `headers_to_remove`) or deny (`status`, `body` and
    `headers` to the client)."""

    allowed: bool
    status: int
    body: bytes
    headers: Mapping[str, str]
    headers_to_remove: tuple[str, ...] = ()
    client_headers: Mapping[str, str] = field(default_factory=dict)  # an allow's, to the client


def view_of(request: CheckRequest) -> RequestView:
    """The gRPC CheckRequest as a view (the protobuf maps are read in place, not copied)."""
    http = request.attributes.request.http
    return RequestView(
        http.method, http.host, http.path, http.headers, http.raw_body, request.attributes.context_extensions
    )


@dataclass
class _Outcome:
    """What one check decided, gathered for the response, the log line and the metrics."""

    allowed: bool
    status: int
    code: int | None = None
    message: str = ""
    reasons: tuple[str, ...] = ()
    server: str | None = None
    http_method: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    mission: dict[str, str] | None = None  # the mission presented (id, reference), bound or not
    hook: str | None = None  # the ext_proc hook an allowed body engages (extproc.py)
    approval: dict[str, Any] | None = None  # the access request a held call concerns (approvals.py)


class Enforcer:
    """The ext_authz `Checker`: decides every request by the current enforcement state."""

    def __init__(
        self,
        state: EnforcementState,
        decision_log: DecisionLog,
        hooks: Hooks | None = None,
        approvals: ApprovalDesk | None = None,
        missions: MissionBook | None = None,
    ) -> None:
        self._state = state
        self._log = decision_log
        self._hooks = hooks if hooks is not None else Hooks()
        self._approvals = approvals
        # Without a store no mission is known: a presented mission is denied, never ignored.
        self.missions = missions if missions is not None else MissionBook()

    @property
    def state(self) -> EnforcementState:
        return self._state

    def swap(self, state: EnforcementState) -> None:
        """Replace the configuration atomically: in-flight checks finish on the old one."""
        self._state = state

    def check(self, request: CheckRequest) -> CheckResponse:
        """The gRPC adapter."""
        answer = self.decide(view_of(request))
        if answer.allowed:
            return allow_response(answer.headers, answer.headers_to_remove, answer.client_headers)
        return deny_response(answer.status, answer.body, answer.headers)

    def decide(self, request: RequestView) -> Answer:
        started = time.perf_counter()
        now_ns = time.time_ns()  # one clock reading for the decision id and the log line's time
        decision_id = new_decision_id(now_ns)
        state = self._state
        try:
            outcome = self._decide(state, request)
        except Exception:  # a bug must deny, never allow and never kill the worker
            log.exception("check %s failed; denying", decision_id)
            outcome = _Outcome(False, 403, code=-32603, message="internal error", reasons=("internal-error",))
            outcome.body = CHECKER_FAILED_BODY
            outcome.headers = dict(JSON_CONTENT_TYPE)
        latency = time.perf_counter() - started
        self._record(decision_id, log_time(now_ns), state.bundle.revision, outcome, latency)
        if outcome.allowed:
            forged = tuple(
                name
                for name in request.headers
                if name.startswith(RESERVED_HEADER_PREFIX) and name != DECISION_HEADER
            )
            added = {DECISION_HEADER: decision_id}
            if outcome.hook is not None:  # a client-sent value is in `forged`, and replaced
                added[HOOK_HEADER] = hook_mark(outcome.hook, outcome.server or "")
            return Answer(True, 200, b"", added, forged, outcome.headers)
        return Answer(False, outcome.status, outcome.body, {**outcome.headers, DECISION_HEADER: decision_id})

    # -- the decision ------------------------------------------------------------------

    def _decide(self, state: EnforcementState, http: RequestView) -> _Outcome:
        headers = http.headers
        named = http.context_extensions.get("mcp_server")
        server = state.bundle.find(named) if named else state.bundle.route(http.host, http.path)
        if server is None:
            where = f"mcp_server {named!r}" if named else f"{http.host}{http.path.split('?', 1)[0]}"
            return _http_denial(404, f"no McpServer is configured for {where}", "no-route", http.method)
        method = http.method.upper()
        if method not in ("POST", "GET", "DELETE"):
            outcome = _http_denial(405, f"HTTP method {method} is not allowed on MCP", "http-method", method)
            outcome.server = server.key
            outcome.headers["allow"] = "GET, POST, DELETE"  # RFC 9110 §15.5.6: a 405 lists what is allowed
            return outcome
        try:
            credentials = state.authenticators[server.key].authenticate(
                headers, method=http.method, authority=http.host, path=http.path
            )
        except Unauthenticated as refused:
            return _unauthenticated(server, refused, method)
        presented: tuple[str, str] | None = None
        mission: ActiveMission | MissionRejected | None = None
        try:
            presented = presented_mission(headers, credentials.claims)
            if presented is not None:
                mission = self.missions.bind(server, presented, credentials.claims)
        except MissionRejected as rejected:
            mission = rejected
        outcome = self._after_token(server, http, credentials, method, mission)
        if presented is not None:
            outcome.mission = {"id": presented[0], "reference": presented[1]}
            if isinstance(mission, MissionRejected):  # no AuthZEN request says who asked: say it here
                outcome.mission |= _caller(server, credentials.claims)
        outcome.headers.update(credentials.response_headers)  # on an allow: to the client too
        return outcome

    def _after_token(
        self,
        server: CompiledServer,
        http: RequestView,
        credentials: Authenticated,
        method: str,
        mission: ActiveMission | MissionRejected | None,
    ) -> _Outcome:
        if isinstance(mission, MissionRejected) and method != "POST":
            outcome = _http_denial(403, str(mission), mission.reason, method)
            outcome.server = server.key
            return outcome
        if method != "POST":  # SSE stream (GET) and session end (DELETE) need Layer 1 only
            return _Outcome(True, 200, reasons=("authenticated",), server=server.key, http_method=method)
        return self._decide_body(server, http, credentials.claims, cnf=credentials.cnf, mission=mission)

    def _decide_body(
        self,
        server: CompiledServer,
        http: RequestView,
        claims: Mapping[str, Any],
        *,
        cnf: Mapping[str, Any] | None = None,
        mission: ActiveMission | MissionRejected | None = None,
    ) -> _Outcome:
        headers = http.headers
        status = server.server.spec.deny_http_status
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            message = f"Content-Encoding {encoding!r} is not accepted"
            return _body_denial(server, status, "content-encoding", message)
        if headers.get(PARTIAL_BODY_HEADER, "").lower() == "true":
            return _body_denial(server, status, "partial-body", "request body was truncated by the gateway")
        try:
            body = parse_body(http.body, max_bytes=server.server.spec.max_request_bytes)
        except BodyRejected as rejected:
            return _body_denial(server, status, rejected.reason, rejected.message, rejected.code)
        if isinstance(mission, MissionRejected):
            verdicts = mission_denials(body.messages, mission)
        else:
            first = body.messages[0]
            if self._approvals is not None and not body.is_batch and first.method in TASK_METHODS:
                handled = self._approvals.task_method(
                    server, first.method, first.id, first.params, claims, cnf=cnf
                )
                if handled is not None:
                    return _handled(server, handled, [])
            verdicts = decide_messages(server, body.messages, claims, cnf=cnf, mission=mission)
            if mission is not None:
                verdicts = self.missions.propose_expansions(mission, verdicts)
            if self._approvals is not None:
                held = self._held(
                    self._approvals,
                    server=server,
                    first=first,
                    is_batch=body.is_batch,
                    verdicts=verdicts,
                    claims=claims,
                    cnf=cnf,
                )
                if held is not None:
                    return held
        denied = [v for v in verdicts if not v.allowed]
        outcome = _Outcome(not denied, 200, server=server.key, http_method="POST", verdicts=verdicts)
        outcome.reasons = deciding_reasons(verdicts)
        if not denied and self._hooks:
            try:
                outcome.hook = self._hooks.for_methods([message.method for message in body.messages])
            except ValueError as mixed:
                return _body_denial(server, status, "mixed-hooks", str(mixed))
        if denied:
            outcome.status = status
            outcome.code = denied[0].code
            outcome.message = denied[0].error.message if denied[0].error else "denied"
            outcome.body = _error_body(body.messages, verdicts, body.is_batch)
            outcome.headers = dict(JSON_CONTENT_TYPE)
        return outcome

    def _held(
        self,
        desk: ApprovalDesk,
        *,
        server: CompiledServer,
        first: JsonRpcMessage,
        is_batch: bool,
        verdicts: list[Verdict],
        claims: Mapping[str, Any],
        cnf: Mapping[str, Any] | None = None,
    ) -> _Outcome | None:
        """The approval workflow's answer for a decided body, or None to answer it as decided."""
        if all(v.allowed for v in verdicts):
            # A permit that an approval granted runs only if that approval can be claimed now.
            if all(not v.approvals for v in verdicts) or all(
                desk.consume(server, v) for v in verdicts if v.approvals
            ):
                return None
            message = "Access denied: the approval that permits this call is used or no longer valid"
            used = Handled(False, "approval:already-used", None, tasks.error(first.id, DENIED, message))
            return _handled(server, used, verdicts)
        denied = next(v for v in verdicts if not v.allowed)
        if is_batch or not denied.requestable:
            return None
        handled = desk.requestable(server, first.id, denied, claims, self._state.bundle.revision, cnf=cnf)
        return None if handled is None else _handled(server, handled, verdicts)

    # -- the log line -----------------------------------------------------------------

    def _record(self, decision_id: str, when: str, revision: str, outcome: _Outcome, latency: float) -> None:
        decision = "allow" if outcome.allowed else "deny"
        code = outcome.code if outcome.code is not None else outcome.status
        metrics.count_decision(outcome.server or "", decision, str(code))
        metrics.CHECK_LATENCY.observe(latency)
        headline = _headline(outcome.verdicts)
        line: dict[str, Any] = {
            "time": when,
            "decision_id": decision_id,
            "server": outcome.server,
            "http_method": outcome.http_method,
            "calls": [_call_line(v) for v in outcome.verdicts],
            "method": headline.method if headline else None,
            "tool": headline.tool if headline else None,
            "requests": [r for v in outcome.verdicts for r in v.requests],
            "decision": decision,
            "code": code,
            "reasons": list(outcome.reasons),
            "message": outcome.message,
            "revision": revision,
            "latency_ms": round(latency * 1000, 3),
            **({"hook": outcome.hook} if outcome.hook is not None else {}),
            **({"approval": outcome.approval} if outcome.approval is not None else {}),
        }
        if outcome.mission is not None:  # only when present: plain calls log what they always did
            line["mission"] = outcome.mission
        self._log.record(line)


def _headline(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The message a (batch) decision is logged under: the first denied one, else the first
    tool call, else the first. A tools/call denied inside a batch of pings is logged as tools/call."""
    return (
        next((v for v in verdicts if not v.allowed), None)
        or next((v for v in verdicts if v.tool is not None), None)
        or (verdicts[0] if verdicts else None)
    )


def _call_line(verdict: Verdict) -> dict[str, Any]:
    """One JSON-RPC message of a (possibly batched) body, as the decision log records it.

    Its AuthZEN requests are the next `request_count` entries of the line's `requests`, in
    order: writing them twice would double the line and its serialization on the hot path.
    """
    return {
        "method": verdict.method,
        "tool": verdict.tool,
        "decision": "allow" if verdict.allowed else "deny",
        "code": verdict.code,
        "reasons": list(verdict.reasons),
        "request_count": len(verdict.requests),
    }


def _caller(server: CompiledServer, claims: Mapping[str, Any]) -> dict[str, str]:
    """The token's subject and agent, as the server's identity claims name them (strings only)."""
    identity = server.server.spec.identity
    named = {"subject": claims.get(identity.subject_claim), "agent": claims.get(identity.agent_claim)}
    return {key: value for key, value in named.items() if isinstance(value, str)}


def mission_denials(messages: Sequence[JsonRpcMessage], rejected: MissionRejected) -> list[Verdict]:
    """Every message of a body that presented a mission it cannot use is denied, with the reason:
    the agent believes it acts under that mission, so nothing in the body runs without it."""
    error = JsonRpcError(DENIED, f"Mission rejected: {rejected}")
    return [
        Verdict(
            False,
            method,
            tool_of(method, message.params if isinstance(message.params, dict) else None),
            error,
            (rejected.reason,),
        )
        for message in messages
        for method in (message.method or "response",)
    ]


def _error_body(messages: Sequence[JsonRpcMessage], verdicts: Sequence[Verdict], is_batch: bool) -> bytes:
    """JSON-RPC error responses echoing each request's id; a batch is denied whole."""
    first_error = next(v.error for v in verdicts if v.error is not None)
    responses = []
    for message, verdict in zip(messages, verdicts, strict=True):
        if message.kind != "request":
            continue
        error = verdict.error or JsonRpcError(DENIED, f"batch denied: {first_error.message}")
        responses.append({"jsonrpc": "2.0", "id": message.id, "error": error.to_json()})
    if not responses:  # only notifications: no id to answer, but the client must see the denial
        return orjson.dumps({"jsonrpc": "2.0", "id": None, "error": first_error.to_json()})
    return orjson.dumps(responses if is_batch else responses[0])


def _handled(server: CompiledServer, handled: Handled, verdicts: list[Verdict]) -> _Outcome:
    """The outcome of a message the approval desk answered or let run."""
    fields = handled.log_fields().get("approval")
    shown = [handled.verdict] if handled.verdict is not None else verdicts
    outcome = _Outcome(handled.allowed, 200, server=server.key, http_method="POST", verdicts=shown)
    outcome.reasons = (handled.reason,)
    outcome.approval = fields
    outcome.hook = handled.hook
    if not handled.allowed:  # answered by callwarden itself: a JSON-RPC result or error, HTTP 200
        outcome.code = DENIED
        outcome.message = handled.reason
        outcome.body = handled.body
        outcome.headers = dict(JSON_CONTENT_TYPE)
    return outcome


def _http_denial(status: int, message: str, reason: str, http_method: str) -> _Outcome:
    outcome = _Outcome(False, status, message=message, reasons=(reason,), http_method=http_method)
    outcome.body = orjson.dumps({"error": message})
    outcome.headers = dict(JSON_CONTENT_TYPE)
    return outcome


def _unauthenticated(server: CompiledServer, refused: Unauthenticated, http_method: str) -> _Outcome:
    metrics.TOKEN_FAILURES.labels(reason=refused.reason).inc()
    outcome = _http_denial(401, refused.description, f"token:{refused.reason}", http_method)
    outcome.server = server.key
    outcome.headers.update(refused.headers)
    return outcome


def _body_denial(
    server: CompiledServer, status: int, reason: str, message: str, code: int = INVALID_REQUEST
) -> _Outcome:
    # The reason code leads the message, as in the log line: clients and operators match on it.
    text = f"{reason}: {message}"
    error = {"code": code, "message": f"Request rejected: {text}"}
    outcome = _Outcome(False, status, code=code, message=text, reasons=(f"body:{reason}",))
    outcome.server = server.key
    outcome.http_method = "POST"
    outcome.body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": error})
    outcome.headers = dict(JSON_CONTENT_TYPE)
    return outcome
