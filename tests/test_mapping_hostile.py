"""Hostile input to ServerMapping.map: malformed params, look-alike tool names, oversized and
deeply nested data, values CEL cannot hand back as JSON. `map` never raises; it fails closed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callwarden.policy.cel import CelEvaluationError, compile_expression
from callwarden.policy.mapping import (
    AuthorizationRequests,
    MappingFailure,
    PassThrough,
    UnknownMethod,
)
from callwarden.policy.mapping.values import VARIABLES, CallInputs, Expression, MappingFault
from tests.support.mapping import (
    CLAIMS,
    binding_tool,
    call,
    compiled,
    d1_tool,
    evaluation,
    failure_of,
    platform,
    requests_of,
)

CUSTOMER = binding_tool(
    "get_customer", evaluation(resource={"type": "customer", "id": "$params.arguments.id"})
)
CONDITIONAL = platform(
    "transfer",
    evaluation(
        resource={
            "type": "account",
            "id": "acct",
            "properties": {"sensitivity": "$params.arguments.amount > 10000 ? 'high' : 'standard'"},
        }
    ),
)
COPY = d1_tool(
    "copy",
    {
        "subject": [{"type": "'user'", "id": "token.sub"}],
        "action": [{"name": "'read'"}, {"name": "'write'"}],
        "resource": [
            {"type": "'f'", "id": "params.arguments.src"},
            {"type": "'f'", "id": "params.arguments.dst"},
        ],
        "context": [{"agent": "token.?client_id"}],
    },
)
MAPPING = compiled(CUSTOMER, CONDITIONAL, COPY)


# --- Malformed params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [None, [], ["get_customer"], "get_customer", 7, True],
    ids=["null", "empty-list", "positional", "string", "number", "boolean"],
)
def test_tools_call_params_that_are_not_an_object_are_a_mapping_error(params: Any) -> None:
    message = failure_of(MAPPING.map("tools/call", params, CLAIMS))
    assert message.startswith("COAZ mapping error: tools/call: params must be an object")


@pytest.mark.parametrize("params", [[], ["x"], "x", 1], ids=["empty-list", "list", "string", "number"])
def test_other_method_params_that_are_not_an_object_are_a_mapping_error(params: Any) -> None:
    assert "params must be an object" in failure_of(MAPPING.map("tools/list", params, CLAIMS))


def test_missing_arguments_is_a_mapping_error_naming_the_expression() -> None:
    message = failure_of(MAPPING.map("tools/call", {"name": "get_customer"}, CLAIMS))
    assert "field 'resource.id': expression '$params.arguments.id' failed" in message


@pytest.mark.parametrize("arguments", ["id=1", ["id"], 5, None], ids=["string", "list", "number", "null"])
def test_arguments_that_are_not_an_object_are_a_mapping_error(arguments: Any) -> None:
    message = failure_of(MAPPING.map("tools/call", {"name": "get_customer", "arguments": arguments}, CLAIMS))
    assert "expression '$params.arguments.id' failed" in message


@pytest.mark.parametrize(
    "method", [None, 7, b"tools/call", ["tools/call"]], ids=["null", "number", "bytes", "list"]
)
def test_method_that_is_not_a_string_is_unknown(method: Any) -> None:
    assert isinstance(MAPPING.map(method, {}, CLAIMS), UnknownMethod)


# --- Tool names --------------------------------------------------------------------------------------

BAD_NAMES = [
    pytest.param(None, id="missing"),
    pytest.param(7, id="number"),
    pytest.param(["get_customer"], id="list"),
    pytest.param("", id="empty"),
    pytest.param("a" * 129, id="too-long"),
    pytest.param("get_\u0441ustomer", id="cyrillic-es-look-alike"),
    pytest.param("get_customer\u200b", id="zero-width-space"),
    pytest.param("get_customer\n", id="trailing-newline"),
    pytest.param("\uff47\uff45\uff54_customer", id="fullwidth-letters"),
    pytest.param("get customer", id="space"),
    pytest.param("get_customer\x00", id="nul"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_tool_name_is_a_mapping_error_not_the_default_mapping(name: Any) -> None:
    params = {"arguments": {"id": "c1"}} | ({} if name is None else {"name": name})
    message = failure_of(MAPPING.map("tools/call", params, CLAIMS))
    assert "is not a valid tool name" in message
    assert message.isascii() and len(message) < 400  # look-alikes are shown escaped, and bounded


def test_cyrillic_look_alike_message_shows_the_escaped_letter() -> None:
    message = failure_of(MAPPING.map("tools/call", {"name": "get_\u0441ustomer"}, CLAIMS))
    assert "'get_\\u0441ustomer'" in message


@pytest.mark.parametrize(
    "name", ["a", "a" * 128, "ns.tool-1/v2_x", "A.B-C"], ids=["one", "128", "all-signs", "caps"]
)
def test_valid_tool_names_reach_the_default_mapping(name: str) -> None:
    assert requests_of(MAPPING.map("tools/call", {"name": name}, CLAIMS)).tool == name


def test_tool_names_are_case_sensitive() -> None:
    wire = requests_of(MAPPING.map("tools/call", {"name": "Get_Customer"}, CLAIMS)).wire
    assert wire["action"] == {"name": "tools/call"}


# --- Size and depth -------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


@pytest.mark.parametrize("depth", [300, 10_000], ids=["300", "10000"])
def test_deeply_nested_arguments_fail_closed_when_cel_runs(depth: int) -> None:
    # cel-cpp's recursive conversion overflows the C stack near 10,000 levels: it must never see this.
    message = failure_of(call(MAPPING, "transfer", {"amount": 1, "junk": nested(depth)}))
    assert "field 'resource.properties.sensitivity'" in message


def test_deeply_nested_arguments_do_not_disturb_plain_selections() -> None:
    result = requests_of(call(MAPPING, "get_customer", {"id": "c1", "junk": nested(10_000)}))
    assert result.wire["resource"]["id"] == "c1"


def test_huge_string_passes_through_unchanged() -> None:
    huge = "x" * 1_000_000
    assert requests_of(call(MAPPING, "get_customer", {"id": huge})).wire["resource"]["id"] is huge


def test_error_message_about_a_huge_value_stays_bounded() -> None:
    mapping = compiled(platform("t", evaluation(context={"n": "$int(params.arguments.s)"})))
    message = failure_of(call(mapping, "t", {"s": "9" * 100_000}))
    assert len(message) < 800


def test_huge_expression_result_is_accepted() -> None:
    mapping = compiled(platform("t", evaluation(context={"all": "$params.arguments"})))
    arguments = {f"k{index}": "v" * 100 for index in range(2_000)}
    assert requests_of(call(mapping, "t", arguments)).wire["context"]["all"] == arguments


def test_integer_beyond_cel_range_fails_closed_when_cel_runs() -> None:
    assert isinstance(call(MAPPING, "transfer", {"amount": 2**70}), MappingFailure)


@pytest.mark.parametrize(
    "expression",
    ["$b'abc'", "$timestamp('2026-01-01T00:00:00Z')", "$duration('1s')", "$type(1)", "${1: 'a'}"],
    ids=["bytes", "timestamp", "duration", "type", "int-keyed-map"],
)
def test_cel_value_that_json_cannot_carry_is_a_mapping_error(expression: str) -> None:
    mapping = compiled(platform("t", evaluation(context={"v": expression})))
    assert "field 'context.v'" in failure_of(call(mapping, "t", {}))


@pytest.mark.parametrize(
    "value",
    ["\u202eevil", "😀", "a\u0000b", "\u0430dmin"],
    ids=["rtl-override", "emoji", "nul-inside", "cyrillic-in-value"],
)
def test_unicode_in_values_is_passed_on_unchanged(value: str) -> None:
    assert requests_of(call(MAPPING, "get_customer", {"id": value})).wire["resource"]["id"] == value


def test_lone_surrogate_in_arguments_never_raises() -> None:
    for tool in ("get_customer", "transfer"):
        result = call(MAPPING, tool, {"id": "\ud800", "amount": "\udfff"})
        assert isinstance(result, AuthorizationRequests | MappingFailure)


# --- Properties --------------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from(["get_customer", "transfer", "copy", "other"]) | st.text(max_size=10)
PARAMS = (
    JSON
    | st.fixed_dictionaries({"name": NAMES, "arguments": JSON})
    | st.dictionaries(
        st.sampled_from(["name", "arguments", "uri", "taskId", "ref", "protocolVersion", "level"]), JSON
    )
)
METHODS = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "initialize",
        "resources/read",
        "completion/complete",
        "ping",
        "notifications/x",
    ]
) | st.text(max_size=12)
CLAIM_SETS = st.fixed_dictionaries(
    {"sub": st.text(max_size=8) | JSON, "aud": st.just("https://mcp.example.com") | JSON},
    optional={"client_id": JSON, "act": JSON},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=METHODS, params=PARAMS, claims=CLAIM_SETS)
def test_map_never_raises_and_returns_one_of_the_four_results(method: Any, params: Any, claims: Any) -> None:
    result = MAPPING.map(method, params, claims)
    assert isinstance(result, PassThrough | UnknownMethod | MappingFailure | AuthorizationRequests)
    if isinstance(result, AuthorizationRequests):
        assert result.requests
        for request in result.requests:
            assert request["subject"]["id"] == claims["sub"]
            assert type(request["resource"]["id"]) is str and type(request["action"]["name"]) is str
            assert request["context"]["mcp"]["method"] == method


# Plain selections are resolved in Python, not by CEL: they must agree with CEL exactly.
SELECTORS = [
    "token.sub",
    "token.?client_id",
    "params.name",
    "params.arguments.id",
    "params.arguments.?id",
    "params.arguments.a.b",
    "params.arguments.a.?b",
]
# No NUL in generated text: the CEL seam refuses an activation with a NUL anywhere (cel-cpp
# truncates strings at NUL), while a plain selection reads only the value it returns. That
# difference is deliberate and safe: a NUL that reaches a request is refused by the PDP's CEL.
CEL_SAFE_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(blacklist_characters="\x00"), max_size=6)
)
CEL_SAFE_JSON = st.recursive(
    CEL_SAFE_SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "a", "b", "sub", "name", "client_id", "arguments"]), children, max_size=3
        )
    ),
    max_leaves=12,
)


def cel_or_error(program: Any, activation: dict[str, Any]) -> Any:
    try:
        return program.evaluate(activation)
    except CelEvaluationError:
        return "error"


def selection_or_error(expression: Expression, inputs: CallInputs) -> Any:
    try:
        return expression.resolve(inputs)
    except MappingFault:
        return "error"


@settings(max_examples=300, deadline=None)
@given(
    selector=st.sampled_from(SELECTORS),
    token=st.dictionaries(st.sampled_from(["sub", "client_id", "aud"]), CEL_SAFE_JSON, max_size=3),
    params=st.dictionaries(st.sampled_from(["name", "arguments"]), CEL_SAFE_JSON, max_size=2),
)
def test_plain_selection_agrees_with_cel(
    selector: str, token: dict[str, Any], params: dict[str, Any]
) -> None:
    program = compile_expression(selector, VARIABLES)
    inputs = CallInputs(token, params)
    expected = cel_or_error(program, inputs.activation)
    assert selection_or_error(Expression(program, selector, "f"), inputs) == expected
