"""Mapping detection and compilation: which forms are accepted, and every way a mapping is
rejected at load time, with the tool, field and expression each error names."""

from __future__ import annotations

from typing import Any

import pytest

from callwarden.policy.mapping import MappingCompileError, MappingFailure
from tests.support.mapping import (
    CLAIMS,
    binding_tool,
    call,
    compile_errors,
    compiled,
    compiled_with_errors,
    d1_tool,
    declared,
    evaluation,
    failure_of,
    platform,
    requests_of,
)

SUBJECT_D1 = [{"type": "'user'", "id": "token.sub"}]
RESOURCE_D1 = [{"type": "'doc'", "id": "params.arguments.id"}]


def d1(**fields: Any) -> dict[str, Any]:
    """A valid Draft 1 mapping, with `fields` replaced (None removes one)."""
    mapping: dict[str, Any] = {"subject": SUBJECT_D1, "resource": RESOURCE_D1, "context": [{}]}
    mapping.update(fields)
    return {key: value for key, value in mapping.items() if value is not None}


# --- Accepted forms ----------------------------------------------------------------------------

ACCEPTED = [
    pytest.param(platform("t", evaluation()), id="platform-evaluation"),
    pytest.param(
        platform(
            "t",
            {
                "evaluations": {
                    "resource": {"type": "r", "id": "x"},
                    "evaluations": [{"action": {"name": "a"}}, {"action": {"name": "b"}}],
                }
            },
        ),
        id="platform-evaluations",
    ),
    pytest.param(binding_tool("t", evaluation()), id="declared-x-authzen-mapping"),
    pytest.param(d1_tool("t", d1()), id="declared-draft1"),
    pytest.param(
        declared("t", coaz=True, inputSchema={"x-authzen-mapping": d1()}),
        id="draft1-arrays-under-x-authzen-mapping",
    ),
    pytest.param(
        declared("t", inputSchema={"x-coaz-mapping": evaluation()}), id="envelope-under-x-coaz-mapping"
    ),
    pytest.param(declared("t", inputSchema={"type": "object"}), id="declared-without-mapping"),
    pytest.param(
        declared("t", coaz=True, inputSchema={"x-authzen-mapping": evaluation()}), id="envelope-with-coaz"
    ),
    pytest.param({"name": "t"}, id="tool-without-any-mapping"),
]


@pytest.mark.parametrize("tool", ACCEPTED)
def test_accepted_mapping_compiles_without_errors(tool: dict[str, Any]) -> None:
    mapping = compiled(tool)
    assert not isinstance(call(mapping, "t", {"id": "x"}), MappingFailure)


# --- Rejected current-binding mappings (platform tools[].mapping) --------------------------------

