"""The official COAZ examples, run through the mapping: every declared mapping with its
example inputs, compared with the example output where the spec gives one.

Spec outputs show only what a mapping produces; callwarden also adds the PEP-owned
`context.mcp` (and `context.actors`), which `without_pep_members` removes before comparing.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from callwarden.policy.mapping import UnknownMethod
from tests.support.mapping import (
    CLAIMS,
    compile_errors,
    compiled,
    declared,
    failure_of,
    jsonc_objects,
    platform,
    requests_of,
    vector,
    without_pep_members,
)

D1 = "coaz-draft1-examples"
BINDING = "coaz-mcp-binding-examples"
FRAMEWORK = "coaz-framework-examples"


def tools_of(listing: Any) -> list[dict[str, Any]]:
    """Tool objects of a tools/list result, or of a whole JSON-RPC response carrying one."""
    tools: list[dict[str, Any]] = listing["result"]["tools"] if "result" in listing else listing["tools"]
    return tools


def as_declared(tool: dict[str, Any]) -> dict[str, Any]:
    return {"name": tool["name"], "declared": tool}


# --- COAZ Draft 1 (x-coaz-mapping, every string CEL) -------------------------------------------


def test_draft1_single_valued_example_produces_the_specs_evaluation_request() -> None:
    (tool,) = tools_of(vector(D1, "07"))
    mapping = compiled(as_declared(tool))
    call = vector(D1, "05")
    result = requests_of(mapping.map(call["method"], call["params"], vector(D1, "06")))
    assert without_pep_members(result.wire) == vector(D1, "08")
    assert "evaluations" not in result.wire
    assert len(result.requests) == 1


def test_draft1_multi_valued_example_produces_the_specs_evaluations_request() -> None:
    (tool,) = tools_of(vector(D1, "11"))
    mapping = compiled(as_declared(tool))
    call = vector(D1, "09")
    result = requests_of(mapping.map(call["method"], call["params"], vector(D1, "10")))
    assert without_pep_members(result.wire) == vector(D1, "12")
    assert [request["action"]["name"] for request in result.requests] == ["read", "write"]


def test_draft1_declaring_example_without_context_is_rejected_since_context_is_required() -> None:
    # The spec's own get_weather example omits the REQUIRED `context` (standards.md §2.3, item 2).
    weather, local = tools_of(vector(D1, "01"))
    errors = compile_errors(as_declared(weather), as_declared(local))
    assert [(error.tool, error.field) for error in errors] == [("get_weather", "inputSchema.x-coaz-mapping")]
    assert "context is required" in errors[0].message


def test_draft1_declaring_example_tool_without_coaz_uses_the_default_mapping() -> None:
    _, local = tools_of(vector(D1, "01"))
    result = requests_of(
        compiled(as_declared(local)).map("tools/call", {"name": "get_local_weather"}, vector(D1, "03"))
    )
    assert result.wire["action"] == {"name": "tools/call"}
    assert result.wire["resource"] == {"type": "tool", "id": "get_local_weather"}


def test_draft1_cel_conditions_example_evaluates_its_conditions() -> None:
    (tool,) = tools_of(vector(D1, "13"))
    mapping = compiled(as_declared(tool))
    arguments = {"from_account": "acc-1", "to_account": "acc-2", "amount": 25000.5, "currency": "USD"}
    claims = {**vector(D1, "06"), "roles": ["treasury"]}
    wire = requests_of(
        mapping.map("tools/call", {"name": "transfer_funds", "arguments": arguments}, claims)
    ).wire
    assert wire["subject"] == {"type": "treasury_user", "id": "alice@example.com"}
    assert wire["action"] == {"name": "domestic_transfer"}
    # The example's sibling `sensitivity` moves under `properties`, where AuthZEN 1.0 reads it.
    assert wire["resource"] == {"type": "account", "id": "acc-1", "properties": {"sensitivity": "high"}}
    assert without_pep_members(wire)["context"] == {"agent": claims["client_id"], "target_account": "acc-2"}


def test_draft1_mapping_error_example_message_names_the_expression() -> None:
    expected = vector(D1, "14")["error"]["message"]
    mapping = compiled(
        declared(
            "get_forecast",
            coaz=True,
            inputSchema={
                "x-coaz-mapping": {
                    "subject": [{"type": "'user'", "id": "token.sub"}],
                    "resource": [{"type": "'region'", "id": "params.arguments.region"}],
                    "context": [{}],
                }
            },
        )
    )
    message = failure_of(mapping.map("tools/call", {"name": "get_forecast", "arguments": {}}, CLAIMS))
    assert expected.startswith("COAZ mapping error: CEL expression 'params.arguments.region' failed: ")
    assert message.startswith("COAZ mapping error: tool 'get_forecast': field 'resource.id': ")
    assert "expression 'params.arguments.region' failed: " in message
    assert "region" in message.rsplit("failed: ", 1)[1]


# --- COAZ-MCP binding (x-authzen-mapping, envelope, $-prefixed CEL) ------------------------------


def test_binding_single_evaluation_example_produces_the_specs_request() -> None:
    customer, local = tools_of(vector(BINDING, "03"))
    mapping = compiled(as_declared(customer), as_declared(local))
    call = vector(BINDING, "01")
    result = requests_of(mapping.map(call["method"], call["params"], vector(BINDING, "02")))
    assert without_pep_members(result.wire) == vector(BINDING, "12")


def test_binding_declaring_example_tool_without_mapping_uses_the_default_mapping() -> None:
    customer, local = tools_of(vector(BINDING, "03"))
    mapping = compiled(as_declared(customer), as_declared(local))
    wire = requests_of(mapping.map("tools/call", {"name": "get_local_weather"}, vector(BINDING, "02"))).wire
    assert without_pep_members(wire) == {
        "subject": {"type": "identity", "id": "alice@example.com"},
        "action": {"name": "tools/call"},
        "resource": {"type": "tool", "id": "get_local_weather"},
        "context": {"agent": "http://agentprovider.com/agent-app-id"},
    }


def test_binding_multi_evaluation_example_produces_the_specs_request() -> None:
    mapping = compiled(as_declared(vector(BINDING, "13")))
    # The binding gives no tools/call for copy_object; Draft 1's multi-valued example has the
    # same arguments and yields the same object ids as the binding's expected output.
    call = vector(D1, "09")
    result = requests_of(mapping.map(call["method"], call["params"], vector(BINDING, "02")))
    assert without_pep_members(result.wire) == vector(BINDING, "14")
    assert len(result.requests) == 2


def test_binding_conditional_expression_example_evaluates_its_conditions() -> None:
    mapping = compiled(as_declared(vector(BINDING, "15")))
    arguments = {"from_account": "acc-1", "to_account": "acc-2", "amount": 500, "currency": "EUR"}
    claims = {**vector(BINDING, "02"), "roles": ["sales"]}
    wire = requests_of(
        mapping.map("tools/call", {"name": "transfer_funds", "arguments": arguments}, claims)
    ).wire
    assert wire["subject"] == {"type": "standard_user", "id": "alice@example.com"}
    assert wire["action"] == {"name": "international_transfer"}
    assert wire["resource"] == {"type": "account", "id": "acc-1", "properties": {"sensitivity": "standard"}}
    assert without_pep_members(wire)["context"] == {"agent": claims["client_id"], "target_account": "acc-2"}


def test_binding_mapping_error_example_message_names_the_expression() -> None:
    expected = vector(BINDING, "16")["error"]["message"]
    mapping = compiled(
        platform(
            "get_forecast",
            {
                "evaluation": {
                    "action": {"name": "read"},
                    "resource": {"type": "region", "id": "$params.arguments.region"},
                }
            },
        )
    )
    message = failure_of(mapping.map("tools/call", {"name": "get_forecast", "arguments": {}}, CLAIMS))
    prefix, detail = expected.split(" failed: ")
    assert prefix == "COAZ mapping error: expression '$params.arguments.region'"
    assert message.startswith("COAZ mapping error: tool 'get_forecast': field 'resource.id': ")
    assert "expression '$params.arguments.region' failed: " in message
    assert "region" in message.rsplit("failed: ", 1)[1] and "region" in detail


# --- The binding's default mappings, compared with the published text -------------------------

# Example params per method; `name` is always "probe" so the same params can be sent as a
# tools/call of the tool "probe", which carries the published mapping as a platform mapping.
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "initialize": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c"}},
    "tools/list": {"cursor": "c1"},
    "tools/call": {"arguments": {"x": 1}},
    "resources/list": {},
    "resources/read": {"uri": "file:///reports/q1.pdf"},
    "prompts/list": {},
    "prompts/get": {"arguments": {"topic": "q1"}},
    "completion/complete": {
        "ref": {"type": "ref/prompt", "name": "probe"},
        "argument": {"name": "a", "value": "b"},
    },
    "logging/setLevel": {"level": "debug"},
    "tasks/get": {"taskId": "task-7"},
    "tasks/list": {},
}
PUBLISHED_DEFAULTS = [
    (method, value)
    for prefix in ("05", "06", "07", "08", "09", "10", "11")
    for method, value in jsonc_objects(BINDING, prefix)
]
# Methods the binding defines as "the same shape; only action.name differs" from a listed one.
SAME_SHAPE = {
    "resources/subscribe": "resources/read",
    "resources/unsubscribe": "resources/read",
    "tasks/result": "tasks/get",
    "tasks/cancel": "tasks/get",
}


def published_mapping(method: str) -> dict[str, Any]:
    source = SAME_SHAPE.get(method, method)
    published: dict[str, Any] = copy.deepcopy(dict(PUBLISHED_DEFAULTS)[source])
    published["evaluation"]["action"]["name"] = method
    if method == "completion/complete":  # the published `id` writes `$` inside CEL (an erratum)
        resource = published["evaluation"]["resource"]
        resource["id"] = "$" + resource["id"][1:].replace("$", "")
    return published


def test_every_published_default_mapping_is_listed() -> None:
    assert sorted(method for method, _ in PUBLISHED_DEFAULTS) == sorted(METHOD_PARAMS)


@pytest.mark.parametrize("method", [*METHOD_PARAMS, *SAME_SHAPE], ids=str)
def test_default_mapping_matches_the_published_one(method: str) -> None:
    params = METHOD_PARAMS[SAME_SHAPE.get(method, method)]
    ours = requests_of(compiled().map(method, {"name": "probe", **params}, CLAIMS)).wire
    probe = compiled(platform("probe", published_mapping(method)))
    theirs = requests_of(probe.map("tools/call", {"name": "probe", **params}, CLAIMS)).wire
    assert ours["context"].pop("mcp") == {"server": "ns/fin", "method": method} | (
        {"tool": "probe"} if method == "tools/call" else {}
    )
    theirs["context"].pop("mcp")
    assert ours == theirs


def test_published_completion_default_is_not_valid_cel() -> None:
    # `$params.ref.name` inside the expression: a `$` only marks the start of a value.
    (errors,) = [
        compile_errors(platform("probe", value))
        for method, value in PUBLISHED_DEFAULTS
        if method == "completion/complete"
    ]
    assert [(error.field, error.expression) for error in errors] == [
        (
            "mapping.evaluation.resource.id",
            "$params.ref.type == 'ref/prompt' ? $params.ref.name : $params.ref.uri",
        )
    ]


def test_completion_default_resolves_a_resource_reference_by_uri() -> None:
    params = {
        "ref": {"type": "ref/resource", "uri": "file:///{path}"},
        "argument": {"name": "path", "value": "a"},
    }
    wire = requests_of(compiled().map("completion/complete", params, CLAIMS)).wire
    assert wire["resource"] == {"type": "resource", "id": "file:///{path}"}


def test_server_initiated_methods_are_outside_the_binding_and_denied() -> None:
    mapping = compiled()
    for method in ("sampling/createMessage", "elicitation/create", "roots/list"):
        assert mapping.map(method, {}, CLAIMS) == UnknownMethod(method)


# --- COAZ framework examples (protocol-neutral: `request` is not an MCP input variable) -------


@pytest.mark.parametrize("prefix", ["01", "02", "03", "04"])
def test_framework_example_envelopes_reject_the_request_variable_of_another_binding(prefix: str) -> None:
    example = vector(FRAMEWORK, prefix)
    errors = compile_errors(platform("probe", example))
    assert errors, "the MCP binding has only `params` and `token`"
    assert all(error.expression is not None and error.expression.startswith("$request.") for error in errors)
    assert all("request" in error.message for error in errors)


def test_framework_evaluation_example_with_mcp_variables_builds_its_request() -> None:
    example = json.loads(json.dumps(vector(FRAMEWORK, "01")).replace("$request.", "$params.arguments."))
    mapping = compiled(platform("read_document", example))
    wire = requests_of(
        mapping.map("tools/call", {"name": "read_document", "arguments": {"document_id": "doc-1"}}, CLAIMS)
    ).wire
    assert without_pep_members(wire) == {
        "subject": {"type": "identity", "id": "alice@example.com"},
        "action": {"name": "read"},
        "resource": {"type": "document", "id": "doc-1"},
        "context": {"agent": CLAIMS["client_id"]},
    }


def test_framework_evaluations_example_with_mcp_variables_builds_one_request_per_entry() -> None:
    example = json.loads(json.dumps(vector(FRAMEWORK, "02")).replace("$request.", "$params.arguments."))
    mapping = compiled(platform("move_folder", example))
    arguments = {"source": "/a", "destination": "/b"}
    result = requests_of(mapping.map("tools/call", {"name": "move_folder", "arguments": arguments}, CLAIMS))
    assert [(r["action"]["name"], r["resource"]["id"]) for r in result.requests] == [
        ("read", "/a"),
        ("write", "/b"),
    ]


# --- Earlier drafts: recognised and refused with a message that says what they are -------------


def test_draft0_example_is_rejected_as_draft0() -> None:
    (tool,) = tools_of(vector("coaz-draft0-2026-02-13-examples", "02"))
    (error,) = compile_errors(as_declared(tool))
    assert error.field == "inputSchema.x-coaz-mapping"
    assert "Draft 0" in error.message


def test_value_expr_variant_example_is_rejected_naming_the_reverted_form() -> None:
    (tool,) = tools_of(vector("coaz-draft1-value-expr-variant-examples", "07"))
    errors = compile_errors(as_declared(tool))
    assert {error.field for error in errors} == {
        "inputSchema.x-coaz-mapping.resource[0].id",
        "inputSchema.x-coaz-mapping.resource[0].type",
        "inputSchema.x-coaz-mapping.subject[0].type",
        "inputSchema.x-coaz-mapping.subject[0].id",
        "inputSchema.x-coaz-mapping.context[0].agent",
        "inputSchema.x-coaz-mapping.context[0].case",
    }
    assert all("{value}/{expr}" in error.message for error in errors)
