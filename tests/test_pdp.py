"""The embedded PDP on complete SARC requests: rule combination, targets and globs, failing
closed, CEL variables, compile errors, hostile requests and scale."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.policy.model import ToolPolicy
from callwarden.policy.pdp import Decision, EmbeddedPdp, PolicyCompileError, check_policy, compile_pdp


def rule(
    name: str, effect: str = "Allow", *, tools: Any = None, methods: Any = None, when: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "effect": effect}
    if tools is not None:
        body["tools"] = tools
    if methods is not None:
        body["methods"] = methods
    if when is not None:
        body["when"] = when
    return body


def policy(*rules: dict[str, Any], name: str = "rules", namespace: str = "default") -> ToolPolicy:
    return ToolPolicy.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "ToolPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"targets": ["*"], "rules": list(rules)},
        }
    )


def pdp(*rules: dict[str, Any]) -> EmbeddedPdp:
    return compile_pdp([policy(*rules)])


def named(*rules: str) -> tuple[str, ...]:
    """Rule names as decisions report them: qualified by the policy's key."""
    return tuple(f"default/rules/{name}" for name in rules)


def tool_call(tool: str, **context: Any) -> dict[str, Any]:
    """A tools/call request as the mapping module expands it."""
    return {
        "subject": {"type": "identity", "id": "alice"},
        "action": {"name": "tools/call"},
        "resource": {"type": "mcp_tool", "id": tool, "properties": {"arguments": {"period": "Q1"}}},
        "context": {"mcp": {"server": "default/finance", "method": "tools/call", "tool": tool}, **context},
    }


def method_call(method: str) -> dict[str, Any]:
    return {
        "subject": {"type": "identity", "id": "alice"},
        "action": {"name": method},
        "resource": {"type": "mcp_server", "id": "default/finance"},
        "context": {"mcp": {"server": "default/finance", "method": method}},
    }


def authzen(action: str, **extra: Any) -> dict[str, Any]:
    """A request from outside MCP: no context.mcp."""
    return {"subject": {"type": "user", "id": "alice"}, "action": {"name": action}, **extra}


# --- rule combination ------------------------------------------------------------------------

ALLOW_READ = rule("allow-read", tools=["read"])
ALLOW_ALL = rule("allow-all", tools=["*"])
DENY_READ = rule("deny-read", "Deny", tools=["read"])
APPROVE_READ = rule("approve-read", "RequireApproval", tools=["read"])


@pytest.mark.parametrize(
    ("rules", "allowed", "reasons", "requestable"),
    [
        pytest.param([ALLOW_READ], True, named("allow-read"), False, id="allow-only"),
        pytest.param([ALLOW_ALL, DENY_READ], False, named("deny-read"), False, id="deny-beats-allow"),
        pytest.param(
            [DENY_READ, ALLOW_ALL], False, named("deny-read"), False, id="deny-beats-allow-any-order"
        ),
        pytest.param(
            [ALLOW_READ, APPROVE_READ], False, named("approve-read"), True, id="requireapproval-beats-allow"
        ),
        pytest.param(
            [APPROVE_READ, DENY_READ], False, named("deny-read"), False, id="deny-beats-requireapproval"
        ),
        pytest.param(
            [ALLOW_READ, APPROVE_READ, DENY_READ], False, named("deny-read"), False, id="deny-beats-both"
        ),
        pytest.param([rule("allow-write", tools=["write"])], False, (), False, id="no-match"),
        pytest.param(
            [rule("allow-never", tools=["read"], when="false")],
            False,
            (),
            False,
            id="false-condition-no-match",
        ),
        pytest.param(
            [ALLOW_READ, ALLOW_ALL], True, named("allow-read", "allow-all"), False, id="every-allow-reported"
        ),
        pytest.param(
            [DENY_READ, rule("deny-all", "Deny", tools=["*"])],
            False,
            named("deny-read", "deny-all"),
            False,
            id="every-deny-reported",
        ),
    ],
)
def test_rule_combination(
    rules: list[dict[str, Any]], allowed: bool, reasons: tuple[str, ...], requestable: bool
) -> None:
    decision = pdp(*rules).evaluate(tool_call("read"))
    assert (decision.allowed, decision.reasons, decision.requestable) == (allowed, reasons, requestable)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param([ALLOW_READ], "allowed by rule 'default/rules/allow-read'", id="allow"),
        pytest.param([ALLOW_ALL, DENY_READ], "denied by rule 'default/rules/deny-read'", id="deny"),
        pytest.param([APPROVE_READ], "rule 'default/rules/approve-read' requires approval", id="approval"),
        pytest.param([], "no rule allows this request", id="no-rules"),
    ],
)
def test_decision_message(rules: list[dict[str, Any]], message: str) -> None:
    pdp_ = pdp(*rules) if rules else compile_pdp([])
    assert pdp_.evaluate(tool_call("read")).message == message


