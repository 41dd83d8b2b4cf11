"""The CEL seam: engines, optionals, errors, cost bounds, hostile inputs, threads."""

from __future__ import annotations

import collections
import datetime
import enum
import math
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.policy.cel import (
    ABSENT,
    ENGINE_VARIABLE,
    MAX_COMPREHENSION_NESTING,
    MAX_COMPREHENSIONS,
    MAX_EXPRESSION_LENGTH,
    MAX_MAPPED_LIST_LENGTH,
    MAX_NESTING_DEPTH,
    CelCompileError,
    CelEvaluationError,
    CppEngine,
    Engine,
    PythonEngine,
    check_cost_bound,
    compile_expression,
    default_engine,
    engine_named,
)

ENGINES = [pytest.param(name, id=name) for name in ("cel-expr-python", "cel-python")]
MAPPING_VARIABLES = ("token", "params")
TOKEN = {
    "sub": "alice",
    "client_id": "agent-7",
    "act": {"sub": "agent-7"},
    "tenant": None,
    "roles": ["a", "b"],
}
PARAMS = {"name": "tool", "arguments": {"customer-id": "c-1", "n": 3, "x": 2.5}}
ACTIVATION = {"token": TOKEN, "params": PARAMS}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return engine_named(request.param)


def evaluate(engine: Engine, source: str, activation: Mapping[str, Any] = ACTIVATION) -> Any:
    return engine.compile(source, tuple(activation)).evaluate(activation)


def deeply_nested(levels: int) -> Any:
    value: Any = "bottom"
    for level in range(levels):
        value = {"x": value} if level % 2 else [value]
    return value


# --- Engine selection --------------------------------------------------------------------------


def test_engine_named_gives_each_engine_once() -> None:
    assert isinstance(engine_named("cel-expr-python"), CppEngine)
    assert isinstance(engine_named("cel-python"), PythonEngine)
    assert engine_named("cel-python") is engine_named("cel-python")


def test_engine_named_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown CEL engine 'cel-go'"):
        engine_named("cel-go")


def test_default_engine_is_cel_expr_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_VARIABLE, raising=False)
    assert default_engine().name == "cel-expr-python"


@pytest.mark.parametrize("name", ["cel-python", "cel-expr-python"])
def test_environment_variable_picks_the_engine(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(ENGINE_VARIABLE, name)
    assert default_engine().name == name
    assert compile_expression("token.sub", MAPPING_VARIABLES).evaluate(ACTIVATION) == "alice"


def test_environment_variable_with_an_unknown_engine_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENGINE_VARIABLE, "fast")
    with pytest.raises(ValueError, match="expected one of cel-expr-python, cel-python"):
        compile_expression("true", ())


def test_cel_python_is_the_fallback_when_cel_expr_python_cannot_be_imported() -> None:
    # A fresh interpreter where the wheel's import fails, as on a platform without a build of it.
    script = (
        "import sys; sys.modules['cel_expr_python'] = None\n"
        "from callwarden.policy.cel import compile_expression, default_engine\n"
        "print(default_engine().name, compile_expression('token.?sub', ['token']).evaluate({'token': {}}))\n"
    )
    env_free = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env_free, cwd="."
    )
    assert result.stdout.split() == ["cel-python", "ABSENT"]


