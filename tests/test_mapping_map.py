"""ServerMapping.map: methods, default mappings, the PEP-owned context, subject anchoring,
audience resolution, AuthZEN default inheritance and runtime mapping errors."""

from __future__ import annotations

from typing import Any

import pytest

from callwarden.policy.mapping import AuthorizationRequests, PassThrough, UnknownMethod
from tests.support.mapping import (
    CLAIMS,
    RESOURCE,
    call,
    compiled,
    d1_tool,
    evaluation,
    failure_of,
    platform,
    requests_of,
)

# --- Methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["ping", "notifications/initialized", "notifications/cancelled", "notifications/x"]
)
def test_pass_through_methods_never_reach_the_pdp(method: str) -> None:
    assert compiled().map(method, None, CLAIMS) == PassThrough()


@pytest.mark.parametrize(
    "method",
    ["tools/delete", "resources/templates/list", "Ping", "notifications", "", "tools/call/", "TOOLS/LIST"],
)
def test_unknown_methods_are_denied(method: str) -> None:
    assert compiled().map(method, {}, CLAIMS) == UnknownMethod(method)


# method, params, expected resource, extra context members
DEFAULTS = [
    (
        "initialize",
        {"protocolVersion": "2025-11-25"},
        {"type": "mcp_server", "id": RESOURCE},
        {"protocol_version": "2025-11-25"},
    ),
    ("tools/list", None, {"type": "mcp_server", "id": RESOURCE}, {}),
    ("resources/list", {"cursor": "c"}, {"type": "mcp_server", "id": RESOURCE}, {}),
    ("prompts/list", None, {"type": "mcp_server", "id": RESOURCE}, {}),
    ("tasks/list", None, {"type": "mcp_server", "id": RESOURCE}, {}),
    ("tools/call", {"name": "get_weather"}, {"type": "tool", "id": "get_weather"}, {}),
    ("resources/read", {"uri": "file:///a"}, {"type": "resource", "id": "file:///a"}, {}),
    ("resources/subscribe", {"uri": "file:///a"}, {"type": "resource", "id": "file:///a"}, {}),
    ("resources/unsubscribe", {"uri": "file:///a"}, {"type": "resource", "id": "file:///a"}, {}),
    ("prompts/get", {"name": "summary"}, {"type": "prompt", "id": "summary"}, {}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"}}, {"type": "prompt", "id": "p"}, {}),
    ("logging/setLevel", {"level": "info"}, {"type": "mcp_server", "id": RESOURCE}, {"level": "info"}),
    ("tasks/get", {"taskId": "t-1"}, {"type": "task", "id": "t-1"}, {}),
    ("tasks/result", {"taskId": "t-1"}, {"type": "task", "id": "t-1"}, {}),
    ("tasks/cancel", {"taskId": "t-1"}, {"type": "task", "id": "t-1"}, {}),
]


@pytest.mark.parametrize(
    ("method", "params", "resource", "extra"), DEFAULTS, ids=[row[0] for row in DEFAULTS]
)
def test_default_mapping_of_each_method(
    method: str, params: dict[str, Any] | None, resource: dict[str, Any], extra: dict[str, Any]
) -> None:
    result = requests_of(compiled().map(method, params, CLAIMS))
    tool = params["name"] if method == "tools/call" and params else None
    mcp = {"server": "ns/fin", "method": method} | ({"tool": tool} if tool else {})
    assert result.wire == {
        "subject": {"type": "identity", "id": "alice@example.com"},
        "action": {"name": method},
        "resource": resource,
        "context": {**extra, "agent": CLAIMS["client_id"], "mcp": mcp},
    }
    assert result.requests == (result.wire,)
    assert result.tool == tool


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("resources/read", {}, "resource.id"),
        ("prompts/get", {}, "resource.id"),
        ("tasks/get", {"taskId": 7}, "resource.id"),
        ("initialize", {}, "context.protocol_version"),
        ("completion/complete", {"ref": {"type": "ref/resource"}}, "resource.id"),
    ],
    ids=[
        "read-without-uri",
        "get-without-name",
        "task-id-not-string",
        "initialize-without-version",
        "ref-without-uri",
    ],
)
def test_default_mapping_with_missing_params_is_a_mapping_error(method: str, params: Any, field: str) -> None:
    message = failure_of(compiled().map(method, params, CLAIMS))
    assert message.startswith(f"COAZ mapping error: method {method!r}: field {field!r}")