REJECTED_PLATFORM: list[Any] = [
    # (mapping, field, expression, words in the message)
    pytest.param({}, "mapping", None, "is empty", id="no-envelope"),
    pytest.param(
        {"evaluation": evaluation()["evaluation"], "evaluations": {}},
        "mapping",
        None,
        "2 top-level keys",
        id="two-envelope-keys",
    ),
    pytest.param({"authorization": {}}, "mapping", None, "unknown envelope key", id="unknown-envelope-key"),
    pytest.param({"Evaluation": {}}, "mapping", None, "unknown envelope key", id="envelope-key-wrong-case"),
    pytest.param(
        {"subject": {"id": "$token['sub']"}, "resource": {"id": "$properties['id']"}, "context": {}},
        "mapping",
        None,
        "Draft 0",
        id="draft0-object-form",
    ),
    pytest.param(d1(), "mapping", None, "Draft 1 array form", id="draft1-form-on-the-platform"),
    pytest.param(
        {"subject": {"id": "token.sub"}, "evaluations": [{"resource": {"type": "r", "id": "x"}}]},
        "mapping",
        None,
        "reference server",
        id="reference-server-form",
    ),
    pytest.param(
        {"evaluation": "$token"}, "mapping.evaluation", None, "must be an object", id="envelope-not-object"
    ),
    pytest.param(
        {"evaluation": {"resource": {"type": "r", "id": "x"}}},
        "mapping.evaluation",
        None,
        "action is required",
        id="evaluation-without-action",
    ),
    pytest.param(
        {"evaluation": {"action": {"name": "a"}}},
        "mapping.evaluation",
        None,
        "resource is required",
        id="evaluation-without-resource",
    ),
    pytest.param(
        evaluation(resources={}), "mapping.evaluation.resources", None, "not a member", id="unknown-member"
    ),
    pytest.param(
        {
            "evaluations": {
                "options": {"evaluations_semantic": "permit_on_first_permit"},
                "action": {"name": "a"},
                "resource": {"type": "r", "id": "x"},
                "evaluations": [{}],
            }
        },
        "mapping.evaluations.options",
        None,
        "chosen by the PEP",
        id="options-set-by-mapping",
    ),
    pytest.param(
        {"evaluations": {"action": {"name": "a"}, "resource": {"type": "r", "id": "x"}, "evaluations": []}},
        "mapping.evaluations.evaluations",
        None,
        "non-empty array",
        id="evaluations-empty",
    ),
    pytest.param(
        {"evaluations": {"action": {"name": "a"}, "resource": {"type": "r", "id": "x"}}},
        "mapping.evaluations.evaluations",
        None,
        "non-empty array",
        id="evaluations-missing",
    ),
    pytest.param(
        {
            "evaluations": {
                "action": {"name": "a"},
                "resource": {"type": "r", "id": "x"},
                "evaluations": [{}] * 65,
            }
        },
        "mapping.evaluations.evaluations",
        None,
        "limit is 64",
        id="too-many-evaluations",
    ),
    pytest.param(
        {
            "evaluations": {
                "action": {"name": "a"},
                "evaluations": [
                    {"resource": {"type": "r", "id": "x"}, "subject": {"id": "$params.arguments.user"}}
                ],
            }
        },
        "mapping.evaluations.evaluations[0].subject",
        None,
        "identity smuggling",
        id="per-entry-subject",
    ),
    pytest.param(
        {"evaluations": {"resource": {"type": "r", "id": "x"}, "evaluations": [{}]}},
        "mapping.evaluations.evaluations[0]",
        None,
        "no action",
        id="entry-without-action",
    ),
    pytest.param(
        {"evaluations": {"action": {"name": "a"}, "evaluations": [{"action": {"name": "b"}}]}},
        "mapping.evaluations.evaluations[0]",
        None,
        "no resource",
        id="entry-without-resource",
    ),
    pytest.param(
        {
            "evaluations": {
                "action": {"name": "a"},
                "resource": {"type": "r", "id": "x"},
                "evaluations": ["x"],
            }
        },
        "mapping.evaluations.evaluations[0]",
        None,
        "must be an object",
        id="entry-not-object",
    ),
    pytest.param(
        {
            "evaluations": {
                "action": {"name": "a"},
                "resource": {"type": "r", "id": "x"},
                "evaluations": [{"options": {}}],
            }
        },
        "mapping.evaluations.evaluations[0].options",
        None,
        "not a member",
        id="entry-unknown-member",
    ),
    pytest.param(
        evaluation(resource="$params.arguments.resource"),
        "mapping.evaluation.resource",
        None,
        "must be an object",
        id="entity-as-expression",
    ),
    pytest.param(
        evaluation(resource={"type": "account", "id": "a", "sensitivity": "high"}),
        "mapping.evaluation.resource.sensitivity",
        None,
        "properties",
        id="custom-attribute-beside-type-and-id",
    ),
    pytest.param(
        evaluation(resource={"type": "account", "id": 42}),
        "mapping.evaluation.resource.id",
        None,
        "must be a string",
        id="literal-number-id",
    ),
    pytest.param(
        evaluation(action={"name": True}),
        "mapping.evaluation.action.name",
        None,
        "must be a string",
        id="literal-boolean-action-name",
    ),
    pytest.param(
        evaluation(resource={"type": "r", "id": "x", "properties": ["a"]}),
        "mapping.evaluation.resource.properties",
        None,
        "must be an object",
        id="literal-properties-not-object",
    ),
    pytest.param(
        evaluation(resource={"type": "r"}),
        "mapping.evaluation.resource",
        None,
        "resource.id is required",
        id="resource-without-id",
    ),
    pytest.param(
        evaluation(subject={"id": "alice@example.com"}),
        "mapping.evaluation.subject.id",
        None,
        "cannot be a literal",
        id="literal-subject-id",
    ),
    pytest.param(
        evaluation(subject={"id": "$$token.sub"}),
        "mapping.evaluation.subject.id",
        None,
        "cannot be a literal",
        id="escaped-subject-id-is-a-literal",
    ),
    pytest.param(
        evaluation(context={"mcp": {"tool": "x"}}),
        "mapping.evaluation.context.mcp",
        None,
        "set by the PEP",
        id="context-mcp-written",
    ),
    pytest.param(
        evaluation(context={"actors": []}),
        "mapping.evaluation.context.actors",
        None,
        "set by the PEP",
        id="context-actors-written",
    ),
    pytest.param(
        evaluation(context="$params"),
        "mapping.evaluation.context",
        None,
        "must be an object",
        id="context-not-object",
    ),
    pytest.param(
        evaluation(resource={"type": "r", "id": "$params.arguments.id +"}),
        "mapping.evaluation.resource.id",
        "$params.arguments.id +",
        "Syntax error",
        id="cel-syntax-error",
    ),
    pytest.param(
        evaluation(resource={"type": "r", "id": "$request.id"}),
        "mapping.evaluation.resource.id",
        "$request.id",
        "request",
        id="undeclared-variable",
    ),
    pytest.param(
        evaluation(resource={"type": "r", "id": "$"}),
        "mapping.evaluation.resource.id",
        "$",
        "",
        id="empty-expression",
    ),
    pytest.param(
        evaluation(resource={"type": "r", "id": "$'" + "x" * 5000 + "'"}),
        "mapping.evaluation.resource.id",
        "$'" + "x" * 5000 + "'",
        "limit is 4096",
        id="over-long-expression",
    ),
    pytest.param(
        evaluation(context={"deep": "$" + "(" * 40 + "1" + ")" * 40}),
        "mapping.evaluation.context.deep",
        "$" + "(" * 40 + "1" + ")" * 40,
        "nests 40 levels",
        id="over-nested-expression",
    ),
    pytest.param(
        evaluation(context={"n": float("nan")}),
        "mapping.evaluation.context.n",
        None,
        "not a JSON value",
        id="non-json-literal",
    ),
]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


