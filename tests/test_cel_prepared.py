"""The CEL seam's prepared activations: `prepare` checks variables once, `evaluate_prepared` runs
any number of programs on them, with every protection `evaluate` has, on both engines."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.policy.cel import (
    ABSENT,
    MAX_MAPPED_LIST_LENGTH,
    Activation,
    CelEvaluationError,
    CppEngine,
    Engine,
    engine_named,
    prepare,
)

ENGINES = [pytest.param(name, id=name) for name in ("cel-expr-python", "cel-python")]
MAPPING_VARIABLES = ("token", "params")
RULE_VARIABLES = ("subject", "action", "resource", "context")
TOKEN = {"sub": "alice", "client_id": "agent-7", "roles": ["analyst"], "tenant": None}
PARAMS = {"name": "tool", "arguments": {"entity": "example-corp", "n": 3, "x": 2.5}}
VARIABLES = {"token": TOKEN, "params": PARAMS}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return engine_named(request.param)


SOURCES = [
    pytest.param("token.sub", id="string"),
    pytest.param('"analyst" in token.roles && params.arguments.n > 2', id="bool"),
    pytest.param("params.arguments.x * 2.0", id="double"),
    pytest.param("params.arguments.n + 1", id="int"),
    pytest.param("token.tenant", id="null"),
    pytest.param("token.roles", id="list"),
    pytest.param("params.arguments", id="map"),
    pytest.param("token.?client_id", id="optional-present"),
    pytest.param("token.?nope", id="optional-absent"),
    pytest.param("token.?roles.orValue([])", id="or-value"),
    pytest.param("token.roles.map(r, r + '!')", id="map-macro"),
]


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "single-use"])
@pytest.mark.parametrize("source", SOURCES)
def test_prepared_evaluation_agrees_with_evaluate(engine: Engine, source: str, shared: bool) -> None:
    program = engine.compile(source, MAPPING_VARIABLES)
    assert program.evaluate_prepared(prepare(VARIABLES, shared=shared)) == program.evaluate(VARIABLES)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "single-use-first"])
def test_one_activation_serves_every_program(engine: Engine, shared: bool) -> None:
    programs = [engine.compile(source.values[0], MAPPING_VARIABLES) for source in SOURCES]
    activation = prepare(VARIABLES, shared=shared)
    first = [program.evaluate_prepared(activation) for program in programs]
    again = [program.evaluate_prepared(activation) for program in reversed(programs)]
    assert first == list(reversed(again)) == [program.evaluate(VARIABLES) for program in programs]


def test_an_empty_optional_is_absent(engine: Engine) -> None:
    assert engine.compile("token.?nope", MAPPING_VARIABLES).evaluate_prepared(prepare(VARIABLES)) is ABSENT


@pytest.mark.parametrize(
    "source",
    [
        pytest.param('"INVALID_ARGUMENT: not an error"', id="error-like-string"),
        pytest.param("string(token.sub == 'alice')", id="string-of-bool"),
    ],
)
def test_string_results_are_never_mistaken_for_errors(engine: Engine, source: str) -> None:
    program = engine.compile(source, MAPPING_VARIABLES)
    assert program.evaluate_prepared(prepare(VARIABLES)) == program.evaluate(VARIABLES)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("token.nope", "nope", id="missing-key"),
        pytest.param("params.arguments.n / 0", "divide by zero", id="division-by-zero"),
        pytest.param("token.sub == 'alice' && params.arguments.nope", "nope", id="bool-with-missing-key"),
    ],
)
def test_runtime_errors_are_evaluation_errors(engine: Engine, source: str, message: str) -> None:
    program = engine.compile(source, MAPPING_VARIABLES)
    with pytest.raises(CelEvaluationError, match=message) as raised:
        program.evaluate_prepared(prepare(VARIABLES))
    assert raised.value.source == source


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        pytest.param({"token": TOKEN, "params": {"a": "public\u0000x"}}, "NUL", id="nul-in-value"),
        pytest.param({"token": TOKEN, "params": {"a\u0000": 1}}, "NUL", id="nul-in-key"),
        pytest.param({"token": TOKEN, "params": {"a": b"bytes"}}, "not plain JSON", id="bytes"),
        pytest.param({"token": TOKEN, "params": {"a": {1, 2}}}, "not plain JSON", id="set"),
        pytest.param({"token": TOKEN, "params": {"a": 2**70}}, "not plain JSON", id="int-over-64-bits"),
        pytest.param({"token": TOKEN, "params": {"a": "\udcff"}}, "not plain JSON", id="lone-surrogate"),
        pytest.param([("token", TOKEN)], "not a mapping", id="not-a-mapping"),
    ],
)
def test_refused_variables_fail_every_program_that_uses_them(
    engine: Engine, variables: Any, message: str
) -> None:
    activation = prepare(variables)
    assert activation.problem is not None
    for source in ("token.sub", "true"):  # even one that reads nothing: the input is refused whole
        with pytest.raises(CelEvaluationError, match=message) as raised:
            engine.compile(source, MAPPING_VARIABLES).evaluate_prepared(activation)
        assert raised.value.source == source


def deeply_nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [300, 100_000], ids=["300", "100000"])
def test_too_deep_variables_never_reach_the_engine(engine: Engine, levels: int) -> None:
    activation = prepare({"token": TOKEN, "params": {"deep": deeply_nested(levels)}})
    with pytest.raises(CelEvaluationError, match="not plain JSON"):
        engine.compile("size(params.deep) > 0", MAPPING_VARIABLES).evaluate_prepared(activation)


def test_list_cap_applies_only_to_map_and_filter_programs(engine: Engine) -> None:
    long = list(range(MAX_MAPPED_LIST_LENGTH + 1))
    activation = prepare({"token": TOKEN, "params": {"l": long}})
    assert engine.compile("size(params.l)", MAPPING_VARIABLES).evaluate_prepared(activation) == len(long)
    with pytest.raises(CelEvaluationError, match=f"at most {MAX_MAPPED_LIST_LENGTH}"):
        engine.compile("params.l.map(x, x)", MAPPING_VARIABLES).evaluate_prepared(activation)
    with pytest.raises(CelEvaluationError, match=f"at most {MAX_MAPPED_LIST_LENGTH}"):
        engine.compile("params.l.filter(x, x > 0)", MAPPING_VARIABLES).evaluate_prepared(activation)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "single-use-first"])
def test_programs_over_other_variable_sets_share_an_activation(engine: Engine, shared: bool) -> None:
    """An activation is not tied to one environment: each engine binds it to the programs' own."""
    activation = prepare(VARIABLES, shared=shared)
    only_params = engine.compile("params.name", ("params",))
    both = engine.compile("token.sub + '/' + params.name", MAPPING_VARIABLES)
    for _ in range(2):  # alternating rebinds the native activation each time
        assert only_params.evaluate_prepared(activation) == "tool"
        assert both.evaluate_prepared(activation) == "alice/tool"