def test_tool_not_listed_uses_the_default_tools_call_mapping() -> None:
    wire = requests_of(call(compiled(platform("known", evaluation())), "unknown_tool")).wire
    assert wire["action"] == {"name": "tools/call"} and wire["resource"] == {
        "type": "tool",
        "id": "unknown_tool",
    }


# --- Audience as resource id -------------------------------------------------------------------

AUDIENCES = [
    pytest.param(RESOURCE, RESOURCE, id="string"),
    pytest.param("https://other.example.com", "https://other.example.com", id="other-string-used-directly"),
    pytest.param([RESOURCE], RESOURCE, id="array-of-one"),
    pytest.param(
        ["https://a.example.com", RESOURCE, "https://b.example.com"], RESOURCE, id="array-holding-it"
    ),
]


@pytest.mark.parametrize(("audience", "resource_id"), AUDIENCES)
def test_token_aud_resolves_to_a_single_string(audience: Any, resource_id: str) -> None:
    wire = requests_of(compiled().map("tools/list", None, {**CLAIMS, "aud": audience})).wire
    assert wire["resource"] == {"type": "mcp_server", "id": resource_id}


@pytest.mark.parametrize(
    ("audience", "words"),
    [
        pytest.param(
            ["https://a.example.com", "https://b.example.com"], "does not contain", id="array-without-it"
        ),
        pytest.param([], "does not contain", id="empty-array"),
        pytest.param(42, "is a int", id="number"),
        pytest.param(None, "is null", id="null"),
    ],
)
def test_token_aud_that_does_not_name_this_server_is_a_mapping_error(audience: Any, words: str) -> None:
    message = failure_of(compiled().map("tools/list", None, {**CLAIMS, "aud": audience}))
    assert "field 'resource.id': expression '$token.aud' failed" in message and words in message


def test_token_without_aud_is_a_mapping_error() -> None:
    claims = {key: value for key, value in CLAIMS.items() if key != "aud"}
    assert "is absent" in failure_of(compiled().map("tools/list", None, claims))


def test_token_aud_in_a_declared_mapping_resolves_the_same_way() -> None:
    mapping = compiled(platform("t", evaluation(context={"server": "$token.aud"})))
    wire = requests_of(call(mapping, "t", claims={**CLAIMS, "aud": ["x", RESOURCE]})).wire
    assert wire["context"]["server"] == RESOURCE


# --- Subject anchoring -------------------------------------------------------------------------


def test_omitted_subject_gets_the_token_subject_and_type_identity() -> None:
    wire = requests_of(call(compiled(platform("t", evaluation())), "t")).wire
    assert wire["subject"] == {"type": "identity", "id": "alice@example.com"}


def test_mapping_subject_type_and_properties_are_kept() -> None:
    mapping = compiled(
        platform("t", evaluation(subject={"type": "user", "properties": {"dept": "$token.dept"}}))
    )
    wire = requests_of(call(mapping, "t", claims={**CLAIMS, "dept": "finance"})).wire
    assert wire["subject"] == {"type": "user", "id": "alice@example.com", "properties": {"dept": "finance"}}


def test_designated_subject_claim_anchors_subject_id() -> None:
    mapping = compiled(platform("t", evaluation(subject={"id": "$token.sub"})), subjectClaim="oid")
    wire = requests_of(call(mapping, "t", claims={**CLAIMS, "oid": "user-42"})).wire
    assert wire["subject"]["id"] == "user-42"


def test_designated_subject_claim_applies_to_default_mappings() -> None:
    wire = requests_of(
        compiled(subjectClaim="oid").map("tools/list", None, {**CLAIMS, "oid": "user-42"})
    ).wire
    assert wire["subject"] == {"type": "identity", "id": "user-42"}


def test_subject_id_expression_equal_to_the_claim_is_accepted() -> None:
    mapping = compiled(platform("t", evaluation(subject={"id": "$params.arguments.user"})))
    assert (
        requests_of(call(mapping, "t", {"user": "alice@example.com"})).wire["subject"]["id"]
        == "alice@example.com"
    )


