"""Selections the mapping resolves in Python (`token.sub`, `token.?roles.orValue([])`...) must
agree with CEL exactly, and the expressions left to CEL share one checked activation per call."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.policy.cel import CelEvaluationError, compile_expression
from callwarden.policy.mapping import AuthorizationRequests
from callwarden.policy.mapping.values import VARIABLES, CallInputs, Expression, MappingFault
from tests.support.mapping import CLAIMS, call, compiled, evaluation, failure_of, platform, requests_of

SELECTORS = [
    "token.?roles.orValue([])",
    "token.?roles.orValue({})",
    "token.?roles.orValue('none')",
    'params.arguments.?a.orValue("x")',
    "params.arguments.?a.orValue(7)",
    "params.arguments.?a.orValue(-7)",
    "params.arguments.?a.orValue(true)",
    "params.arguments.?a.orValue(null)",
    "params.arguments.a.?b.orValue([])",
    " token.?roles.orValue( [ ] ) ",
    "token.roles",
    "token.?roles",
]
# No NUL: CEL refuses an input holding one anywhere, while a selection in Python answers (the PDP's
# CEL refuses the request afterwards), so the two legitimately differ there.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(TEXT, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "roles", "arguments"]), children, max_size=3)
    ),
    max_leaves=12,
)


def outcome(expression: Expression, inputs: CallInputs) -> Any:
    try:
        return expression.resolve(inputs)
    except MappingFault:
        return "error"


def cel_outcome(source: str, inputs: CallInputs) -> Any:
    try:
        return compile_expression(source, VARIABLES).evaluate(inputs.activation)
    except CelEvaluationError:
        return "error"


@settings(max_examples=400, deadline=None)
@given(
    selector=st.sampled_from(SELECTORS),
    token=st.dictionaries(st.sampled_from(["sub", "roles"]), JSON, max_size=2),
    params=st.dictionaries(st.sampled_from(["name", "arguments"]), JSON, max_size=2),
)
def test_defaulted_selection_agrees_with_cel(
    selector: str, token: dict[str, Any], params: dict[str, Any]
) -> None:
    inputs = CallInputs(token, params)
    expression = Expression(compile_expression(selector, VARIABLES), selector, "f")
    assert outcome(expression, inputs) == cel_outcome(selector, inputs)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param({"sub": "a"}, [], id="absent-default"),
        pytest.param(
            {"sub": "a", "roles": ["analyst", "viewer"]}, ["analyst", "viewer"], id="list-of-strings"
        ),
        pytest.param({"sub": "a", "roles": "analyst"}, "analyst", id="string"),
        pytest.param({"sub": "a", "roles": [1, "x"]}, [1, "x"], id="mixed-list-through-cel"),
        pytest.param({"sub": "a", "roles": None}, None, id="null-through-cel"),
    ],
)
def test_roles_with_a_default(token: dict[str, Any], expected: Any) -> None:
    mapping = compiled(
        platform("t", evaluation(subject={"properties": {"roles": "$token.?roles.orValue([])"}}))
    )
    request = requests_of(mapping.map("tools/call", {"name": "t"}, {**CLAIMS, **token})).requests[0]
    assert request["subject"]["properties"]["roles"] == expected


def test_results_never_alias_the_token_or_each_other() -> None:
    expression = Expression(compile_expression("token.?roles.orValue([])", VARIABLES), "$x", "f")
    roles = ["analyst"]
    copied = expression.resolve(CallInputs({"roles": roles}, {}))
    assert copied == roles
    assert copied is not roles
    first = expression.resolve(CallInputs({}, {}))
    first.append("tampered")
    assert expression.resolve(CallInputs({}, {})) == []


def test_defaulted_selection_does_not_read_unrelated_deep_arguments() -> None:
    junk: Any = "leaf"
    for _ in range(10_000):
        junk = {"k": [junk]}
    mapping = compiled(
        platform("t", evaluation(resource={"type": "r", "id": "$params.arguments.?id.orValue('none')"}))
    )
    result = requests_of(call(mapping, "t", {"junk": junk}))
    assert result.wire["resource"]["id"] == "none"


MANY_EXPRESSIONS = platform(
    "t",
    evaluation(
        resource={
            "type": "account",
            "id": "$params.arguments.id + '-x'",
            "properties": {
                "big": "$params.arguments.n > 10",
                "size": "$size(params.arguments.tags)",
                "first": "$params.arguments.tags[0]",
            },
        }
    ),
)


def test_expressions_left_to_cel_share_the_call() -> None:
    result = call(compiled(MANY_EXPRESSIONS), "t", {"id": "a", "n": 11, "tags": ["p", "q"]})
    assert isinstance(result, AuthorizationRequests)
    assert result.wire["resource"] == {
        "type": "account",
        "id": "a-x",
        "properties": {"big": True, "size": 2, "first": "p"},
    }


def test_refused_input_names_the_first_expression_that_needed_cel() -> None:
    message = failure_of(call(compiled(MANY_EXPRESSIONS), "t", {"id": "a\u0000", "n": 1, "tags": []}))
    assert "field 'resource.id'" in message
    assert "NUL" in message