def test_a_variable_missing_from_the_activation_is_an_evaluation_error(engine: Engine) -> None:
    program = engine.compile("token.sub", MAPPING_VARIABLES)
    with pytest.raises(CelEvaluationError):
        program.evaluate_prepared(prepare({"params": PARAMS}))


def test_prepare_is_a_public_activation() -> None:
    activation = prepare(VARIABLES)
    assert isinstance(activation, Activation)
    assert activation.variables == VARIABLES
    assert activation.problem is None


def test_per_thread_activations_evaluate_shared_programs_concurrently(engine: Engine) -> None:
    """Programs are shared between threads; activations are not (one per request)."""
    programs = [
        engine.compile('subject.id == "user-" + string(resource.properties.n)', RULE_VARIABLES),
        engine.compile("resource.properties.n % 2 == 0", RULE_VARIABLES),
        engine.compile("context.tags.exists(t, t == subject.id)", RULE_VARIABLES),
    ]
    failures: list[str] = []

    def work(worker: int) -> None:
        for index in range(100):
            n = worker * 1_000 + index
            subject_id = f"user-{n}"
            variables = {
                "subject": {"type": "user", "id": subject_id},
                "action": {"name": "read"},
                "resource": {"type": "doc", "id": str(n), "properties": {"n": n}},
                "context": {"tags": ["x", subject_id]},
            }
            activation = prepare(variables)
            got = [program.evaluate_prepared(activation) for program in programs]
            if got != [True, n % 2 == 0, True]:
                failures.append(f"worker {worker}, item {index}: {got}")

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


def outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("value", run())
    except CelEvaluationError as error:
        return ("error", error.message)


@settings(max_examples=150, deadline=None)
@given(params=st.dictionaries(st.sampled_from(["a", "b"]), PLAIN, max_size=2))
def test_prepared_and_unprepared_evaluation_always_agree(params: dict[str, Any]) -> None:
    variables = {"token": TOKEN, "params": params}
    for name in ("cel-expr-python", "cel-python"):
        program = engine_named(name).compile("params.?a.orValue(params)", MAPPING_VARIABLES)
        direct = outcome(partial(program.evaluate, variables))
        prepared = outcome(partial(program.evaluate_prepared, prepare(variables)))
        # A single-use activation's second evaluation shares the engine's own form of the variables.
        single_use = prepare(variables, shared=False)
        first = outcome(partial(program.evaluate_prepared, single_use))
        second = outcome(partial(program.evaluate_prepared, single_use))
        assert direct == prepared == first == second, name


# --- Conditions cel-expr-python's programs answer in Python --------------------------------------

CONDITIONS = [
    '"analyst" in subject.properties.roles',
    'resource.id == "example-corp"',
    "resource.id != 'example-corp'",
    'resource.properties.period == "2026-Q3" && context.agent == "board-agent"',
    '"analyst" in subject.properties.roles && context.agent == "board-agent" && resource.id == "x"',
    '"k" in resource.properties && resource.properties.k == ""',
    'context.mcp.tool == "é\U0001f600"',
]
REFERENCE = CppEngine(python_conditions=False)
SMALL_TEXT = st.sampled_from(
    ["analyst", "example-corp", "x", "", "k", "2026-Q3", "board-agent", "é\U0001f600"]
)
VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | SMALL_TEXT,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(SMALL_TEXT, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "k", "roles", "period", "agent", "tool", "properties"]), children
        )
    ),
    max_leaves=10,
)
ENTITY = st.dictionaries(st.sampled_from(["id", "properties", "agent", "mcp", "roles", "period", "k"]), VALUE)


def test_python_conditions_are_used_for_the_board_packet_shapes() -> None:
    for source in CONDITIONS:
        assert engine_named("cel-expr-python").compile(source, RULE_VARIABLES)._condition is not None  # type: ignore[attr-defined]


@settings(max_examples=500, deadline=None)
@given(
    source=st.sampled_from(CONDITIONS),
    subject=ENTITY,
    resource=ENTITY,
    context=ENTITY,
    variables_present=st.sampled_from([RULE_VARIABLES, ("subject", "resource"), ("resource", "context")]),
)
def test_python_conditions_agree_with_cel_cpp(
    source: str,
    subject: dict[str, Any],
    resource: dict[str, Any],
    context: dict[str, Any],
    variables_present: tuple[str, ...],
) -> None:
    given_variables = {
        "subject": subject,
        "action": {"name": "read"},
        "resource": resource,
        "context": context,
    }
    variables = {name: given_variables[name] for name in variables_present}
    fast = engine_named("cel-expr-python").compile(source, RULE_VARIABLES)
    reference = REFERENCE.compile(source, RULE_VARIABLES)
    assert outcome(partial(fast.evaluate, variables)) == outcome(partial(reference.evaluate, variables))
    assert outcome(partial(fast.evaluate_prepared, prepare(variables))) == outcome(
        partial(reference.evaluate_prepared, prepare(variables))
    )