def test_subject_id_from_arguments_that_differs_from_the_token_is_a_mapping_error() -> None:
    mapping = compiled(platform("t", evaluation(subject={"id": "$params.arguments.user"})))
    message = failure_of(call(mapping, "t", {"user": "mallory@example.com"}))
    assert message == (
        "COAZ mapping error: tool 't': field 'subject.id': expression '$params.arguments.user' does not "
        "resolve to the token's 'sub' claim; subject.id is anchored to the token"
    )


def test_subject_id_resolving_absent_gets_the_token_subject() -> None:
    mapping = compiled(platform("t", evaluation(subject={"id": "$token.?nothing"})))
    assert requests_of(call(mapping, "t")).wire["subject"]["id"] == "alice@example.com"


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        pytest.param(
            {"client_id": "a", "aud": RESOURCE}, "'sub' claim (it anchors subject.id) is absent", id="no-sub"
        ),
        pytest.param({"sub": 7, "aud": RESOURCE}, "is a int", id="numeric-sub"),
        pytest.param({"sub": None, "aud": RESOURCE}, "is null", id="null-sub"),
    ],
)
def test_token_without_a_string_subject_claim_is_a_mapping_error(claims: dict[str, Any], words: str) -> None:
    assert words in failure_of(compiled().map("tools/list", None, claims))


@pytest.mark.parametrize(
    ("subject_type", "words"),
    [("$token.level", "must be a string; it resolved to a int"), ("$token.?nothing", "")],
    ids=["non-string-type", "absent-type-defaults"],
)
def test_subject_type_must_be_a_string_or_absent(subject_type: str, words: str) -> None:
    mapping = compiled(platform("t", evaluation(subject={"type": subject_type})))
    result = call(mapping, "t", claims={**CLAIMS, "level": 3})
    if words:
        assert words in failure_of(result)
    else:
        assert requests_of(result).wire["subject"]["type"] == "identity"


# --- Agent and actors --------------------------------------------------------------------------


def test_agent_comes_from_the_token_when_the_mapping_does_not_set_it() -> None:
    wire = requests_of(call(compiled(platform("t", evaluation())), "t")).wire
    assert wire["context"]["agent"] == CLAIMS["client_id"]


def test_no_agent_when_the_token_names_none() -> None:
    claims = {key: value for key, value in CLAIMS.items() if key != "client_id"}
    assert "agent" not in requests_of(compiled().map("tools/list", None, claims)).wire["context"]


def test_designated_agent_claim_is_used() -> None:
    wire = requests_of(compiled(agentClaim="azp").map("tools/list", None, {**CLAIMS, "azp": "agent-7"})).wire
    assert wire["context"]["agent"] == "agent-7"


def test_mapping_agent_equal_to_the_token_agent_is_accepted() -> None:
    mapping = compiled(platform("t", evaluation(context={"agent": "$token.client_id"})))
    assert requests_of(call(mapping, "t")).wire["context"]["agent"] == CLAIMS["client_id"]


@pytest.mark.parametrize(
    ("agent", "claims"),
    [
        pytest.param("$params.arguments.agent", CLAIMS, id="agent-from-arguments"),
        pytest.param("trusted-agent", CLAIMS, id="literal-agent"),
        pytest.param("$params.arguments.agent", {"sub": "alice@example.com"}, id="agent-when-token-has-none"),
    ],
)
def test_mapping_agent_that_differs_from_the_token_is_agent_smuggling(
    agent: str, claims: dict[str, Any]
) -> None:
    mapping = compiled(platform("t", evaluation(context={"agent": agent})))
    message = failure_of(call(mapping, "t", {"agent": "other"}, claims))
    assert "field 'context.agent'" in message and "context.agent is set by the PEP" in message


def test_agent_must_match_in_type_too() -> None:
    mapping = compiled(platform("t", evaluation(context={"agent": "$params.arguments.agent"})))
    assert "field 'context.agent'" in failure_of(
        call(mapping, "t", {"agent": 1}, {**CLAIMS, "client_id": 1.0})
    )


