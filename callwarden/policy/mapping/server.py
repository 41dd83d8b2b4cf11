"""One McpServer's compiled mappings and the per-call entry point, `ServerMapping.map`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from callwarden.policy.cel import ABSENT
from callwarden.policy.mapping.compiler import NoMapping, Settings, compile_binding, compile_declared
from callwarden.policy.mapping.defaults import PASS_THROUGH_METHODS, default_mappings
from callwarden.policy.mapping.plan import PepContext, Plan
from callwarden.policy.mapping.results import (
    PASS_THROUGH,
    AuthorizationRequests,
    MappingCompileError,
    MappingFailure,
    MappingResult,
    UnknownMethod,
)
from callwarden.policy.mapping.values import CallInputs, MappingFault, describe, shorten
from callwarden.policy.model import TOOL_NAME, McpServer

# Only names in the MCP-recommended alphabet are tools: a look-alike (a Cyrillic letter for a
# Latin one) must not slip past rules written for the real name by falling to the default mapping.
_TOOL_NAME: Final = re.compile(TOOL_NAME)
# RFC 8693 nests one `act` per delegation hop; a chain longer than this is refused, not walked.
MAX_ACTORS: Final = 16
_ACTOR_MEMBERS: Final = ("iss", "client_id")


class ServerMapping:
    """The compiled mappings of one McpServer: defaults per method, plus per-tool mappings."""

    __slots__ = ("_agent_claim", "_default_call", "_methods", "_server", "_subject_claim", "_tools", "errors")

    def __init__(
        self,
        *,
        server: str,
        subject_claim: str,
        agent_claim: str,
        methods: dict[str, Plan | MappingCompileError],
        tools: dict[str, Plan | MappingCompileError],
        errors: tuple[MappingCompileError, ...],
    ) -> None:
        self._server = server
        self._subject_claim = subject_claim
        self._agent_claim = agent_claim
        self._methods = methods
        self._default_call = methods["tools/call"]
        self._tools = tools
        self.errors = errors

    @property
    def server(self) -> str:
        return self._server

    @property
    def subject_claim(self) -> str:
        return self._subject_claim

    @property
    def agent_claim(self) -> str:
        return self._agent_claim

    def tool_plan(self, tool: str) -> Plan | MappingCompileError:
        """The compiled mapping a tools/call of `tool` runs (`policy.catalog` reads it)."""
        return self._tools.get(tool, self._default_call)

    def map(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        claims: Mapping[str, Any],
        *,
        cnf: Mapping[str, Any] | None = None,
    ) -> MappingResult:
        """The AuthZEN request(s) for one JSON-RPC request. Never raises: bad input of any kind
        becomes a MappingFailure (JSON-RPC -32602), so the call fails closed. `cnf` (the key
        a DPoP proof proved) becomes `context.cnf`."""
        try:
            return self._map(method, params, claims, cnf)
        except MappingFault as fault:
            return MappingFailure(f"COAZ mapping error: {fault.message}")
        except Exception as error:  # map() must never raise on the hot path: fail closed, say why
            return MappingFailure(f"COAZ mapping error: internal error ({type(error).__name__})")

    def _map(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        claims: Mapping[str, Any],
        cnf: Mapping[str, Any] | None = None,
    ) -> MappingResult:
        if type(method) is not str:
            return UnknownMethod(shorten(repr(method), 128))
        if method in PASS_THROUGH_METHODS or method.startswith("notifications/"):
            return PASS_THROUGH
        if params is not None and type(params) is not dict and isinstance(params, Mapping):
            params = dict(params)  # one shallow copy, only for callers that pass another Mapping
        tool: str | None = None
        if method == "tools/call":
            if type(params) is not dict:
                raise MappingFault(
                    f"tools/call: params must be an object naming the tool; got {describe(params)}"
                )
            name = params.get("name")
            if type(name) is not str or _TOOL_NAME.fullmatch(name) is None:
                raise MappingFault(
                    f"tools/call: params.name {shorten(ascii(name), 140)} is not a valid tool name "
                    "(1-128 characters of A-Z a-z 0-9 _ . - /)"
                )
            tool = name
            plan = self._tools.get(name, self._default_call)
            label = f"tool {name!r}"
        else:
            found = self._methods.get(method)
            if found is None:
                return UnknownMethod(method)
            plan, label = found, f"method {method!r}"
            if params is None:
                params = {}
            elif type(params) is not dict:
                raise MappingFault(f"{label}: params must be an object; got {describe(params)}")
        if isinstance(plan, MappingCompileError):
            raise MappingFault(f"{label}: its mapping was rejected when the configuration loaded: {plan}")
        token = claims if type(claims) is dict else dict(claims)
        try:
            return self._run(plan, method, tool, params, token, cnf=cnf)
        except MappingFault as fault:
            raise MappingFault(f"{label}: {fault.message}") from None

    def _run(
        self,
        plan: Plan,
        method: str,
        tool: str | None,
        params: dict[str, Any],
        token: dict[str, Any],
        *,
        cnf: Mapping[str, Any] | None,
    ) -> AuthorizationRequests:
        anchor = token.get(self._subject_claim, ABSENT)
        if type(anchor) is not str:
            claim = self._subject_claim
            raise MappingFault(
                f"the token's {claim!r} claim (it anchors subject.id) is {describe(anchor)}, not a string"
            )
        mcp = {"server": self._server, "method": method}
        if tool is not None:
            mcp["tool"] = tool
        pep = PepContext(
            mcp, token.get(self._agent_claim, ABSENT), self._agent_claim, actor_chain(token), cnf
        )
        wire, requests = plan.run(CallInputs(token, params), anchor, self._subject_claim, pep)
        return AuthorizationRequests(wire, requests, tool)


def actor_chain(token: dict[str, Any]) -> list[dict[str, str]] | None:
    """The RFC 8693 `act` chain, outermost (the current actor) first; None without `act`.

    Only identity members are kept (RFC 8693 §4.1: `exp`, `aud`... mean nothing inside
    `act`). Prior actors are informational: policies must decide on the first element only.
    """
    if "act" not in token:
        return None
    chain: list[dict[str, str]] = []
    actor = token["act"]
    while True:
        if len(chain) == MAX_ACTORS:
            raise MappingFault(f"the token's act claim nests more than {MAX_ACTORS} actors")
        if type(actor) is not dict or type(actor.get("sub")) is not str:
            raise MappingFault(
                f"the token's act claim is malformed at depth {len(chain)}: an actor is an object with a "
                "string 'sub'"
            )
        entry = {"sub": actor["sub"]}
        for member in _ACTOR_MEMBERS:
            if member in actor:
                if type(actor[member]) is not str:
                    raise MappingFault(
                        f"the token's act claim has a non-string {member!r} at depth {len(chain)}"
                    )
                entry[member] = actor[member]
        chain.append(entry)
        if "act" not in actor:
            return chain
        actor = actor["act"]


def compile_server_mapping(server: McpServer) -> ServerMapping:
    """Compile every mapping of `server` once. Problems are collected in `errors`; a tool whose
    mapping has any problem fails closed (MappingFailure) instead of falling back."""
    spec = server.spec
    settings = Settings(spec.resource, spec.identity.subject_claim)
    errors: list[MappingCompileError] = []
    methods: dict[str, Plan | MappingCompileError] = {}
    for method, mapping in default_mappings(spec.identity.agent_claim).items():
        methods[method] = _plan_or_error(
            compile_binding(mapping, f"defaults[{method!r}]", None, settings, errors), errors
        )
    tools: dict[str, Plan | MappingCompileError] = {}
    for tool in spec.tools:
        # Precedence: the platform's mapping, else the server's own declaration, else the default.
        if tool.mapping is not None:
            compiled: Plan | NoMapping | None = compile_binding(
                tool.mapping, "mapping", tool.name, settings, errors
            )
        elif tool.declared is not None:
            compiled = compile_declared(tool.declared, tool.name, settings, errors)
        else:
            continue
        if not isinstance(compiled, NoMapping):
            tools[tool.name] = _plan_or_error(compiled, errors)
    return ServerMapping(
        server=server.key,
        subject_claim=spec.identity.subject_claim,
        agent_claim=spec.identity.agent_claim,
        methods=methods,
        tools=tools,
        errors=tuple(errors),
    )


def _plan_or_error(plan: Plan | None, errors: list[MappingCompileError]) -> Plan | MappingCompileError:
    """A failed compile leaves its first error in place of the plan, so calls can name it."""
    return plan if plan is not None else errors[-1]