# --- Values and optionals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("token.?client_id", "agent-7", id="optional-present"),
        pytest.param("token.?nope", ABSENT, id="optional-absent"),
        pytest.param("token.?tenant", None, id="optional-null-is-present"),
        pytest.param("token.?act.?sub", "agent-7", id="optional-chain"),
        pytest.param("token.?nope.?sub", ABSENT, id="optional-chain-absent"),
        pytest.param("token.?act.nope", ABSENT, id="select-after-optional-stays-optional"),
        pytest.param('params.arguments[?"customer-id"]', "c-1", id="optional-index"),
        pytest.param('params.arguments[?"nope"]', ABSENT, id="optional-index-absent"),
        pytest.param("token.roles[?1]", "b", id="optional-list-index"),
        pytest.param("token.roles[?2]", ABSENT, id="optional-list-index-absent"),
        pytest.param('token.?nope.orValue("d")', "d", id="or-value"),
        pytest.param("token.?nope.hasValue()", False, id="has-value"),
        pytest.param("token.?client_id.value()", "agent-7", id="value"),
        pytest.param("params.arguments", PARAMS["arguments"], id="whole-map"),
        pytest.param('{"a": [1, 2.5, true, null, "s"]}', {"a": [1, 2.5, True, None, "s"]}, id="json-shapes"),
        pytest.param("18446744073709551615u", 2**64 - 1, id="uint-as-int"),
    ],
)
def test_results_are_plain_json_values_or_absent(engine: Engine, source: str, expected: Any) -> None:
    result = evaluate(engine, source)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param('b"bytes"', id="bytes"),
        pytest.param('duration("1s")', id="duration"),
        pytest.param('timestamp("2026-01-01T00:00:00Z")', id="timestamp"),
        pytest.param("type(1)", id="type"),
        pytest.param('{1: "int key"}', id="non-string-key"),
        pytest.param('{"k": b"x"}', id="nested-bytes"),
    ],
)
def test_non_json_results_are_evaluation_errors(engine: Engine, source: str) -> None:
    with pytest.raises(CelEvaluationError, match="the result"):
        evaluate(engine, source)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param('{"a": token.?nope}', id="map-of-optional"),  # plain_value() segfaults on this
        pytest.param('{"a": dyn(token.?sub)}', id="map-of-dyn-optional"),
        pytest.param("[token.?sub]", id="list-of-optional"),
        pytest.param("[[token.?sub]]", id="nested-list-of-optional"),
    ],
)
def test_optionals_nested_in_results_are_evaluation_errors_on_cel_expr_python(source: str) -> None:
    with pytest.raises(CelEvaluationError, match="optional"):
        evaluate(engine_named("cel-expr-python"), source)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("optional.of(1)", id="optional-of"),
        pytest.param("optional.none()", id="optional-none"),
        pytest.param("[?token.?sub]", id="optional-list-element"),
        pytest.param('{?"a": token.?sub}', id="optional-map-entry"),
        pytest.param('token.?sub + "x"', id="chain-inside-expression"),
        pytest.param("{'a': 1}.?a", id="chain-on-a-literal"),
    ],
)
def test_cel_python_rejects_optional_syntax_it_cannot_rewrite(source: str) -> None:
    with pytest.raises(CelCompileError, match="no optional types"):
        engine_named("cel-python").compile(source, MAPPING_VARIABLES)


# --- Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("token.", "yntax error", id="syntax"),
        pytest.param("nope.sub", "undeclared reference to 'nope", id="undeclared-variable"),
        pytest.param("frobnicate(token)", "undeclared reference to 'frobnicate'", id="undeclared-function"),
        pytest.param(
            "token.sub.frobnicate()", "undeclared reference to 'frobnicate'", id="undeclared-method"
        ),
        pytest.param("token.roles.all(r, q == r)", "undeclared reference to 'q'", id="macro-scope"),
    ],
)
def test_compile_errors_are_one_readable_line(engine: Engine, source: str, message: str) -> None:
    with pytest.raises(CelCompileError) as raised:
        engine.compile(source, MAPPING_VARIABLES)
    assert message in raised.value.message
    assert "\n" not in raised.value.message
    assert "INVALID_ARGUMENT" not in raised.value.message
    assert raised.value.source == source


def test_cel_expr_python_compile_errors_name_the_column() -> None:
    with pytest.raises(CelCompileError) as raised:
        engine_named("cel-expr-python").compile("token.sub + nope", MAPPING_VARIABLES)
    assert raised.value.message == "undeclared reference to 'nope' (in container '') (column 13)"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("token.nope", "nope", id="missing-key"),
        pytest.param("params.arguments.n / 0", "divide by zero", id="division-by-zero"),
        pytest.param("token.sub + params.arguments.n", "overload", id="type-error"),
        pytest.param("9223372036854775807 + params.arguments.n", "overflow", id="overflow"),
        pytest.param('token.sub.matches("(")', "", id="bad-regex"),
    ],
)
def test_evaluation_errors_are_one_readable_line(engine: Engine, source: str, message: str) -> None:
    with pytest.raises(CelEvaluationError) as raised:
        evaluate(engine, source)
    assert message in raised.value.message
    assert "\n" not in raised.value.message
    assert not raised.value.message.startswith(("NOT_FOUND", "INVALID_ARGUMENT", "INTERNAL"))


def test_a_missing_variable_is_an_evaluation_error(engine: Engine) -> None:
    program = engine.compile("token.sub", MAPPING_VARIABLES)
    with pytest.raises(CelEvaluationError):
        program.evaluate({"params": {}})


# --- Cost bounds ------------------------------------------------------------------------------------