REJECTED_PLATFORM.append(
    pytest.param(
        evaluation(context={"deep": nested(40)}),
        "mapping.evaluation.context.deep" + ".k" * 32,
        None,
        "deeper than 32 levels",
        id="over-nested-mapping",
    )
)


@pytest.mark.parametrize(("mapping", "field", "expression", "words"), REJECTED_PLATFORM)
def test_rejected_platform_mapping_names_tool_field_and_expression(
    mapping: Any, field: str, expression: str | None, words: str
) -> None:
    errors = compile_errors(platform("probe", mapping))
    assert [(error.tool, error.field, error.expression) for error in errors] == [("probe", field, expression)]
    assert words in errors[0].message


# --- Rejected server declarations (D1 and x-authzen-mapping on the Tool object) ------------------

REJECTED_DECLARED = [
    # (tool, field, words)
    pytest.param(
        declared("t", coaz="true", inputSchema={"x-coaz-mapping": d1()}),
        "coaz",
        "boolean true",
        id="coaz-not-boolean",
    ),
    pytest.param(
        declared("t", coaz=True, inputSchema={}),
        "inputSchema.x-coaz-mapping",
        "is missing",
        id="coaz-no-mapping",
    ),
    pytest.param(
        declared("t", coaz=True, inputSchema="object"),
        "inputSchema",
        "must be an object",
        id="schema-not-object",
    ),
    pytest.param(
        declared("t", coaz=True, inputSchema={"x-coaz-mapping": d1(), "x-authzen-mapping": evaluation()}),
        "inputSchema",
        "both",
        id="two-mapping-keys",
    ),
    pytest.param(
        {"name": "t", "declared": {"name": "other", "coaz": True, "inputSchema": {"x-coaz-mapping": d1()}}},
        "name",
        "'other'",
        id="declared-name-mismatch",
    ),
    pytest.param(
        declared("t", inputSchema={"x-coaz-mapping": d1()}), "coaz", "coaz: true", id="draft1-without-coaz"
    ),
    pytest.param(
        d1_tool("t", d1(subject=None)),
        "inputSchema.x-coaz-mapping",
        "subject is required",
        id="d1-no-subject",
    ),
    pytest.param(
        d1_tool("t", d1(resource=None)),
        "inputSchema.x-coaz-mapping",
        "resource is required",
        id="d1-no-resource",
    ),
    pytest.param(
        d1_tool("t", d1(context=None)),
        "inputSchema.x-coaz-mapping",
        "context is required",
        id="d1-no-context",
    ),
    pytest.param(
        d1_tool("t", d1(extra=[{}])),
        "inputSchema.x-coaz-mapping.extra",
        "not a member",
        id="d1-unknown-member",
    ),
    pytest.param(
        d1_tool("t", d1(context=[])),
        "inputSchema.x-coaz-mapping.context",
        "non-empty array",
        id="d1-empty-array",
    ),
    pytest.param(
        d1_tool("t", d1(resource={"type": "'doc'", "id": "params.arguments.id"})),
        "inputSchema.x-coaz-mapping.resource",
        "Draft 0",
        id="d1-object-member",
    ),
    pytest.param(
        d1_tool("t", d1(action=[{"name": "'a'"}, {"name": "'b'"}], resource=RESOURCE_D1 * 3)),
        "inputSchema.x-coaz-mapping",
        "same length",
        id="d1-unequal-lengths",
    ),
    pytest.param(
        d1_tool("t", d1(subject=SUBJECT_D1 * 2)),
        "inputSchema.x-coaz-mapping.subject",
        "identity smuggling",
        id="d1-subject-per-evaluation",
    ),
    pytest.param(
        d1_tool("t", d1(subject=[{"type": "'user'", "id": "params.arguments.user"}])),
        "inputSchema.x-coaz-mapping.subject[0]",
        "derived from the token",
        id="d1-subject-not-from-token",
    ),
    pytest.param(
        d1_tool("t", d1(subject=[{"type": "'user'", "id": "'token.sub'"}])),
        "inputSchema.x-coaz-mapping.subject[0]",
        "derived from the token",
        id="d1-token-only-inside-a-string-literal",
    ),
    pytest.param(
        d1_tool("t", d1(resource=[{"type": "customer", "id": "params.arguments.id"}])),
        "inputSchema.x-coaz-mapping.resource[0].type",
        "undeclared reference",
        id="d1-unquoted-literal",
    ),
    pytest.param(
        d1_tool(
            "t",
            d1(
                resource=[
                    {"type": "'doc'", "id": "params.arguments.id", "s": "'x'", "properties": {"s": "'y'"}}
                ]
            ),
        ),
        "inputSchema.x-coaz-mapping.resource[0]",
        "both beside and inside",
        id="d1-sibling-clashes-with-properties",
    ),
    pytest.param(
        d1_tool("t", d1(context=[{"mcp": "'x'"}])),
        "inputSchema.x-coaz-mapping.context[0].mcp",
        "set by the PEP",
        id="d1-context-mcp-written",
    ),
    pytest.param(
        binding_tool("t", {"evaluation": {"action": {"name": "a"}}}),
        "inputSchema.x-authzen-mapping.evaluation",
        "resource is required",
        id="declared-binding-invalid",
    ),
]


