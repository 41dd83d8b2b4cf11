"""The embedded PDP: ToolPolicy rules compiled once, deciding AuthZEN 1.0 requests.

Deny overrides RequireApproval, which overrides Allow; a request that no rule applies to is
denied. Every rule whose target matches is evaluated: a rule whose `when` fails at run time
(missing key, type error, a result that is not a bool) denies and is named beside any rule
that denied, never skipped (DESIGN.md §8a, the fail-open traps of peer engines).

A rule's target is a tool name or an MCP method: `context.mcp.tool` for tools/call,
`context.mcp.method` for other MCP methods, `action.name` for a request from outside MCP.
Rules are indexed by the names they can match (exact names in a dict, globs bucketed by their
literal prefix), so rules aimed at other tools cost a few dict lookups however many there are.
Rule names in decisions are qualified by their policy, `<namespace>/<policy>/<rule>`: two
policies may both name a rule `allow-read`, and an audit line must say which one decided.

With a policy information point (`policy.pip`), the subject's and resource's properties are
enriched with the PIP's attributes (which win over the request's) before any `when` runs.

With an approval authority (`policy.approval`), a RequireApproval decision is an ARAP requestable
denial (`context.access_request` with a signed binding token), and a request that carries an
approval at `context.approval` is permitted only when the authority finds that approval bound to
exactly this request, approved and unexpired. A Deny rule still overrides it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from callwarden.policy.approval import ApprovalAuthority
from callwarden.policy.cel import ABSENT, Activation, CelCompileError, Program, compile_expression, prepare
from callwarden.policy.evaluation import (
    AuthzenRequestError,
    InvalidItem,
    check_evaluation_request,
    nesting_problem,
    parse_evaluations,
    request_problem,
)
from callwarden.policy.model import Effect, ToolPolicy
from callwarden.policy.pip import InformationSource, enrich

__all__ = [
    "RULE_VARIABLES",
    "AuthzenRequestError",
    "CompiledRule",
    "Decision",
    "EmbeddedPdp",
    "PolicyCompileError",
    "check_policy",
    "compile_pdp",
]

RULE_VARIABLES: Final = ("subject", "action", "resource", "context")
TOOLS_CALL: Final = "tools/call"
_WILDCARDS: Final = frozenset("*?[")
# Failure messages quote values from the request; an audit line must stay readable.
_MAX_MESSAGE: Final = 300
# Shared, never mutated: CEL only reads its activation.
_EMPTY: Final[dict[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reasons: tuple[str, ...]  # the rules that decided; () when no rule applied
    message: str  # human readable, e.g. "denied by rule 'ns/policy/x'"
    requestable: bool = False  # a RequireApproval rule decided: a denial a human can lift later
    # ARAP decision context (access_request, evaluation_id, reason, next_action; approval on a permit)
    context: Mapping[str, Any] | None = None
    approval: str | None = None  # the approval id that turned a RequireApproval into this permit

    def to_authzen(self) -> dict[str, Any]:
        explained = {"reasons": list(self.reasons), "reason": self.message}
        return {"decision": self.allowed, "context": {**explained, **(self.context or {})}}


class PolicyCompileError(Exception):
    """A ToolPolicy that cannot be enforced, located precisely enough to fix."""

    def __init__(
        self, policy: str, rule: str | None, field: str, expression: str | None, message: str
    ) -> None:
        super().__init__(policy, rule, field, expression, message)
        self.policy = policy
        self.rule = rule
        self.field = field
        self.expression = expression
        self.message = message

    def __str__(self) -> str:
        parts = [f"policy {self.policy!r}"]
        if self.rule is not None:
            parts.append(f"rule {self.rule!r}")
        parts.append(f"field {self.field}")
        if self.expression is not None:
            parts.append(f"expression {self.expression!r}")
        return ": ".join([*parts, self.message])


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    ordinal: int  # position across all policies: the order rules are evaluated and reported in
    name: str
    effect: Effect
    when: Program | None
    tools: tuple[str, ...]
    methods: tuple[str, ...]


# What `tool_rules` hands out: read-only, for the catalog question (`policy.catalog`).
CompiledRule = _CompiledRule


class _Malformed(Exception):
    """The request cannot be routed to rules; it is denied with this message."""


_Matcher = Callable[[str], object]


def _by_ordinal(rule: _CompiledRule) -> int:
    return rule.ordinal


class _NameIndex:
    """The rules whose globs can match a name (a tool name or an MCP method).

    A glob can only match names that start with its literal prefix (the text before its first
    wildcard; fnmatchcase compares everything else literally), so globs are bucketed by that
    prefix and a lookup probes one bucket per distinct prefix length.
    """

    def __init__(self, targets: Iterable[tuple[str, _CompiledRule]]) -> None:
        exact: dict[str, dict[int, _CompiledRule]] = {}
        globs: dict[str, list[tuple[_Matcher, _CompiledRule]]] = {}
        for glob, rule in targets:
            wildcard = next((i for i, char in enumerate(glob) if char in _WILDCARDS), None)
            if wildcard is None:
                exact.setdefault(glob, {})[rule.ordinal] = rule
            else:
                matcher = re.compile(fnmatch.translate(glob)).match
                globs.setdefault(glob[:wildcard], []).append((matcher, rule))
        self._exact = {name: tuple(rules.values()) for name, rules in exact.items()}
        self.exact_names = tuple(self._exact)  # the names matched without a wildcard, in rule order
        self._globs = {prefix: tuple(entries) for prefix, entries in globs.items()}
        self._prefix_lengths = tuple(sorted({len(prefix) for prefix in globs}))

    def candidates(self, name: str) -> Sequence[_CompiledRule]:
        """The rules that target `name`, each once, in evaluation order."""
        found: Sequence[_CompiledRule] = self._exact.get(name, ())
        from_globs: list[_CompiledRule] = []
        for length in self._prefix_lengths:
            if length > len(name):
                break
            bucket = self._globs.get(name[:length])
            if bucket is not None:
                from_globs.extend(rule for matches, rule in bucket if matches(name) is not None)
        if not from_globs:
            return found
        unique = {rule.ordinal: rule for rule in (*found, *from_globs)}
        return sorted(unique.values(), key=_by_ordinal)


class EmbeddedPdp:
    """Decides complete SARC requests against compiled rules; safe to share between threads."""

    def __init__(
        self,
        rules: Sequence[_CompiledRule],
        information: InformationSource | None = None,
        approvals: ApprovalAuthority | None = None,
    ) -> None:
        self._tools = _NameIndex((glob, rule) for rule in rules for glob in rule.tools)
        self._methods = _NameIndex((glob, rule) for rule in rules for glob in rule.methods)
        self.information = information
        self.approvals = approvals

    def tool_rules(self, tool: str) -> Sequence[CompiledRule]:
        """The rules that target a tools/call of `tool`, in evaluation order (`policy.catalog`)."""
        return self._tools.candidates(tool)

    def action_names(self) -> tuple[str, ...]:
        """The action names that rules target literally (`tools` entries without wildcards)."""
        return self._tools.exact_names

    def evaluate(self, request: Mapping[str, Any]) -> Decision:
        """Decide one complete request. Never raises: a malformed request is denied."""
        problem = request_problem(request)
        if problem is not None:
            return Decision(False, (), f"malformed request: {problem}")
        return self._decide(request)

    def evaluate_all(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        return [self.evaluate(request) for request in requests]

    def evaluate_mapped(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """`evaluate_all` for the requests of `ServerMapping.map`, which builds them well-formed
        (every member present, of the right type): only their nesting, which tokens and arguments
        decide, is checked again. Never raises on a request of that shape."""
        decisions = []
        for request in requests:
            problem = nesting_problem(request)
            if problem is None:
                decisions.append(self._decide(request))
            else:
                decisions.append(Decision(False, (), f"malformed request: {problem}"))
        return decisions

    def access_evaluation(self, body: Mapping[str, Any], *, explain: bool = True) -> dict[str, Any]:
        """The Access Evaluation API; raises AuthzenRequestError for a malformed body (400).

        `explain=False` answers `{"decision": bool}` alone, without the deciding rules' names.
        """
        check_evaluation_request(body)
        return _answer(self._decide(body), explain)

    def access_evaluations(self, body: Mapping[str, Any], *, explain: bool = True) -> dict[str, Any]:
        """The Access Evaluations (boxcar) API; raises AuthzenRequestError for a malformed body.

        An item that cannot be evaluated is answered `decision: false` with an error context.
        The short-circuit semantics truncate the answer after the deciding item, as in the
        spec's examples: the PEP must read a missing entry as not permitted.
        """
        evaluations = parse_evaluations(body)
        if evaluations is None:
            return self.access_evaluation(body, explain=explain)
        stop_at = {"deny_on_first_deny": False, "permit_on_first_permit": True}.get(evaluations.semantic)
        answers: list[dict[str, Any]] = []
        for item in evaluations.items:
            if isinstance(item, InvalidItem):
                allowed, answer = False, item.to_authzen()
            else:
                decision = self._decide(item)
                allowed, answer = decision.allowed, _answer(decision, explain)
            answers.append(answer)
            if allowed is stop_at:
                break
        return {"evaluations": answers}

    def _decide(self, request: Mapping[str, Any]) -> Decision:
        """Decide a request whose shape has been checked."""
        try:
            candidates = self._candidates(request)
        except _Malformed as error:
            return Decision(False, (), f"malformed request: {error}")
        if not candidates:
            return _NO_RULE_ALLOWS
        activation: Activation | None = None  # checked once, shared by the request's conditions
        denying: list[str] = []  # Deny rules that applied and rules that failed, in order
        denied_by: list[str] = []
        failures: list[str] = []
        approving: list[str] = []
        allowing: list[str] = []
        for rule in candidates:
            if rule.when is not None:
                if activation is None:
                    known = request if self.information is None else enrich(request, self.information)
                    conditions = sum(candidate.when is not None for candidate in candidates)
                    activation = prepare(_activation(known), shared=conditions > 1)
                outcome = _condition(rule.when, activation)
                if outcome is False:
                    continue
                if outcome is not True:
                    denying.append(rule.name)
                    failures.append(f"rule {rule.name!r} failed: {outcome}")
                    continue
            if rule.effect == "Deny":
                denying.append(rule.name)
                denied_by.append(rule.name)
            elif rule.effect == "RequireApproval":
                approving.append(rule.name)
            else:
                allowing.append(rule.name)
        if denying:
            parts = [f"denied by {_rules(denied_by)}"] if denied_by else []
            return Decision(False, tuple(denying), "; ".join([*parts, *failures]))
        if approving:
            return self._approval_required(request, tuple(approving))
        if allowing:
            return _allowed_by(tuple(allowing))
        return _NO_RULE_ALLOWS

    def _approval_required(self, request: Mapping[str, Any], approving: tuple[str, ...]) -> Decision:
        """A requestable denial, or the permit that a bound, approved, unexpired approval grants."""
        verb = "requires" if len(approving) == 1 else "require"
        message = f"{_rules(approving)} {verb} approval"
        if self.approvals is None:
            return Decision(False, approving, message, requestable=True)
        if "approval" in request.get("context", _EMPTY):
            check = self.approvals.verify(request)
            if check.permits:
                approval = request["context"]["approval"]
                granted = {
                    "approval": {"id": check.approval_id, "approved_until": approval["approved_until"]}
                }
                return Decision(
                    True, approving, f"{message}: approved", context=granted, approval=check.approval_id
                )
            # ARAP §4.4: an expired or out-of-scope approval can be requested again; an unverifiable one not.
            if check.reason == "approval_unverifiable":
                refused = {"reason": check.reason, "next_action": "none"}
                return Decision(False, approving, f"{message}: {check.reason}", context=refused)
            fresh = self.approvals.requestable(request)
            if fresh is None:
                return Decision(
                    False, approving, f"{message}: {check.reason}", context={"next_action": "none"}
                )
            again = {**fresh, "reason": check.reason, "next_action": "request"}
            return Decision(False, approving, f"{message}: {check.reason}", True, again)
        denial = self.approvals.requestable(request)
        return Decision(False, approving, message, requestable=denial is not None, context=denial)

    def _candidates(self, request: Mapping[str, Any]) -> Sequence[_CompiledRule]:
        context = request.get("context")
        if context is None or "mcp" not in context:
            return self._tools.candidates(request["action"]["name"])
        mcp = context["mcp"]
        method = mcp.get("method") if isinstance(mcp, dict) else None
        if not isinstance(method, str):
            raise _Malformed("context.mcp.method must be a string")
        if method != TOOLS_CALL:
            return self._methods.candidates(method)
        tool = mcp.get("tool")
        if not isinstance(tool, str):
            raise _Malformed("context.mcp.tool must be a string for tools/call")
        return self._tools.candidates(tool)


_NO_RULE_ALLOWS: Final = Decision(False, (), "no rule allows this request")


@functools.lru_cache(maxsize=4096)
def _allowed_by(rules: tuple[str, ...]) -> Decision:
    """Decisions are immutable and an allow names only its rules: a few sets of rules allow nearly
    every request, so build each decision once (1 µs, 5% of a decision)."""
    return Decision(True, rules, f"allowed by {_rules(rules)}")


def _answer(decision: Decision, explain: bool) -> dict[str, Any]:
    if explain:
        return decision.to_authzen()
    # The ARAP context is the protocol's, not an explanation: it is always answered.
    return {"decision": decision.allowed, **({"context": dict(decision.context)} if decision.context else {})}


def _activation(request: Mapping[str, Any]) -> dict[str, Any]:
    """The CEL variables. Absent optional members are empty maps, so `has(subject.properties.x)`
    and `subject.?properties.x` work on requests that carry no properties or no context."""
    return {
        "subject": _with_properties(request["subject"]),
        "action": _with_properties(request["action"]),
        "resource": _with_properties(request["resource"]),
        "context": request.get("context", _EMPTY),
    }


def _with_properties(entity: dict[str, Any]) -> dict[str, Any]:
    return entity if "properties" in entity else {**entity, "properties": _EMPTY}


def _condition(when: Program, activation: Activation) -> bool | str:
    """The condition's value, or (a str) why it failed: a failure denies."""
    try:
        result = when.evaluate_prepared(activation)
    except Exception as error:  # whatever went wrong, the rule denies: never skip it
        return _clip(getattr(error, "message", None) or f"{type(error).__name__}: {error}")
    if type(result) is bool:
        return result
    if result is ABSENT:
        return "the condition is an empty optional, not a bool"
    return _clip(f"the condition is {type(result).__name__} {result!r}, not a bool")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _rules(names: Sequence[str]) -> str:
    quoted = ", ".join(repr(name) for name in names)
    return f"rule {quoted}" if len(names) == 1 else f"rules {quoted}"