def _nested_maps(depth: int) -> str:
    source = "params.l"
    for level in range(depth):
        source = f"params.l.map(v{level}, {source}.size())"
    return source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("'" + "a" * MAX_EXPRESSION_LENGTH + "'", "characters long", id="too-long"),
        pytest.param(
            "(" * (MAX_NESTING_DEPTH + 1) + "1" + ")" * (MAX_NESTING_DEPTH + 1), "levels deep", id="deep"
        ),
        pytest.param(
            " + ".join(["params.l.map(x, x).size()"] * (MAX_COMPREHENSIONS + 1)),
            "comprehension macros",
            id="many-comprehensions",
        ),
        pytest.param(
            _nested_maps(MAX_COMPREHENSION_NESTING + 1), "nests comprehension", id="nested-comprehensions"
        ),
    ],
)
def test_expressions_over_the_cost_bound_do_not_compile(engine: Engine, source: str, message: str) -> None:
    with pytest.raises(CelCompileError, match=message):
        engine.compile(source, MAPPING_VARIABLES)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("'((((((((((((((((((((((((((((((((((((((('", id="brackets-in-single-quotes"),
        pytest.param(
            '"))))" + "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["', id="brackets-in-double-quotes"
        ),
        pytest.param("'''.map(x, .map(y, .map(z, ''' + 'a'", id="macros-in-triple-quotes"),
        pytest.param("// .map(x, .map(y, .map(z,\ntrue", id="macros-in-comment"),
    ],
)
def test_cost_bound_ignores_brackets_in_strings_and_comments(source: str) -> None:
    check_cost_bound(source)


def test_a_4000_character_expression_of_macros_is_refused_or_bounded(engine: Engine) -> None:
    """The worst an expression can do within the static bounds, over the longest list allowed."""
    unit = "params.l.map(x, params.l.filter(y, y < x).size()).size() + "
    source = unit * MAX_COMPREHENSIONS
    with pytest.raises(CelCompileError):  # 32 comprehensions, 3,000+ characters
        engine.compile(source[:-3], MAPPING_VARIABLES)
    within = (unit * (MAX_COMPREHENSIONS // 2))[:-3]
    program = engine.compile(within, MAPPING_VARIABLES)
    started = time.perf_counter()
    with pytest.raises(CelEvaluationError, match="Iteration budget exceeded"):
        program.evaluate({"token": {}, "params": {"l": list(range(MAX_MAPPED_LIST_LENGTH))}})
    assert time.perf_counter() - started < 5


def test_the_iteration_budget_stops_a_quadratic_comprehension(engine: Engine) -> None:
    program = engine.compile("params.l.all(x, !params.l.exists(y, y == -1))", MAPPING_VARIABLES)
    started = time.perf_counter()
    with pytest.raises(CelEvaluationError, match="Iteration budget exceeded"):
        program.evaluate({"token": {}, "params": {"l": list(range(200))}})
    assert time.perf_counter() - started < 5


def test_map_over_a_list_longer_than_the_bound_is_refused_before_evaluation(engine: Engine) -> None:
    program = engine.compile("params.l.map(x, x).size()", MAPPING_VARIABLES)
    assert (
        program.evaluate({"token": {}, "params": {"l": [0] * MAX_MAPPED_LIST_LENGTH}})
        == MAX_MAPPED_LIST_LENGTH
    )
    started = time.perf_counter()
    with pytest.raises(CelEvaluationError, match=f"at most {MAX_MAPPED_LIST_LENGTH}"):
        program.evaluate({"token": {}, "params": {"l": [0] * 9_000}})  # 2.6 s in cel-cpp, unbounded
    assert time.perf_counter() - started < 1


def test_long_lists_are_fine_for_expressions_without_map_or_filter(engine: Engine) -> None:
    program = engine.compile("params.l.exists(x, x == 4999)", MAPPING_VARIABLES)
    assert program.evaluate({"token": {}, "params": {"l": list(range(5_000))}}) is True


# --- Hostile activations ---------------------------------------------------------------------------

_HOSTILE_VALUES = [
    pytest.param(deeply_nested(300), id="nested-300"),
    pytest.param(deeply_nested(100_000), id="nested-100000"),  # segfaults cel-cpp if it got there
    pytest.param({1, 2}, id="set"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(object(), id="object"),
    pytest.param(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), id="datetime"),
    pytest.param("\udcff", id="lone-surrogate"),
    pytest.param(collections.OrderedDict(a=1), id="dict-subclass"),
    pytest.param({1: "int key"}, id="non-string-key"),
    pytest.param(2**70, id="int-over-64-bits"),
    pytest.param(-(2**63) - 1, id="int-under-int64"),
]


@pytest.mark.parametrize("value", _HOSTILE_VALUES)
def test_non_json_or_too_deep_data_is_an_evaluation_error(engine: Engine, value: Any) -> None:
    program = engine.compile("has(params.hostile) && token.sub == 'alice'", MAPPING_VARIABLES)
    with pytest.raises(CelEvaluationError, match="not plain JSON data"):
        program.evaluate({"token": TOKEN, "params": {"hostile": value}})


@pytest.mark.parametrize(
    ("value", "read_as"),
    [
        pytest.param(("a", "b"), None, id="tuple"),
        pytest.param(enum.IntEnum("Level", "LOW HIGH").HIGH, 2, id="int-enum"),
    ],
)
def test_values_json_encoders_accept_never_crash(engine: Engine, value: Any, read_as: Any) -> None:
    """orjson encodes these, so they reach the engine: read as JSON would, or an evaluation error."""
    program = engine.compile("params.odd", ("params",))
    try:
        result = program.evaluate({"params": {"odd": value}})
    except CelEvaluationError:
        assert read_as is None
    else:
        assert result == read_as
        assert type(result) is int


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"account": "public\u0000../secret"}, id="in-a-value"),
        pytest.param({"account": "public", "public\u0000x": 1}, id="in-a-key"),
        pytest.param({"account": "public", "list": [["x\u0000"]]}, id="nested"),
    ],
)
def test_nul_characters_in_the_input_are_refused(engine: Engine, params: dict[str, Any]) -> None:
    # cel-expr-python would compare "public\0../secret" equal to "public".
    program = engine.compile('params.account == "public"', ("params",))
    with pytest.raises(CelEvaluationError, match="NUL"):
        program.evaluate({"params": params})