@pytest.mark.parametrize(("tool", "field", "words"), REJECTED_DECLARED)
def test_rejected_declaration_names_tool_and_field(tool: dict[str, Any], field: str, words: str) -> None:
    errors = compile_errors(tool)
    assert [(error.tool, error.field) for error in errors] == [("t", field)]
    assert words in errors[0].message


def test_unequal_lengths_message_lists_every_array() -> None:
    (error,) = compile_errors(d1_tool("t", d1(action=[{"name": "'a'"}] * 2, resource=RESOURCE_D1 * 3)))
    assert "subject has 1, action has 2, resource has 3, context has 1" in error.message


# --- Error reporting -----------------------------------------------------------------------------


def test_compile_error_string_names_tool_field_expression_and_message() -> None:
    error = MappingCompileError("t", "mapping.evaluation.resource.id", "$x +", "Syntax error")
    assert str(error) == "tool 't': field mapping.evaluation.resource.id: expression '$x +': Syntax error"


def test_server_wide_compile_error_string_has_no_tool() -> None:
    assert str(MappingCompileError(None, "defaults", None, "broken")) == "server: field defaults: broken"


def test_compile_error_string_shortens_a_long_expression() -> None:
    text = str(MappingCompileError("t", "f", "$" + "a" * 1000, "too long"))
    assert len(text) < 300 and "..." in text


