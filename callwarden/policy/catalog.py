"""The catalog question: could this caller ever be allowed to call this tool?

A `tools/list` response is filtered by it (`extauthz/tools_list.py`): the agent sees the tools it
may be able to call and no others. It is an AuthZEN action search with unknowns: the subject and
the agent are known (the validated token), the call's arguments are not. Exactly:

1. The request a `tools/call` of the tool would make is built from the token and the tool's
   mapping (the same one the call uses), with the tool name known and the arguments unknown. A
   request entity (subject, action, resource, context) any of whose mapping expressions reads
   `params` other than `params.name` is **unknown as a whole**; so is `context` for a DPoP-bound
   token (its calls carry the proof's key as `context.cnf`); every other entity is built exactly
   as the call would build it (PIP attributes included).
2. Every rule that targets the tool is evaluated with the unknown entities absent. CEL's
   logical operators absorb errors (`false && x` is false and `true || x` is true whatever `x`
   is), so a condition is *false* when it is false for every value of the unknown entities,
   *true* when it is true for every value, and *unknown* otherwise (it errs, or needs an unknown
   entity). A condition that tests presence (`has(...)`, `.?`, `[?`) is unknown whenever an
   entity is unknown (one engine answers `has()` of an absent variable with false).
3. The tool is **listed** when some Allow or RequireApproval rule's condition is true or unknown
   and no Deny rule's condition is true (a Deny with no condition is true). It is **removed**
   when no rule targets it, when every Allow/RequireApproval condition is false, when a Deny
   applies whatever the arguments, or when a call could never be mapped (an invalid tool name, a
   mapping rejected at load, a token without its subject claim, or, when a rule has a condition
   to evaluate, a known part of the request the token cannot fill). With an `evaluations`
   mapping every request of the call must be possible.

Listing is exposure control, never authorization: an unknown counts as possible, so a listed
tool may still be denied for every argument a caller tries (a condition that always fails at run
time, for instance), and every call, listed or not, is decided by ext_authz as before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from callwarden.policy.bundle import CompiledServer
from callwarden.policy.cel import ABSENT, Activation, Program, prepare
from callwarden.policy.mapping.plan import Context, Entity, PepContext, Plan, Subject
from callwarden.policy.mapping.results import MappingCompileError
from callwarden.policy.mapping.server import actor_chain
from callwarden.policy.mapping.values import CallInputs, Expression, ListNode, MappingFault, Node, ObjectNode
from callwarden.policy.model import TOOL_NAME
from callwarden.policy.pdp import CompiledRule, EmbeddedPdp
from callwarden.policy.pip import InformationSource

_TOOL_NAME: Final = re.compile(TOOL_NAME)
# `params.name` is the tool's name, known when listing; any other use of `params` is an argument.
_PARAMS_NAME: Final = re.compile(r"\bparams\.name\b(?![\w.\[?(])")
_PARAMS: Final = re.compile(r"\bparams\b")
_PRESENCE: Final = re.compile(r"\bhas\s*\(|\.\?|\[\?")
_EMPTY: Final[dict[str, Any]] = {}
_ENTITIES: Final = ("subject", "action", "resource", "context")
_UNREAD: Final = object()
_ENRICHED: Final[tuple[Literal["subject", "resource"], ...]] = ("subject", "resource")  # by the PIP


@dataclass(frozen=True)
class Listing:
    """Whether a tool is listed, and why (the reason codes go to the decision log)."""

    listed: bool
    reason: str  # possible | no-rule | not-allowed | denied-regardless | unmappable
    rules: tuple[str, ...] = ()  # the rules that made it possible, or the Deny that removed it


_NO_RULE: Final = Listing(False, "no-rule")
_UNMAPPABLE: Final = Listing(False, "unmappable")
_NOT_ALLOWED: Final = Listing(False, "not-allowed")


def reads_arguments(node: Node | None) -> bool:
    """Whether a compiled mapping value depends on the call's arguments (anything in `params`
    but `params.name`), looking at every expression in it."""
    if isinstance(node, Expression):
        return _PARAMS.search(_PARAMS_NAME.sub("", node.program.source)) is not None
    if isinstance(node, ObjectNode):
        return any(reads_arguments(member) for _, member in node.members)
    if isinstance(node, ListNode):
        return any(reads_arguments(item) for item in node.items)
    return False  # a constant, or the token's audience


# A bundle's mapping parts are immutable and shared by every call and listing: whether one reads
# the arguments is worked out once (bounded, so swapped-out bundles are let go).
@functools.lru_cache(maxsize=8192)
def _entity_unknown(entity: Entity | None) -> bool:
    return entity is not None and any(reads_arguments(node) for _, node in entity.members)


@functools.lru_cache(maxsize=8192)
def _subject_unknown(subject: Subject) -> bool:
    nodes = (subject.type_node, subject.id_node, subject.properties_node)
    return any(reads_arguments(node) for node in nodes)


@functools.lru_cache(maxsize=8192)
def _context_unknown(context: Context | None) -> bool:
    if context is None:
        return False
    return reads_arguments(context.agent_node) or any(reads_arguments(node) for _, node in context.members)


class Catalog:
    """The catalog question for one server and one caller; each tool is answered once.

    Built for one `tools/list` exchange, from the bundle revision that decides its calls.
    `listing(tool)` never raises: anything unexpected removes the tool.
    """

    def __init__(self, server: CompiledServer, pdp: EmbeddedPdp, claims: Mapping[str, Any]) -> None:
        self._server = server
        self._pdp = pdp
        self._token = claims if type(claims) is dict else dict(claims)
        self._answers: dict[str, Listing] = {}
        self._actors: Any = _UNREAD  # the token's act chain, read once for every tool

    def listing(self, tool: str) -> Listing:
        answer = self._answers.get(tool)
        if answer is None:
            try:
                answer = self._answer(tool)
            except Exception:  # a bug must hide the tool, never show it
                answer = _UNMAPPABLE
            self._answers[tool] = answer
        return answer

    def _answer(self, tool: str) -> Listing:
        if _TOOL_NAME.fullmatch(tool) is None:
            return _UNMAPPABLE
        rules = self._pdp.tool_rules(tool)
        if not rules:
            return _NO_RULE
        mapping = self._server.mapping
        plan = mapping.tool_plan(tool)
        if isinstance(plan, MappingCompileError) or type(self._token.get(mapping.subject_claim)) is not str:
            return _UNMAPPABLE  # rejected at load, or no subject to anchor: no call can be mapped
        if all(rule.when is None for rule in rules):  # the effects alone decide: no request to build
            return _by_effects(rules)
        try:
            requests = self._partial_requests(plan, tool)
        except MappingFault:  # a part that needs no argument already fails: so does every call
            return _UNMAPPABLE
        possible: list[str] = []
        for request in requests:
            listing = self._listing_of(request, rules)
            if not listing.listed:
                return listing
            possible.extend(listing.rules)
        return Listing(True, "possible", tuple(dict.fromkeys(possible)))

    def _partial_requests(self, plan: Plan, tool: str) -> list[dict[str, Any]]:
        """The call's requests with every argument-dependent entity left out (unknown)."""
        mapping = self._server.mapping
        token = self._token
        anchor: str = token[mapping.subject_claim]  # a string: `_answer` checked it
        if self._actors is _UNREAD:
            self._actors = actor_chain(token)
        inputs = CallInputs(token, {"name": tool})
        mcp = {"server": mapping.server, "method": "tools/call", "tool": tool}
        pep = PepContext(mcp, token.get(mapping.agent_claim, ABSENT), mapping.agent_claim, self._actors)
        known: dict[str, Any] = {}
        if not _subject_unknown(plan.subject):
            known["subject"] = plan.subject.build(inputs, anchor, mapping.subject_claim)
        top = {"action": plan.action, "resource": plan.resource}
        for kind, entity in top.items():
            if entity is not None and not _entity_unknown(entity):
                known[kind] = entity.build(inputs)
        # A DPoP-bound token's calls carry the proof's key as context.cnf, which no list knows.
        bound = "cnf" in token
        if not bound and not _context_unknown(plan.context):
            known["context"] = plan.context.build(inputs, pep)
        if plan.entries is None:
            return [known]
        requests = []
        for entry in plan.entries:
            request = dict(known)
            for kind, part in (("action", entry.action), ("resource", entry.resource)):
                if part is not None:
                    request.pop(kind, None)
                    if not _entity_unknown(part):
                        request[kind] = part.build(inputs)
            if entry.context is not None:
                request.pop("context", None)
                if not bound and not _context_unknown(entry.context):
                    request["context"] = entry.context.build(inputs, pep)
            requests.append(request)
        return requests

    def _listing_of(self, request: dict[str, Any], rules: Sequence[CompiledRule]) -> Listing:
        activation, complete = self._activation(request)
        possible: list[str] = []
        for rule in rules:
            outcome = True if rule.when is None else _three_valued(rule.when, activation, complete)
            if rule.effect == "Deny":
                if outcome is True:
                    return Listing(False, "denied-regardless", (rule.name,))
            elif outcome is not False:
                possible.append(rule.name)
        return Listing(True, "possible", tuple(possible)) if possible else _NOT_ALLOWED

    def _activation(self, request: dict[str, Any]) -> tuple[Activation, bool]:
        """The CEL variables of the known entities, and whether every entity is known."""
        variables: dict[str, Any] = {}
        for kind in _ENTITIES:
            if kind in request:
                entity = request[kind]
                properties = kind == "context" or "properties" in entity
                variables[kind] = entity if properties else {**entity, "properties": _EMPTY}
        information = self._pdp.information
        if information is not None:
            for enriched in _ENRICHED:
                if enriched in variables:
                    variables[enriched] = _enriched(variables[enriched], enriched, information)
        return prepare(variables), len(variables) == len(_ENTITIES)