ACT = {
    "sub": "agent-b",
    "iss": "https://idp",
    "client_id": "b",
    "exp": 1,
    "act": {"sub": "agent-a", "aud": "x"},
}


def test_actor_chain_is_listed_outermost_first_with_identity_members_only() -> None:
    wire = requests_of(compiled().map("tools/list", None, {**CLAIMS, "act": ACT})).wire
    assert wire["context"]["actors"] == [
        {"sub": "agent-b", "iss": "https://idp", "client_id": "b"},
        {"sub": "agent-a"},
    ]


def test_no_actors_without_an_act_claim() -> None:
    assert "actors" not in requests_of(compiled().map("tools/list", None, CLAIMS)).wire["context"]


def deep_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"actor-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"actor-{level}", "act": act}
    return act


def test_sixteen_actors_are_accepted() -> None:
    wire = requests_of(compiled().map("tools/list", None, {**CLAIMS, "act": deep_act(16)})).wire
    assert [actor["sub"] for actor in wire["context"]["actors"]] == [f"actor-{n}" for n in range(1, 17)]


@pytest.mark.parametrize(
    ("act", "words"),
    [
        pytest.param("agent", "malformed at depth 0", id="string"),
        pytest.param({"iss": "x"}, "malformed at depth 0", id="no-sub"),
        pytest.param({"sub": 1}, "malformed at depth 0", id="numeric-sub"),
        pytest.param({"sub": "a", "act": None}, "malformed at depth 1", id="null-nested"),
        pytest.param({"sub": "a", "act": ["b"]}, "malformed at depth 1", id="list-nested"),
        pytest.param({"sub": "a", "iss": 3}, "non-string 'iss'", id="numeric-iss"),
        pytest.param(deep_act(17), "more than 16 actors", id="seventeen-actors"),
        pytest.param(None, "malformed at depth 0", id="null"),
    ],
)
def test_malformed_act_claim_is_a_mapping_error(act: Any, words: str) -> None:
    assert words in failure_of(compiled().map("tools/list", None, {**CLAIMS, "act": act}))


# --- The PEP-owned context ----------------------------------------------------------------------


def test_context_mcp_names_server_method_and_tool() -> None:
    wire = requests_of(call(compiled(), "get_weather")).wire
    assert wire["context"]["mcp"] == {"server": "ns/fin", "method": "tools/call", "tool": "get_weather"}


def test_context_mcp_has_no_tool_outside_tools_call() -> None:
    assert requests_of(compiled().map("prompts/list", None, CLAIMS)).wire["context"]["mcp"] == {
        "server": "ns/fin",
        "method": "prompts/list",
    }


EVALUATIONS = {
    "evaluations": {
        "action": {"name": "read"},
        "resource": {"type": "doc", "id": "top", "properties": {"owner": "bob"}},
        "context": {"purpose": "audit"},
        "evaluations": [
            {},
            {"resource": {"type": "doc", "id": "$params.arguments.id"}},
            {"action": {"name": "write"}, "context": {"purpose": "$params.arguments.purpose"}},
        ],
    }
}


def expanded() -> AuthorizationRequests:
    mapping = compiled(platform("t", EVALUATIONS))
    return requests_of(call(mapping, "t", {"id": "d2", "purpose": "edit"}, {**CLAIMS, "act": {"sub": "a"}}))


def test_evaluations_wire_keeps_top_level_defaults_and_entries_as_written() -> None:
    wire = expanded().wire
    assert wire["action"] == {"name": "read"}
    assert wire["resource"] == {"type": "doc", "id": "top", "properties": {"owner": "bob"}}
    assert [sorted(item) for item in wire["evaluations"]] == [[], ["resource"], ["action", "context"]]


def test_empty_entry_inherits_every_top_level_default() -> None:
    first = expanded().requests[0]
    assert first["action"] == {"name": "read"} and first["resource"]["id"] == "top"
    assert first["context"]["purpose"] == "audit"


def test_entry_entity_replaces_the_default_whole_without_merging() -> None:
    second = expanded().requests[1]
    assert second["resource"] == {"type": "doc", "id": "d2"}  # no inherited properties