def test_rules_of_different_policies_are_told_apart() -> None:
    first = policy(rule("allow", tools=["read"]), name="first")
    second = policy(rule("allow", "Deny", tools=["read"]), name="second", namespace="team")
    decision = compile_pdp([first, second]).evaluate(tool_call("read"))
    assert decision.reasons == ("team/second/allow",)


def test_rule_matching_through_several_globs_is_reported_once() -> None:
    decision = pdp(rule("allow", tools=["read", "re*", "r?ad", "*"])).evaluate(tool_call("read"))
    assert decision.reasons == named("allow")


def test_decision_to_authzen() -> None:
    decision = Decision(False, ("default/rules/deny-read",), "denied by rule 'default/rules/deny-read'")
    assert decision.to_authzen() == {
        "decision": False,
        "context": {
            "reasons": ["default/rules/deny-read"],
            "reason": "denied by rule 'default/rules/deny-read'",
        },
    }


# --- targets: tools, methods, action.name ----------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "tool", "matches"),
    [
        pytest.param("read", "read", True, id="exact"),
        pytest.param("read", "Read", False, id="exact-is-case-sensitive"),
        pytest.param("query_*", "query_financials", True, id="star-suffix"),
        pytest.param("query_*", "Query_financials", False, id="glob-is-case-sensitive"),
        pytest.param("query_*", "query_", True, id="star-matches-empty"),
        pytest.param("*", "anything.at/all", True, id="star-alone"),
        pytest.param("r?ad", "road", True, id="question-mark"),
        pytest.param("r?ad", "rad", False, id="question-mark-needs-one"),
        pytest.param("[rl]ead", "lead", True, id="class"),
        pytest.param("[!r]ead", "read", False, id="negated-class"),
        pytest.param("finance.*", "financeXread", False, id="dot-is-literal"),
        pytest.param("*_doc", "create_doc", True, id="star-prefix"),
        pytest.param("*_doc", "create_doc_v2", False, id="glob-is-anchored"),
        pytest.param("read", "rеad", False, id="cyrillic-ie-look-alike"),  # noqa: RUF001 - the point
        pytest.param("read*", "rеad_all", False, id="cyrillic-look-alike-under-glob"),  # noqa: RUF001
        pytest.param("read", "ｒｅａｄ", False, id="fullwidth-look-alike"),  # noqa: RUF001
        pytest.param("read", "read\u200b", False, id="zero-width-suffix"),
        pytest.param("read", "re\u0430d", False, id="cyrillic-a"),
        pytest.param("*", "rеad", True, id="star-matches-look-alike-too"),  # noqa: RUF001
    ],
)
def test_tool_glob_matching(glob: str, tool: str, matches: bool) -> None:
    assert pdp(rule("allow", tools=[glob])).evaluate(tool_call(tool)).allowed is matches


@pytest.mark.parametrize(
    ("glob", "method", "matches"),
    [
        pytest.param("tools/list", "tools/list", True, id="exact"),
        pytest.param("resources/*", "resources/read", True, id="glob"),
        pytest.param("resources/*", "Resources/read", False, id="case-sensitive"),
        pytest.param("*", "prompts/get", True, id="star"),
        pytest.param("*", "tools/call", False, id="star-never-matches-tools-call"),
        pytest.param("tools/*", "tools/call", False, id="tools-glob-never-matches-tools-call"),
    ],
)
def test_method_glob_matching(glob: str, method: str, matches: bool) -> None:
    request = tool_call("read") if method == "tools/call" else method_call(method)
    assert pdp(rule("allow", methods=[glob])).evaluate(request).allowed is matches


def test_tools_globs_never_match_other_methods() -> None:
    assert not pdp(ALLOW_ALL).evaluate(method_call("tools/list")).allowed


def test_request_without_mcp_context_matches_tools_against_action_name() -> None:
    assert (
        pdp(rule("allow", tools=["can_*"]))
        .evaluate(authzen("can_read", resource={"type": "doc", "id": "1"}))
        .allowed
    )