def _by_effects(rules: Sequence[CompiledRule]) -> Listing:
    """The listing when no rule has a condition (a mapping that would fault at call time still
    lists the tool: listing errs toward showing, the call is denied)."""
    denying = [rule.name for rule in rules if rule.effect == "Deny"]
    if denying:
        return Listing(False, "denied-regardless", (denying[0],))
    return Listing(True, "possible", tuple(rule.name for rule in rules))


def _enriched(
    entity: dict[str, Any], kind: Literal["subject", "resource"], information: InformationSource
) -> dict[str, Any]:
    attributes = information.attributes(kind, entity.get("type", ""), entity.get("id", ""))
    if not attributes:
        return entity
    return {**entity, "properties": {**entity.get("properties", _EMPTY), **attributes}}


def _three_valued(when: Program, activation: Activation, complete: bool) -> bool | None:
    """True or False whatever the unknown entities hold, else None (unknown)."""
    if not complete and _PRESENCE.search(when.source):
        return None
    try:
        result = when.evaluate_prepared(activation)
    except Exception:  # an absent (unknown) entity, or a failure: either way not decided here
        return None
    return result if type(result) is bool else None


class Lister(Protocol):
    """Anything that answers the catalog question for one caller, tool by tool."""

    def listing(self, tool: str) -> Listing: ...


class SearchedCatalog:
    """The catalog a remote PDP's AuthZEN Action Search answered: the tools named among the
    actions it permits this subject on this server (the platform's remote policy treats tool
    names as action names)."""

    def __init__(self, actions: frozenset[str]) -> None:
        self._actions = actions

    def listing(self, tool: str) -> Listing:
        return _SEARCHED if tool in self._actions else _NOT_SEARCHED


_SEARCHED: Final = Listing(True, "action-search")
_NOT_SEARCHED: Final = Listing(False, "not-in-action-search")


def catalog_for(server: CompiledServer, claims: Mapping[str, Any]) -> Catalog | None:
    """The catalog of `server` for this caller, or None when its PDP cannot answer the question
    here (a remote PDP: the caller asks its action search, or lists unfiltered)."""
    pdp = server.pdp
    return Catalog(server, pdp, claims) if isinstance(pdp, EmbeddedPdp) else None