def test_a_non_mapping_activation_is_an_evaluation_error(engine: Engine) -> None:
    program = engine.compile("token.sub", MAPPING_VARIABLES)
    with pytest.raises(CelEvaluationError):
        program.evaluate([("token", TOKEN)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param(2**63, id="uint64"),
        pytest.param("\u202e\ufeff\U0001f600\u200b", id="unicode-tricks"),
        pytest.param("\\u0000", id="escaped-nul-text"),
        pytest.param("", id="empty-string"),
    ],
)
def test_odd_but_plain_values_pass_through(engine: Engine, value: Any) -> None:
    result = evaluate(engine, "params.odd", {"params": {"odd": value}})
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(result)
    else:
        assert result == value


def test_large_data_is_evaluated_in_bounded_time(engine: Engine) -> None:
    activation = {
        "token": {f"claim{i}": i for i in range(20_000)},
        "params": {"l": list(range(50_000)), "arguments": {"x": "y"}},
    }
    program = engine.compile('has(token.claim19999) && params.arguments.x == "y"', MAPPING_VARIABLES)
    started = time.perf_counter()
    assert program.evaluate(activation) is True
    assert time.perf_counter() - started < 3


# --- Threads ----------------------------------------------------------------------------------------


def test_programs_are_safe_to_share_between_threads(engine: Engine) -> None:
    programs = {
        "token.sub + '/' + string(params.arguments.id)": lambda i: f"user{i}/{i}",
        "params.arguments.items.filter(x, x % 2 == 0).size()": lambda i: (i % 7) // 2,
        "token.?nope.orValue(token.sub)": lambda i: f"user{i}",
        "params.arguments[?'missing']": lambda i: ABSENT,
    }
    compiled = [(engine.compile(source, MAPPING_VARIABLES), expect) for source, expect in programs.items()]
    failures: list[str] = []
    rounds = 400 if engine.name == "cel-expr-python" else 40

    def worker(offset: int) -> None:
        for step in range(rounds):
            i = offset * rounds + step
            activation = {
                "token": {"sub": f"user{i}"},
                "params": {"arguments": {"id": i, "items": list(range(1, i % 7 + 1))}},
            }
            for program, expect in compiled:
                try:
                    got = program.evaluate(activation)
                except CelEvaluationError as error:
                    got = error
                if got != expect(i):
                    failures.append(f"{program.source}: {got!r} != {expect(i)!r}")

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- Properties -------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)
_PROPERTY_SOURCES = [
    "has(params.a)",
    "params.?a",
    'params.?a.orValue("none")',
    'params[?"b-c"]',
    "size(params)",
    "params.a",
    "params.a.b",
    '"a" in params && params.a == params.a',
    "params.map(k, k).size()",  # not the keys themselves: CEL leaves map order unspecified
]


@settings(max_examples=60, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["a", "b-c", "z"]), _json, max_size=3))
def test_engines_agree_on_arbitrary_json_data(data: dict[str, Any]) -> None:
    activation = {"params": data}
    for source in _PROPERTY_SOURCES:
        outcomes = []
        for name in ("cel-expr-python", "cel-python"):
            try:
                outcomes.append(("value", evaluate(engine_named(name), source, activation)))
            except CelEvaluationError:
                outcomes.append(("error", None))
        assert outcomes[0] == outcomes[1], source