def test_request_without_mcp_context_never_matches_methods() -> None:
    request = authzen("tools/list", resource={"type": "doc", "id": "1"})
    assert not pdp(rule("allow", methods=["*"])).evaluate(request).allowed


def test_glob_prefix_longer_than_the_name_does_not_match() -> None:
    assert not pdp(rule("allow", tools=["query_financials_*"])).evaluate(tool_call("query")).allowed


# --- failing closed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "reasons", "fragments"),
    [
        pytest.param(
            [ALLOW_ALL, rule("deny-role", "Deny", tools=["read"], when="subject.properties.role == 'x'")],
            named("deny-role"),
            ["rule 'default/rules/deny-role' failed", "role"],
            id="missing-key-in-deny-rule",
        ),
        pytest.param(
            [rule("allow-agent", tools=["read"], when="context.agent == 'bot'")],
            named("allow-agent"),
            ["rule 'default/rules/allow-agent' failed", "agent"],
            id="missing-key-in-allow-rule",
        ),
        pytest.param(
            [ALLOW_READ, rule("allow-broken", tools=["read"], when="context.missing == 1")],
            named("allow-broken"),
            ["failed"],
            id="error-in-one-allow-denies-despite-another-allow",
        ),
        pytest.param(
            [rule("approve-broken", "RequireApproval", tools=["read"], when="context.missing")],
            named("approve-broken"),
            ["failed"],
            id="error-in-requireapproval-rule",
        ),
        pytest.param(
            [rule("allow-typed", tools=["read"], when="context.mcp.server > 3")],
            named("allow-typed"),
            ["failed"],
            id="type-error",
        ),
        pytest.param(
            [rule("allow-string", tools=["read"], when="subject.id")],
            named("allow-string"),
            ["not a bool", "str"],
            id="non-bool-result",
        ),
        pytest.param(
            [rule("allow-int", tools=["read"], when="1")],
            named("allow-int"),
            ["not a bool"],
            id="int-one-is-not-true",
        ),
        pytest.param(
            [rule("allow-optional", tools=["read"], when="subject.?properties.role")],
            named("allow-optional"),
            ["empty optional"],
            id="empty-optional",
        ),
        pytest.param(
            [rule("allow-broken", tools=["read"], when="context.missing"), DENY_READ],
            named("allow-broken", "deny-read"),
            ["denied by rule 'default/rules/deny-read'", "rule 'default/rules/allow-broken' failed"],
            id="deny-wins-and-error-reported",
        ),
    ],
)
def test_runtime_failure_denies(
    rules: list[dict[str, Any]], reasons: tuple[str, ...], fragments: list[str]
) -> None:
    decision = pdp(*rules).evaluate(tool_call("read"))
    assert (decision.allowed, decision.reasons, decision.requestable) == (False, reasons, False)
    for fragment in fragments:
        assert fragment in decision.message


def test_non_json_value_in_context_denies() -> None:
    decision = pdp(rule("allow", tools=["read"], when="context.value == 1")).evaluate(
        tool_call("read", value=object())
    )
    assert not decision.allowed
    assert "failed" in decision.message


def test_failure_message_is_bounded() -> None:
    decision = pdp(rule("allow", tools=["read"], when="context.value")).evaluate(
        tool_call("read", value="x" * 100_000)
    )
    assert not decision.allowed
    assert len(decision.message) < 500


# --- CEL variables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "request_", "allowed"),
    [
        pytest.param("has(subject.properties.role)", tool_call("read"), False, id="has-without-properties"),
        pytest.param(
            "subject.?properties.role.orValue('') == 'admin'",
            tool_call("read"),
            False,
            id="optional-without-properties",
        ),
        pytest.param(
            "!has(context.agent)",
            authzen("read", resource={"type": "doc", "id": "1"}),
            True,
            id="has-without-context",
        ),
        pytest.param(
            "size(action.properties) == 0", tool_call("read"), True, id="action-properties-empty-map"
        ),
        pytest.param(
            "resource.properties.arguments.period == 'Q1'",
            tool_call("read"),
            True,
            id="resource-properties-kept",
        ),
        pytest.param(
            "context.mcp.server == 'default/finance'", tool_call("read"), True, id="context-mcp-visible"
        ),
        pytest.param("context.agent == 'bot'", tool_call("read", agent="bot"), True, id="context-agent"),
        pytest.param(
            "subject.type == 'identity' && subject.id == 'alice'",
            tool_call("read"),
            True,
            id="subject-members",
        ),
    ],
)
def test_cel_variables(when: str, request_: dict[str, Any], allowed: bool) -> None:
    decision = pdp(rule("allow", tools=["read"], when=when)).evaluate(request_)
    assert decision.allowed is allowed, decision.message