def test_entry_context_replaces_the_top_level_context() -> None:
    third = expanded().requests[2]
    assert third["action"] == {"name": "write"}
    assert third["context"]["purpose"] == "edit"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_expanded_request_carries_the_pep_context(index: int) -> None:
    context = expanded().requests[index]["context"]
    assert context["mcp"] == {"server": "ns/fin", "method": "tools/call", "tool": "t"}
    assert context["agent"] == CLAIMS["client_id"] and context["actors"] == [{"sub": "a"}]


def test_wire_contexts_carry_the_pep_context_at_top_level_and_per_entry() -> None:
    wire = expanded().wire
    for context in (wire["context"], wire["evaluations"][2]["context"]):
        assert {"mcp", "agent", "actors"} <= set(context)


def test_every_expanded_request_shares_the_anchored_subject() -> None:
    requests = expanded().requests
    assert all(request["subject"] == {"type": "identity", "id": "alice@example.com"} for request in requests)


def test_a_list_value_never_fans_out() -> None:
    mapping = compiled(
        platform(
            "t",
            evaluation(
                resource={"type": "docs", "id": "batch", "properties": {"ids": "$params.arguments.ids"}}
            ),
        )
    )
    result = requests_of(call(mapping, "t", {"ids": ["a", "b", "c"]}))
    assert len(result.requests) == 1 and result.wire["resource"]["properties"]["ids"] == ["a", "b", "c"]


def test_draft1_multi_element_context_goes_into_each_entry() -> None:
    mapping = compiled(
        d1_tool(
            "t",
            {
                "subject": [{"type": "'user'", "id": "token.sub"}],
                "resource": [
                    {"type": "'f'", "id": "params.arguments.a"},
                    {"type": "'f'", "id": "params.arguments.b"},
                ],
                "context": [{"step": "1"}, {"step": "2"}],
            },
        )
    )
    result = requests_of(call(mapping, "t", {"a": "x", "b": "y"}))
    assert [item["context"]["step"] for item in result.wire["evaluations"]] == [1, 2]
    assert all("mcp" in item["context"] for item in result.wire["evaluations"])
    assert result.wire["action"] == {"name": "t"}  # Draft 1: missing action = the tool name


# --- Literals, expressions and absence -------------------------------------------------------------

LITERALS = [
    pytest.param("$$50", "$50", id="double-dollar-escape"),
    pytest.param("$$", "$", id="double-dollar-alone"),
    pytest.param("price $5", "price $5", id="dollar-inside-is-literal"),
    pytest.param("token.sub", "token.sub", id="unprefixed-is-literal"),
    pytest.param(10, 10, id="number"),
    pytest.param(True, True, id="boolean"),
    pytest.param(None, None, id="null"),
    pytest.param(["$$a", "b"], ["$a", "b"], id="list-of-literals"),
    pytest.param({"k": "$token.sub"}, {"k": "alice@example.com"}, id="nested-expression"),
    pytest.param(["$token.sub", 1], ["alice@example.com", 1], id="expression-in-list"),
    pytest.param("$'urn:doc:' + params.arguments.id", "urn:doc:d1", id="concatenation"),
    pytest.param("$params.arguments.n > 10 ? 'high' : 'low'", "high", id="conditional"),
    pytest.param("$params.arguments", {"id": "d1", "n": 12, "deep": {"x": [1]}}, id="whole-arguments-map"),
]


@pytest.mark.parametrize(("written", "value"), LITERALS)
def test_literal_and_expression_values(written: Any, value: Any) -> None:
    mapping = compiled(platform("t", evaluation(context={"v": written})))
    wire = requests_of(call(mapping, "t", {"id": "d1", "n": 12, "deep": {"x": [1]}})).wire
    assert wire["context"]["v"] == value


def test_optional_selection_absent_omits_the_field() -> None:
    mapping = compiled(platform("t", evaluation(context={"case": "$params.arguments.?case"})))
    assert "case" not in requests_of(call(mapping, "t", {})).wire["context"]


def test_optional_selection_present_keeps_the_field() -> None:
    mapping = compiled(platform("t", evaluation(context={"case": "$params.arguments.?case"})))
    assert requests_of(call(mapping, "t", {"case": "c1"})).wire["context"]["case"] == "c1"


