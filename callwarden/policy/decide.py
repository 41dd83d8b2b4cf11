"""From one JSON-RPC message and validated claims to a verdict: mapping, then the PDP.

This is the whole Layer 2 decision, shared by `callwarden check` and the ext_authz data
path, so a policy tested offline is decided the same way in the mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from callwarden.policy.bundle import CompiledServer
from callwarden.policy.mapping import (
    AuthorizationRequests,
    MappingFailure,
    PassThrough,
    UnknownMethod,
)
from callwarden.policy.mission import ActiveMission, decide_in_mission
from callwarden.policy.pdp import Decision, EmbeddedPdp
from callwarden.policy.remote import PdpUnavailable

# JSON-RPC codes of the COAZ MCP binding (standards.md §2.7).
DENIED: Final = -32001
MAPPING_ERROR: Final = -32602
PDP_FAILURE: Final = -32603


@dataclass(frozen=True)
class JsonRpcError:
    code: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    method: str
    tool: str | None
    error: JsonRpcError | None
    reasons: tuple[str, ...]
    requests: tuple[dict[str, Any], ...] = ()
    requestable: bool = False
    decisions: tuple[Decision, ...] = ()  # one per request, in order
    params: Mapping[str, Any] | None = None  # the message's params (what an approval binds)

    @property
    def approvals(self) -> tuple[str, ...]:
        """The approval ids that permitted this message: each must be consumed before it runs."""
        return tuple(d.approval for d in self.decisions if d.approval is not None)

    @property
    def code(self) -> int | None:
        return None if self.error is None else self.error.code


def decide(
    server: CompiledServer,
    method: str,
    params: Mapping[str, Any] | list[Any] | None,
    claims: Mapping[str, Any],
    *,
    cnf: Mapping[str, Any] | None = None,
    mission: ActiveMission | None = None,
) -> Verdict:
    """Decide one JSON-RPC request or notification. Never raises: every failure denies.

    `cnf` is the proven key of a DPoP request (`context.cnf` of every AuthZEN request).

    `params` as the message carries them: positional params (a list) are denied here, because no
    mapping can read them and deciding the call as if it had none would authorize something else.
    `mission`, bound by the PEP, goes to every PDP as `context.mission`; the embedded PDP's
    decision is then made within it (`policy.mission.decide_in_mission`).
    """
    if isinstance(params, list):
        error = JsonRpcError(DENIED, f"method {method!r}: params must be an object")
        return Verdict(False, method, None, error, ("positional-params",))
    mission_context = None if mission is None else mission.context()
    result = server.mapping.map(method, params, claims, cnf=cnf, mission=mission_context)
    if isinstance(result, PassThrough):
        return Verdict(True, method, None, None, ("pass-through",))
    if isinstance(result, UnknownMethod):
        message = f"method {result.method!r} is not authorized: callwarden denies unknown MCP methods"
        return Verdict(False, method, None, JsonRpcError(DENIED, message), ("unknown-method",))
    if isinstance(result, MappingFailure):
        error = JsonRpcError(MAPPING_ERROR, result.message)
        return Verdict(False, method, tool_of(method, params), error, ())
    return _decide_requests(server, method, result, params, mission)


def decide_with_approval(
    server: CompiledServer,
    params: Mapping[str, Any],
    claims: Mapping[str, Any],
    approval: Mapping[str, Any],
    cnf: Mapping[str, Any] | None = None,
) -> Verdict:
    """Decide a `tools/call` again with an ARAP approval placed, unchanged, at `context.approval`
    of every request its mapping produces (ARAP §4.4 re-evaluation); never raises. `cnf` is the
    current request's proven DPoP key, as for `decide`: an approval bound to one key needs it."""
    result = server.mapping.map("tools/call", params, claims, cnf=cnf)
    if not isinstance(result, AuthorizationRequests):
        return decide(server, "tools/call", params, claims, cnf=cnf)
    approved = tuple(
        {**r, "context": {**r.get("context", {}), "approval": dict(approval)}} for r in result.requests
    )
    wire = approved[0] if len(approved) == 1 else {"evaluations": list(approved)}
    return _decide_requests(server, "tools/call", AuthorizationRequests(wire, approved, result.tool), params)


def _decide_requests(
    server: CompiledServer,
    method: str,
    result: AuthorizationRequests,
    params: Mapping[str, Any] | None,
    mission: ActiveMission | None = None,
) -> Verdict:
    try:
        decisions = server.pdp.evaluate_mapped(result.requests)
        if mission is not None and isinstance(server.pdp, EmbeddedPdp):
            # A remote PDP decides with context.mission itself; the embedded one knows the scope.
            decisions = [
                decide_in_mission(d, r, mission) for d, r in zip(decisions, result.requests, strict=True)
            ]
    except Exception as error:  # a PDP that cannot answer denies, whatever went wrong
        # PdpUnavailable says why in words safe to show; anything else is named by its type only.
        why = str(error) if isinstance(error, PdpUnavailable) else type(error).__name__
        message = f"Authorization service unavailable: {why}"
        return Verdict(False, method, result.tool, JsonRpcError(PDP_FAILURE, message), (), result.requests)
    denied = [d for d in decisions if not d.allowed]
    if decisions and not denied:
        reasons = tuple(dict.fromkeys(r for d in decisions for r in d.reasons))
        return Verdict(
            True, method, result.tool, None, reasons, result.requests, False, tuple(decisions), params
        )
    if not decisions:  # an empty answer is not a permit
        empty = JsonRpcError(PDP_FAILURE, "Authorization service returned no decision")
        return Verdict(False, method, result.tool, empty, (), result.requests)
    first = denied[0]
    reasons = tuple(dict.fromkeys(r for d in denied for r in d.reasons))
    target = f"tool {result.tool!r}" if result.tool else f"method {method!r}"
    denial = JsonRpcError(DENIED, f"Access to {target} denied: {first.message}")
    return Verdict(
        False,
        method,
        result.tool,
        denial,
        reasons,
        result.requests,
        first.requestable,
        tuple(decisions),
        params,
    )


def tool_of(method: str, params: Mapping[str, Any] | None) -> str | None:
    if method != "tools/call" or not isinstance(params, Mapping):
        return None
    name = params.get("name")
    return name if isinstance(name, str) else None


class Message(Protocol):
    """One JSON-RPC message of a strictly parsed body: `method` is None for a response."""

    @property
    def method(self) -> str | None: ...

    @property
    def params(self) -> Mapping[str, Any] | list[Any] | None: ...


def decide_messages(
    server: CompiledServer,
    messages: Sequence[Message],
    claims: Mapping[str, Any],
    *,
    cnf: Mapping[str, Any] | None = None,
    mission: ActiveMission | None = None,
) -> list[Verdict]:
    """One verdict per message of a body; the body is allowed only if every verdict is.

    The data path and `callwarden check` both decide bodies through this. A response (the
    client answering a server's request) carries nothing to authorize.
    """
    return [
        Verdict(True, "response", None, None, ("response",))
        if message.method is None
        else decide(server, message.method, message.params, claims, cnf=cnf, mission=mission)
        for message in messages
    ]


def deciding_reasons(verdicts: Sequence[Verdict]) -> tuple[str, ...]:
    """The reasons a body was decided by: those of its denied messages, else of all of them."""
    denied = [v for v in verdicts if not v.allowed]
    return tuple(dict.fromkeys(r for v in (denied or verdicts) for r in v.reasons))