def test_absent_properties_are_not_added_to_the_callers_request() -> None:
    request = tool_call("read")
    pdp(rule("allow", tools=["read"], when="has(subject.properties.x)")).evaluate(request)
    assert "properties" not in request["subject"]


# --- compile errors ----------------------------------------------------------------------------


def test_compile_error_names_policy_rule_field_and_expression() -> None:
    bad = policy(ALLOW_READ, rule("broken", tools=["read"], when="subject.id =="))
    with pytest.raises(PolicyCompileError) as raised:
        compile_pdp([bad])
    error = raised.value
    assert (error.policy, error.rule, error.field, error.expression) == (
        "default/rules",
        "broken",
        "spec.rules[1].when",
        "subject.id ==",
    )
    assert error.message
    assert "'subject.id =='" in str(error)
    assert str(error).startswith(
        "policy 'default/rules': rule 'broken': field spec.rules[1].when: expression"
    )


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        pytest.param("token.sub == 'alice'", "token", id="undeclared-variable"),
        pytest.param("subject.id == 1 +", "", id="syntax"),
        pytest.param("1 + 'a' == 2", "overload", id="type-check"),
        pytest.param("(" * 40 + "true" + ")" * 40, "nests", id="too-deep"),
    ],
)
def test_compile_error_message(when: str, fragment: str) -> None:
    errors = check_policy(policy(rule("broken", tools=["read"], when=when)))
    assert len(errors) == 1
    assert errors[0].expression == when
    assert fragment in errors[0].message


def test_check_policy_reports_every_error() -> None:
    bad = policy(
        rule("first", tools=["read"], when="nope.x"),
        ALLOW_READ,
        rule("third", tools=["read"], when="subject.id == "),
    )
    assert [(e.rule, e.field) for e in check_policy(bad)] == [
        ("first", "spec.rules[0].when"),
        ("third", "spec.rules[2].when"),
    ]


def test_check_policy_accepts_a_valid_policy() -> None:
    assert (
        check_policy(policy(ALLOW_READ, rule("agent", "Deny", tools=["*"], when="context.agent == 'x'")))
        == []
    )


def test_methods_naming_tools_call_is_an_error() -> None:
    [error] = check_policy(policy(rule("deny-calls", "Deny", methods=["tools/list", "tools/call"])))
    assert (error.field, error.expression) == ("spec.rules[0].methods[1]", None)
    assert "tools" in error.message


def test_compile_pdp_raises_the_first_error_across_policies() -> None:
    good = policy(ALLOW_READ, name="good")
    bad = policy(rule("broken", tools=["read"], when="x"), name="bad")
    with pytest.raises(PolicyCompileError) as raised:
        compile_pdp([good, bad])
    assert raised.value.policy == "default/bad"


# --- hostile requests to evaluate(): denied, never raised ---------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def with_(request: dict[str, Any], **members: Any) -> dict[str, Any]:
    return {**request, **members}