def test_every_problem_of_a_mapping_is_reported() -> None:
    mapping = evaluation(
        resource={"type": "r", "id": "$params.arguments.id +"}, context={"mcp": 1, "x": "$nope"}, extra=1
    )
    assert {error.field for error in compile_errors(platform("t", mapping))} == {
        "mapping.evaluation.extra",
        "mapping.evaluation.resource.id",
        "mapping.evaluation.context.mcp",
        "mapping.evaluation.context.x",
    }


def test_problems_of_every_tool_are_reported() -> None:
    errors = compile_errors(platform("a", {}), {"name": "ok"}, platform("b", {"x": 1}))
    assert [error.tool for error in errors] == ["a", "b"]


def test_a_rejected_tool_fails_closed_with_the_load_time_error() -> None:
    mapping = compiled_with_errors(platform("bad", evaluation(resource={"type": "r", "id": "$nope.x"})))
    message = failure_of(call(mapping, "bad", {}))
    assert message.startswith(
        "COAZ mapping error: tool 'bad': its mapping was rejected when the configuration loaded: "
    )
    assert "mapping.evaluation.resource.id" in message and "$nope.x" in message


def test_a_rejected_tool_does_not_affect_other_tools() -> None:
    mapping = compiled_with_errors(platform("bad", {}), platform("good", evaluation()))
    assert requests_of(call(mapping, "good")).wire["action"] == {"name": "act"}


def test_a_rejected_tool_never_falls_back_to_the_default_mapping() -> None:
    mapping = compiled_with_errors(platform("bad", {}))
    assert isinstance(call(mapping, "bad"), MappingFailure)
    assert requests_of(call(mapping, "other")).wire["action"] == {"name": "tools/call"}


# --- Precedence ----------------------------------------------------------------------------------


def test_platform_mapping_wins_over_the_servers_declaration() -> None:
    tool = {
        "name": "t",
        "mapping": evaluation(action={"name": "platform"}),
        "declared": {
            "name": "t",
            "inputSchema": {"x-authzen-mapping": evaluation(action={"name": "declared"})},
        },
    }
    assert requests_of(call(compiled(tool), "t")).wire["action"] == {"name": "platform"}


def test_platform_mapping_wins_even_over_a_broken_declaration() -> None:
    tool = {"name": "t", "mapping": evaluation(), "declared": {"name": "t", "coaz": "yes"}}
    assert requests_of(call(compiled(tool), "t")).wire["action"] == {"name": "act"}


def test_declaration_wins_over_the_default_mapping() -> None:
    mapping = compiled(binding_tool("t", evaluation(action={"name": "declared"})))
    assert requests_of(call(mapping, "t")).wire["action"] == {"name": "declared"}


def test_declared_mapping_applies_to_its_tool_only() -> None:
    mapping = compiled(binding_tool("t", evaluation(action={"name": "declared"})))
    assert requests_of(mapping.map("tools/call", {"name": "u"}, CLAIMS)).wire["action"] == {
        "name": "tools/call"
    }