def test_absent_optional_property_is_omitted_from_properties() -> None:
    mapping = compiled(
        platform("t", evaluation(resource={"type": "r", "id": "x", "properties": {"o": "$token.?owner"}}))
    )
    assert requests_of(call(mapping, "t")).wire["resource"] == {"type": "r", "id": "x", "properties": {}}


def test_nested_arguments_are_mapped_without_flattening() -> None:
    mapping = compiled(
        platform("run", evaluation(resource={"type": "tool", "id": "$params.arguments.call.inner.tool_name"}))
    )
    arguments = {"call": {"inner": {"tool_name": "delete_everything"}}}
    assert requests_of(call(mapping, "run", arguments)).wire["resource"]["id"] == "delete_everything"


REQUIRED_VALUES = [
    pytest.param("resource", "id", "$params.arguments.?id", {}, "absent", id="absent-resource-id"),
    pytest.param("resource", "id", "$params.arguments.id", {"id": None}, "null", id="null-resource-id"),
    pytest.param("resource", "id", "$params.arguments.id", {"id": 5}, "a int", id="number-resource-id"),
    pytest.param("resource", "type", "$params.arguments.t", {"t": ["a"]}, "a list", id="list-resource-type"),
    pytest.param("resource", "id", "$params.arguments.id", {"id": {"a": 1}}, "a dict", id="map-resource-id"),
    pytest.param("action", "name", "$params.arguments.op", {"op": True}, "a bool", id="boolean-action-name"),
    pytest.param("action", "name", "$params.arguments.?op", {}, "absent", id="absent-action-name"),
    pytest.param(
        "resource", "properties", "$params.arguments.p", {"p": "x"}, "a str", id="string-properties"
    ),
]


@pytest.mark.parametrize(("entity", "member", "written", "arguments", "resolved"), REQUIRED_VALUES)
def test_required_member_that_is_not_a_string_is_a_mapping_error(
    entity: str, member: str, written: str, arguments: dict[str, Any], resolved: str
) -> None:
    base = {"action": {"name": "a"}, "resource": {"type": "r", "id": "x"}}
    body = {**base, entity: {**base[entity], member: written}}
    message = failure_of(call(compiled(platform("t", {"evaluation": body})), "t", arguments))
    assert message.startswith(f"COAZ mapping error: tool 't': field '{entity}.{member}' ")
    assert f"resolved to {resolved}" in message


def test_runtime_cel_error_names_tool_field_and_expression() -> None:
    mapping = compiled(platform("t", evaluation(resource={"type": "r", "id": "$params.arguments.region"})))
    assert failure_of(call(mapping, "t", {})) == (
        "COAZ mapping error: tool 't': field 'resource.id': expression '$params.arguments.region' failed: "
        'Key not found in map : "region"'
    )


def test_runtime_error_in_an_entry_names_the_entry() -> None:
    message = failure_of(call(compiled(platform("t", EVALUATIONS)), "t", {"purpose": "p"}))
    assert "field 'evaluations[1].resource.id': expression '$params.arguments.id' failed" in message


def test_draft1_runtime_error_shows_the_expression_as_written() -> None:
    mapping = compiled(
        d1_tool(
            "t",
            {
                "subject": [{"id": "token.sub"}],
                "resource": [{"type": "'r'", "id": "params.arguments.region"}],
                "context": [{}],
            },
        )
    )
    assert "field 'resource.id': expression 'params.arguments.region' failed" in failure_of(
        call(mapping, "t", {})
    )


def test_division_by_zero_is_a_mapping_error() -> None:
    mapping = compiled(platform("t", evaluation(context={"ratio": "$1 / params.arguments.n"})))
    assert "divide by zero" in failure_of(call(mapping, "t", {"n": 0}))


def test_token_claims_can_be_any_mapping() -> None:
    from types import MappingProxyType

    wire = requests_of(compiled().map("tools/list", None, MappingProxyType(CLAIMS))).wire
    assert wire["subject"]["id"] == "alice@example.com"


def test_params_can_be_any_mapping() -> None:
    from types import MappingProxyType

    result = requests_of(compiled().map("tools/call", MappingProxyType({"name": "get_weather"}), CLAIMS))
    assert result.wire["resource"] == {"type": "tool", "id": "get_weather"}