READ = tool_call("read")


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        pytest.param(["not", "a", "mapping"], "JSON object", id="not-a-mapping"),
        pytest.param(with_(READ, subject="alice"), "subject must be an object", id="subject-as-string"),
        pytest.param(
            with_(READ, action={"name": 123}), "action.name must be a string", id="action-name-number"
        ),
        pytest.param(with_(READ, action={}), "action.name is required", id="action-name-missing"),
        pytest.param(
            with_(READ, resource={"type": "t"}), "resource.id is required", id="resource-id-missing"
        ),
        pytest.param(with_(READ, subject={"type": None, "id": "a"}), "subject.type", id="subject-type-null"),
        pytest.param(
            with_(READ, subject={"type": "u", "id": "a", "properties": []}),
            "subject.properties",
            id="properties-list",
        ),
        pytest.param(with_(READ, context=[]), "context must be an object", id="context-list"),
        pytest.param(
            {"action": {"name": "read"}, "resource": {"type": "t", "id": "1"}}, "subject", id="no-subject"
        ),
        pytest.param(with_(READ, context={"mcp": "tools/call"}), "context.mcp.method", id="mcp-not-object"),
        pytest.param(
            with_(READ, context={"mcp": {"method": 7}}), "context.mcp.method", id="mcp-method-number"
        ),
        pytest.param(
            with_(READ, context={"mcp": {"method": "tools/call"}}),
            "context.mcp.tool",
            id="tools-call-without-tool",
        ),
        pytest.param(
            with_(READ, context={"mcp": {"method": "tools/call", "tool": ["read"]}}),
            "context.mcp.tool",
            id="tool-as-list",
        ),
        pytest.param(with_(READ, context=nested(129)), "nests deeper", id="context-too-deep"),
        pytest.param(
            with_(READ, context=nested(20_000)), "nests deeper", id="context-deep-enough-to-crash-cel"
        ),
        pytest.param(
            with_(READ, resource={"type": "t", "id": "1", "properties": {"list": [[[[nested(130)]]]]}}),
            "resource nests deeper",
            id="properties-too-deep-through-lists",
        ),
    ],
)
def test_malformed_request_is_denied(request_: Any, fragment: str) -> None:
    decision = pdp(ALLOW_ALL, rule("cel", tools=["*"], when="context == context")).evaluate(request_)
    assert (decision.allowed, decision.reasons) == (False, ())
    assert decision.message.startswith("malformed request: ")
    assert fragment in decision.message


def test_context_at_the_depth_bound_is_evaluated() -> None:
    request = with_(READ, context={**READ["context"], "deep": nested(127)})
    assert pdp(rule("allow", tools=["read"], when="context == context")).evaluate(request).allowed


@pytest.mark.parametrize(
    ("request_", "allowed"),
    [
        pytest.param(tool_call("read" + "x" * 1_000_000), False, id="huge-tool-name-no-match"),
        pytest.param(
            authzen("read" * 250_000, resource={"type": "t", "id": "1"}), False, id="huge-action-name"
        ),
        pytest.param(tool_call("read", blob="x" * 1_000_000), True, id="huge-context-string"),
        pytest.param(tool_call("read", many={str(i): i for i in range(10_000)}), True, id="wide-context"),
    ],
)
def test_huge_inputs_are_decided(request_: dict[str, Any], allowed: bool) -> None:
    rules = [
        ALLOW_READ,
        rule("deny-globbed", "Deny", tools=["*x*y*z*"]),
        rule("cel", tools=["read"], when="true"),
    ]
    assert pdp(*rules).evaluate(request_).allowed is allowed


# --- scale -------------------------------------------------------------------------------------


def test_ten_thousand_non_matching_rules_do_not_change_decisions() -> None:
    exact = [rule(f"deny-exact-{i}", "Deny", tools=[f"tool_{i}"]) for i in range(5_000)]
    globbed = [rule(f"deny-glob-{i}", "Deny", tools=[f"tool_{i}_*"], when="true") for i in range(4_000)]
    methods = [rule(f"deny-method-{i}", "Deny", methods=[f"custom/{i}/*"]) for i in range(1_000)]
    big = compile_pdp(
        [policy(ALLOW_READ, *exact, *globbed, *methods, rule("deny-tool_7_x", "Deny", tools=["tool_7_x"]))]
    )
    assert big.evaluate(tool_call("read")).reasons == named("allow-read")
    assert big.evaluate(tool_call("tool_7_x")).reasons == named("deny-glob-7", "deny-tool_7_x")
    assert big.evaluate(tool_call("tool_4999")).reasons == named("deny-exact-4999")
    assert big.evaluate(method_call("custom/999/x")).reasons == named("deny-method-999")
    assert big.evaluate(tool_call("other")).reasons == ()


# --- properties --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
CONTEXT_RULES = pdp(
    rule("deny-flagged", "Deny", tools=["*"], when="has(context.flag) && context.flag == true"),
    rule("allow-agent", tools=["read"], when="context.?agent.orValue('') == 'bot'"),
    rule("allow-equal", tools=["read"], when="context == context"),
)


@settings(max_examples=200, deadline=None)
@given(context=st.dictionaries(st.text(max_size=8), JSON, max_size=6), tool=st.text(max_size=12))
def test_any_json_context_is_decided_and_unmatched_tools_are_denied(
    context: dict[str, Any], tool: str
) -> None:
    request = {**tool_call(tool), "context": {**context, "mcp": {"method": "tools/call", "tool": tool}}}
    decision = CONTEXT_RULES.evaluate(request)
    assert isinstance(decision, Decision)
    if tool != "read":
        assert not decision.allowed