# --- compilation --------------------------------------------------------------------------


def check_policy(policy: ToolPolicy) -> list[PolicyCompileError]:
    """Every problem of one policy (the operator reports them all in its status)."""
    return _compile_policy(policy, first_ordinal=0)[1]


def compile_pdp(
    policies: Sequence[ToolPolicy],
    information: InformationSource | None = None,
    approvals: ApprovalAuthority | None = None,
) -> EmbeddedPdp:
    """Compile the policies that target one server; raises the first PolicyCompileError.

    `information`, when given, enriches every request before its rules run (`policy.pip`);
    `approvals` makes RequireApproval requestable and liftable (`policy.approval`).
    """
    rules: list[_CompiledRule] = []
    for policy in policies:
        compiled, errors = _compile_policy(policy, first_ordinal=len(rules))
        if errors:
            raise errors[0]
        rules.extend(compiled)
    return EmbeddedPdp(rules, information, approvals)


def _compile_policy(
    policy: ToolPolicy, *, first_ordinal: int
) -> tuple[list[_CompiledRule], list[PolicyCompileError]]:
    compiled: list[_CompiledRule] = []
    errors: list[PolicyCompileError] = []
    for index, rule in enumerate(policy.spec.rules):
        for position, glob in enumerate(rule.methods):
            if glob == TOOLS_CALL:  # would never apply: a Deny written this way would silently not deny
                errors.append(
                    PolicyCompileError(
                        policy.key,
                        rule.name,
                        f"spec.rules[{index}].methods[{position}]",
                        None,
                        "tools/call requests are matched by `tools` globs, never by `methods`; "
                        "name the tools instead (e.g. tools: ['*'])",
                    )
                )
        when: Program | None = None
        if rule.when is not None:
            try:
                when = compile_expression(rule.when, RULE_VARIABLES)
            except CelCompileError as error:
                field = f"spec.rules[{index}].when"
                errors.append(PolicyCompileError(policy.key, rule.name, field, error.source, error.message))
        name = f"{policy.key}/{rule.name}"
        ordinal = first_ordinal + index
        compiled.append(
            _CompiledRule(ordinal, name, rule.effect, when, tuple(rule.tools), tuple(rule.methods))
        )
    return compiled, errors
