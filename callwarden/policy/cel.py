"""The CEL seam: compile once at configuration load, evaluate many times on the hot path.

Everything else in callwarden talks to CEL only through `compile_expression`, `prepare` and
`Program`, so the engine behind it can change without touching the mapping or the PDP.

`Program.evaluate(variables)` checks and converts its input at every call. Code that evaluates
several programs on the same input (the PDP: every rule of a request; a mapping: every
expression of a call) calls `prepare(variables)` once and `Program.evaluate_prepared` for each
program: the input is checked once, and cel-expr-python reads it without converting it whole.

Two engines sit behind the same `Program` protocol (DESIGN.md §6):

- `CppEngine`, `cel-expr-python` (Google's cel-cpp runtime, ~6 µs per evaluation): the default.
- `PythonEngine`, `cel-python` (`celpy`, pure Python, ~100 µs): the fallback when the cel-cpp
  wheel cannot be imported, and the differential oracle of the tests.

`CALLWARDEN_CEL_ENGINE=cel-expr-python|cel-python` picks one explicitly; `engine_named` gives
either to code (tests) that wants both.

Values cross the seam as plain JSON-shaped Python values (dict, list, str, int, float,
bool, None), in both directions: an activation holding anything else, and a result that is not
JSON (bytes, timestamps, CEL types...), is a `CelEvaluationError`. An expression whose result
is a CEL optional (`token.?client_id`) yields the unwrapped value, or `ABSENT` when the
optional is empty: the COAZ binding uses absence to omit a field (standards.md §2.7).

Known engine differences (the differential tests hold the full table):
- cel-python 0.5 has no optional types. `PythonEngine` rewrites the forms mappings use, an
  optional selection chain (`token.?act.?sub`, `params.arguments[?"k"]`) that is the whole
  expression or ends in `.orValue(x)` / `.hasValue()` / `.value()`, into `has()` tests; any other
  optional syntax (`optional.of`, `[?x]` list elements, `{?k: v}`) is a `CelCompileError` there.
- cel-python has no heterogeneous numeric equality: `3.0 == 3` is an error, not true.
- cel-cpp type-checks at compile time; cel-python only parses (plus the undeclared-name check
  here), so a static type error (`1 + "a"`) is a compile error on one, an evaluation error on
  the other.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeAlias

import lark
import orjson
from celpy import celparser, celtypes, evaluation

# --- Cost bounds -------------------------------------------------------------------------------
# A hostile or careless policy must not be able to stall the PEP (cel-cpp holds the GIL while it
# evaluates, so a slow expression stalls every worker thread). Static bounds, checked before a
# parser sees the text: length, bracket nesting (bounds the parsers' recursion and the
# evaluators'), and comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`), both
# how many and how deeply nested, since nested comprehensions multiply their lists' lengths.
MAX_EXPRESSION_LENGTH: Final = 4096
MAX_NESTING_DEPTH: Final = 32
MAX_COMPREHENSIONS: Final = 16
MAX_COMPREHENSION_NESTING: Final = 2
# Run-time bounds. cel-cpp stops an evaluation after 10,000 comprehension iterations (its built-in
# budget, not configurable through cel-expr-python); PythonEngine enforces the same budget.
MAX_ITERATIONS: Final = 10_000
# cel-cpp builds `map`/`filter` results by copying the list at every step: quadratic, measured
# 21 ms for 1,000 elements and 2.6 s for 9,000. A program that uses those macros refuses an
# activation holding a longer list (an 18 KB JSON body is enough to carry 9,000 elements).
MAX_MAPPED_LIST_LENGTH: Final = 1_000
# Data nesting: orjson refuses more than 254 levels, and that check runs before cel-cpp, whose
# recursive conversion overflows the C stack (segfault) at ~10,000 levels on an 8 MiB stack.

ENGINE_VARIABLE: Final = "CALLWARDEN_CEL_ENGINE"

_COMPREHENSION_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_LIST_BUILDING_MACROS: Final = frozenset({"map", "filter"})


class _Absent:
    """The result of an empty CEL optional: the field it would fill is omitted."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent()


class CelError(Exception):
    """Base of every CEL failure; `source` is the expression text at fault."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source = source
        self.message = message


class CelCompileError(CelError):
    """The expression does not parse, does not check, or exceeds the cost bound."""


class CelEvaluationError(CelError):
    """The expression failed at run time (missing key, type error, division by zero...)."""


class Program(Protocol):
    """A compiled expression. `evaluate` is safe to call from many threads at once."""

    source: str

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        """Evaluate with the given variables; returns a JSON-shaped value or ABSENT."""
        ...

    def evaluate_prepared(self, activation: Activation) -> Any:
        """`evaluate` on variables already checked by `prepare`."""
        ...


class Engine(Protocol):
    """A CEL implementation. Every variable is a map of dyn values."""

    @property
    def name(self) -> str: ...

    def compile(self, source: str, variables: Sequence[str]) -> Program:
        """Compile `source` over the named variables; raises CelCompileError."""
        ...


# --- Lexing (cost bound, optional rewriting) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "string", "number", "ident", "punct", "other"
    text: str


_TOKEN_PATTERN: Final = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
    |(?P<string>
        (?:[bB]?[rR]|[rR][bB])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")
        |[bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"|'(?:\\.|[^\\'\n])*'|"(?:\\.|[^\\"\n])*"))
    |(?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)[uU]?)
    |(?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
    |(?P<punct>==|!=|<=|>=|&&|\|\||[-+*/%!<>?:.,()\[\]{}])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(source: str) -> list[_Token]:
    """CEL tokens without whitespace and comments; enough to find brackets, macros and `?`."""
    found: list[_Token] = []
    for match in _TOKEN_PATTERN.finditer(source):
        kind = match.lastgroup
        if kind is not None and kind != "space":
            found.append(_Token(kind, match.group()))
    return found


def _is_macro_call(tokens: Sequence[_Token], index: int, names: frozenset[str]) -> bool:
    """`tokens[index]` is the `(` of `.name(` for one of `names`."""
    return (
        index >= 2
        and tokens[index - 1].kind == "ident"
        and tokens[index - 1].text in names
        and tokens[index - 2].text == "."
    )


def check_cost_bound(source: str) -> None:
    """Reject expressions too long, too deeply nested, or with too many comprehensions."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise CelCompileError(
            source[:80] + "...",
            f"expression is {len(source)} characters long; the limit is {MAX_EXPRESSION_LENGTH}",
        )
    tokens = _tokens(source)
    open_brackets: list[bool] = []  # one entry per open bracket: does it open a comprehension?
    deepest = comprehensions = comprehension_nesting = 0
    for index, token in enumerate(tokens):
        if token.kind != "punct":
            continue
        if token.text in "([{":
            is_comprehension = token.text == "(" and _is_macro_call(tokens, index, _COMPREHENSION_MACROS)
            open_brackets.append(is_comprehension)
            deepest = max(deepest, len(open_brackets))
            if is_comprehension:
                comprehensions += 1
                comprehension_nesting = max(comprehension_nesting, sum(open_brackets))
        elif token.text in ")]}" and open_brackets:
            open_brackets.pop()
    if deepest > MAX_NESTING_DEPTH:
        raise CelCompileError(
            source, f"expression nests {deepest} levels deep; the limit is {MAX_NESTING_DEPTH}"
        )
    if comprehensions > MAX_COMPREHENSIONS:
        raise CelCompileError(
            source,
            f"expression has {comprehensions} comprehension macros; the limit is {MAX_COMPREHENSIONS}",
        )
    if comprehension_nesting > MAX_COMPREHENSION_NESTING:
        raise CelCompileError(
            source,
            f"expression nests comprehension macros {comprehension_nesting} deep; "
            f"the limit is {MAX_COMPREHENSION_NESTING}",
        )


def _builds_lists(source: str) -> bool:
    tokens = _tokens(source)
    return any(
        token.text == "(" and _is_macro_call(tokens, index, _LIST_BUILDING_MACROS)
        for index, token in enumerate(tokens)
    )


# --- Data crossing the seam ---------------------------------------------------------------------

# JSON types only: datetimes, dataclasses and subclasses of str/int/dict/list (OrderedDict...) are
# refused, and so are lone surrogates, non-string keys, ints beyond 64 bits and nesting beyond 254.
# orjson does encode tuples and enum members: cel-cpp reads an int enum as an int and fails on a
# tuple when it reads it, as `_to_celpy` does. A Python walk checking exact types costs 2.8 µs on a
# typical activation, orjson 0.3 µs.
_STRICT_JSON: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class Activation:
    """Variables checked once by `prepare`, for any number of evaluations by programs of any engine.

    Build one per request and use it from that request's thread: each engine caches its own
    form of the variables here. The variables must not change once prepared: cel-expr-python
    reads them lazily, during each evaluation.
    """

    __slots__ = (
        "_celpy",
        "_convert_first",
        "_cpp",
        "_cpp_environment",
        "_longest_list",
        "problem",
        "variables",
    )

    def __init__(self, variables: dict[str, Any], problem: str | None = None, *, shared: bool = True) -> None:
        self.variables = variables
        # Why these variables cannot be evaluated on (not JSON, a NUL...): every evaluation fails with it.
        self.problem = problem
        self._longest_list = -1  # computed when a program using map/filter first needs it
        # cel-expr-python: a native Activation wraps the variables and converts what programs read,
        # once for all of them (built by the Env in `_cpp_environment`); for a single program,
        # converting the variables whole as it evaluates (`eval(data=...)`) is 1.5 µs cheaper.
        self._convert_first = not shared
        self._cpp: Any = None
        self._cpp_environment: Any = None
        self._celpy: dict[str, Any] | None = None  # the variables as celpy values

    def longest_list(self) -> int:
        if self._longest_list < 0:
            self._longest_list = _longest_list(self.variables)
        return self._longest_list


def prepare(variables: Mapping[str, Any], *, shared: bool = True) -> Activation:
    """Check `variables` once for many evaluations. Never raises: variables that are not plain JSON
    data an engine can take safely make every evaluation on them a CelEvaluationError.

    `shared=False` when most likely a single program will evaluate on it: the first evaluation
    then converts what it needs itself, and only a second one builds a form to share.
    """
    if not isinstance(variables, Mapping):
        return Activation({}, f"the input is a {type(variables).__name__}, not a mapping")
    try:
        data = variables if type(variables) is dict else dict(variables)
        encoded = orjson.dumps(data, option=_STRICT_JSON)
    except (TypeError, ValueError) as error:  # orjson.JSONEncodeError is a TypeError
        reason = "nested too deeply" if "Recursion" in str(error) else str(error)
        return Activation({}, f"the input is not plain JSON data: {reason}")
    # cel-expr-python cuts input strings at the first NUL: "public\0../secret" == "public" is
    # true there, a policy bypass. Both engines refuse such input, so they agree. (The encoded
    # form escapes NUL as \u0000; a hit may be a literal backslash-u0000, so confirm by walking.)
    if b"\\u0000" in encoded and _holds_nul(data):
        return Activation({}, "the input holds a NUL character (U+0000)")
    return Activation(data, shared=shared)


def _check_prepared(source: str, activation: Activation, bound_lists: bool) -> None:
    """Raise the CelEvaluationError an evaluation on `activation` must fail with, if any."""
    if activation.problem is not None:
        raise CelEvaluationError(source, activation.problem)
    if bound_lists:
        longest = activation.longest_list()
        if longest > MAX_MAPPED_LIST_LENGTH:
            raise CelEvaluationError(
                source,
                f"the input holds a list of {longest} elements; expressions using map/filter "
                f"accept at most {MAX_MAPPED_LIST_LENGTH}",
            )


def _holds_nul(data: Any) -> bool:
    pending = [data]
    while pending:
        value = pending.pop()
        if type(value) is dict:
            if any("\0" in key for key in value):
                return True
            pending.extend(value.values())
        elif type(value) is list:
            pending.extend(value)
        elif type(value) is str and "\0" in value:
            return True
    return False


def _longest_list(data: Any) -> int:
    longest = 0
    pending = [data]
    while pending:
        value = pending.pop()
        if type(value) is dict:
            pending.extend(value.values())
        elif type(value) is list:
            longest = max(longest, len(value))
            pending.extend(value)
    return longest


_STATUS_PREFIX: Final = re.compile(r"^[A-Z]+(?:_[A-Z]+)*: ")
_STATUS_SUFFIX: Final = re.compile(r" \[[A-Z]+(?:_[A-Z]+)*\]$")
_POSITION_PREFIX: Final = re.compile(r"^ERROR: <input>:(\d+):(\d+): ")


def _first_line(message: str) -> str:
    """cel-cpp prefixes a status code and a position, and appends a caret diagram and the status
    again (`INVALID_ARGUMENT: ERROR: <input>:1:5: undeclared reference to 'x'...`); keep the
    message readable: `undeclared reference to 'x'... (column 5)`."""
    lines = message.strip().splitlines()
    first = _STATUS_SUFFIX.sub("", _STATUS_PREFIX.sub("", lines[0] if lines else "unknown error"))
    position = _POSITION_PREFIX.match(first)
    if position is None:
        return first
    line, column = position.groups()
    where = f"column {column}" if line == "1" else f"line {line}, column {column}"
    return f"{first[position.end() :]} ({where})"


def _unwrap(wrapped: Any) -> Any:
    """Programs returning an optional are rewritten to return a list of zero or one element."""
    return wrapped[0] if wrapped else ABSENT


# --- cel-expr-python (cel-cpp) -------------------------------------------------------------------

# A dyn result may hold an optional at run time (`params.arguments[?"k"]` checks as dyn). Optional
# results, and dyn results of sources using optional syntax, go through one of these wrappers, which
# turn the optional into a list of zero or one element; `[source].map(...)` evaluates the source
# once, in its own scope.
_CPP_OPTIONAL_WRAPPER: Final = "[{source}].map(value, value.hasValue() ? [value.value()] : [])[0]"
_CPP_DYN_WRAPPER: Final = (
    "[{source}].map(value, type(value) == type(optional.none())"
    " ? (value.hasValue() ? [value.value()] : []) : [value])[0]"
)
_CPP_SCALARS: Final = frozenset({"BOOL", "INT", "UINT", "DOUBLE", "STRING", "NULL"})


def _cpp_json(source: str, value: Any) -> Any:
    """A cel-cpp value as plain JSON-shaped Python.

    Not `Value.plain_value()`: it crashes the process (segfault) on a map holding an optional
    (`{"a": token.?x}`), and fails on lists of them; the binding reports an optional's type as ERROR.
    """
    type_name = value.type().name()
    if type_name in _CPP_SCALARS:
        return value.value()
    if type_name.startswith("LIST"):
        return [_cpp_json(source, item) for item in value.value()]
    if type_name.startswith("MAP"):
        result: dict[str, Any] = {}
        for key, item in value.value().items():
            if type(key) is not str:
                raise CelEvaluationError(source, f"the result is a map with a non-string key {key!r}")
            result[key] = _cpp_json(source, item)
        return result
    if type_name == "ERROR":  # nested in a list or map, only an optional can be an ERROR here
        raise CelEvaluationError(source, f"the result holds a CEL optional ({str(value)[:60]})")
    raise CelEvaluationError(source, f"the result is not JSON data (a {type_name.lower()})")


_Condition: TypeAlias = Callable[[Mapping[str, Any]], "bool | None"]
_UNSURE: Final = object()  # a step the Python condition leaves to cel-cpp
_TRIPLE_QUOTES: Final = ("'''", '"""')


def _select(variables: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """`a.b.c` over plain JSON maps; _UNSURE where CEL would fail (missing key, not a map)."""
    node = variables.get(path[0], _UNSURE)
    for key in path[1:]:
        if type(node) is not dict:
            return _UNSURE
        node = node.get(key, _UNSURE)
    return node


def _equals(path: tuple[str, ...], literal: str, negated: bool) -> _Condition:
    def test(variables: Mapping[str, Any]) -> bool | None:
        value = _select(variables, path)
        return None if type(value) is not str else (value == literal) is not negated

    return test


def _contains(path: tuple[str, ...], literal: str) -> _Condition:
    def test(variables: Mapping[str, Any]) -> bool | None:
        value = _select(variables, path)
        if type(value) is dict:  # CEL's `in` tests a map's keys
            return literal in value
        if type(value) is list and all(type(item) is str for item in value):
            return literal in value
        return None

    return test


def _all_of(tests: Sequence[_Condition]) -> _Condition:
    def test(variables: Mapping[str, Any]) -> bool | None:
        sure = True
        for one in tests:
            result = one(variables)
            if result is False:  # CEL's && is false when either side is, even if the other fails
                return False
            sure = sure and result is not None
        return True if sure else None

    return test


def _string_literal(token: _Token) -> str | None:
    """The value of a plain quoted string without escapes; None for any other token."""
    text = token.text
    if token.kind != "string" or text[0] not in "'\"" or "\\" in text or text[:3] in _TRIPLE_QUOTES:
        return None
    return text[1:-1]


def _python_condition(tokens: Sequence[_Token], variables: frozenset[str]) -> _Condition | None:
    """A Python equivalent of the commonest rule conditions: string comparisons and membership
    tests on selection paths, joined by `&&` (`"analyst" in subject.properties.roles &&
    resource.id == "x"`). cel-cpp costs 2-4 µs per evaluation, mostly crossing into C++; these run
    in well under one. Wherever CEL might fail or compare across types (a missing key, a value
    that is not a string, a list holding other values), the condition answers None and cel-cpp
    evaluates the whole expression, so errors and unusual values always come from cel-cpp; the
    tests check the two agree. None when the source has any other shape."""

    def path(start: int) -> tuple[tuple[str, ...], int] | None:
        if start >= len(tokens) or tokens[start].kind != "ident" or tokens[start].text not in variables:
            return None
        names = [tokens[start].text]
        index = start + 1
        while index + 1 < len(tokens) and tokens[index].text == "." and tokens[index + 1].kind == "ident":
            names.append(tokens[index + 1].text)
            index += 2
        return (tuple(names), index) if len(names) > 1 else None

    tests: list[_Condition] = []
    index = 0
    while True:
        if index < len(tokens) and tokens[index].kind == "string":  # "lit" in a.b
            value = _string_literal(tokens[index])
            is_in = index + 1 < len(tokens) and tokens[index + 1].text == "in"
            selected = path(index + 2) if is_in else None
            if value is None or selected is None:
                return None
            tests.append(_contains(selected[0], value))
            index = selected[1]
        else:  # a.b == "lit", a.b != "lit"
            selected = path(index)
            if selected is None or selected[1] + 1 >= len(tokens):
                return None
            operator, value = tokens[selected[1]].text, _string_literal(tokens[selected[1] + 1])
            if operator not in ("==", "!=") or value is None:
                return None
            tests.append(_equals(selected[0], value, operator == "!="))
            index = selected[1] + 2
        if index == len(tokens):
            return tests[0] if len(tests) == 1 else _all_of(tests)
        if tokens[index].text != "&&":
            return None
        index += 1


class _CppProgram:
    """A program compiled by cel-expr-python (cel-cpp). cel-cpp programs are immutable: thread-safe."""

    __slots__ = (
        "_bound_lists",
        "_condition",
        "_environment",
        "_expression",
        "_returns_bool",
        "_unwraps",
        "source",
    )

    def __init__(
        self,
        source: str,
        expression: Any,
        environment: Any,
        *,
        returns_bool: bool,
        unwraps: bool,
        bound_lists: bool,
        condition: _Condition | None = None,
    ) -> None:
        self.source = source
        self._expression = expression
        self._condition = condition  # the same condition in Python, for the inputs it is sure about
        self._environment = environment
        self._returns_bool = returns_bool  # checked as bool: the result is a BOOL or an ERROR
        self._unwraps = unwraps
        self._bound_lists = bound_lists

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        return self.evaluate_prepared(prepare(activation, shared=False))

    def evaluate_prepared(self, activation: Activation) -> Any:
        if activation.problem is not None or self._bound_lists:
            _check_prepared(self.source, activation, self._bound_lists)
        if self._condition is not None:
            answer = self._condition(activation.variables)
            if answer is not None:
                return answer
        try:
            if activation._cpp_environment is self._environment:
                value = self._expression.eval(activation._cpp)
            elif activation._convert_first:
                activation._convert_first = False  # a second program shares a native Activation
                value = self._expression.eval(data=activation.variables)
            else:  # built by the Env that declared the variables, once per Env and request
                native = activation._cpp = self._environment.Activation(activation.variables)
                activation._cpp_environment = self._environment
                value = self._expression.eval(native)
            # Each call into the binding costs ~0.4 µs. A rule's condition checks as bool: only a
            # BOOL converts to a Python bool (an ERROR converts to its message), so one call will do.
            if self._returns_bool and type(plain := value.value()) is bool:
                return plain
            type_name = value.type().name()
            if type_name == "ERROR":  # errors come back as ERROR-typed values
                raise CelEvaluationError(self.source, _first_line(str(value)))
            result = value.value() if type_name in _CPP_SCALARS else _cpp_json(self.source, value)
        except CelError:
            raise
        except Exception as error:  # RuntimeError for the iteration budget, conversion errors...
            raise CelEvaluationError(self.source, _first_line(str(error))) from error
        return _unwrap(result) if self._unwraps else result


class CppEngine:
    """cel-expr-python: Google's cel-cpp runtime. Every variable is a map of dyn values."""

    name: ClassVar[str] = "cel-expr-python"

    def __init__(self, *, python_conditions: bool = True) -> None:
        # False: cel-cpp evaluates every program, even those `_python_condition` understands
        # (the reference the tests compare those with).
        self._python_conditions = python_conditions
        # Imported here so that a missing or broken wheel only disables this engine.
        self._cel = importlib.import_module("cel_expr_python.cel")
        self._optional_extension = importlib.import_module("cel_expr_python.ext.ext_optional").ExtOptional()
        self._environments: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _environment(self, variables: tuple[str, ...]) -> Any:
        with self._lock:
            environment = self._environments.get(variables)
            if environment is None:
                cel = self._cel
                dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
                environment = cel.NewEnv(
                    variables=dict.fromkeys(variables, dyn_map),
                    extensions=[self._optional_extension],
                )
                self._environments[variables] = environment
            return environment

    def compile(self, source: str, variables: Sequence[str]) -> Program:
        check_cost_bound(source)
        environment = self._environment(tuple(sorted(variables)))
        try:
            expression = environment.compile(source)
            result_type = expression.return_type().name()
            # Without optional syntax in the source a dyn result cannot hold an optional; the
            # wrapper would double the cost of `token.sub` (5 -> 10 µs).
            unwraps = result_type.startswith("optional_type") or (
                result_type == "DYN" and _uses_optionals(_tokens(source))
            )
            if unwraps:
                wrapper = _CPP_DYN_WRAPPER if result_type == "DYN" else _CPP_OPTIONAL_WRAPPER
                expression = environment.compile(wrapper.format(source=source))
        except RuntimeError as error:
            raise CelCompileError(source, _first_line(str(error))) from error
        condition = None
        if self._python_conditions and result_type == "BOOL":
            condition = _python_condition(_tokens(source), frozenset(variables))
        return _CppProgram(
            source,
            expression,
            environment,
            returns_bool=result_type == "BOOL",
            unwraps=unwraps,
            bound_lists=_builds_lists(source),
            condition=condition,
        )


# --- cel-python (celpy) ----------------------------------------------------------------------------

_INT64_MAX: Final = 2**63 - 1
_Ast: TypeAlias = "lark.Tree[Any]"
# Names an expression may call; everything else is an undeclared reference, as in cel-cpp.
# celpy's non-standard `reduce` and `min` macros are left out.
_CELPY_FUNCTIONS: Final = frozenset(
    name for name in evaluation.base_functions if name[0].isalpha()
) | frozenset({"has", "dyn"})
_CELPY_TYPE_NAMES: Final = frozenset(
    {"bool", "bytes", "double", "dyn", "int", "list", "map", "null_type", "string", "type", "uint"}
)
_OPTIONAL_UNSUPPORTED: Final = (
    "the cel-python engine has no optional types: only an optional selection chain "
    "(a.?b, a[?'k']) that is the whole expression or ends in .orValue(x), .hasValue() or .value() "
    "is supported"
)


class _IterationBudgetExceeded(Exception):
    """Raised through celpy's evaluator when a comprehension runs past MAX_ITERATIONS."""


class _Budget:
    __slots__ = ("remaining",)

    def __init__(self) -> None:
        self.remaining = MAX_ITERATIONS

    def charge(self) -> None:
        self.remaining -= 1
        if self.remaining < 0:
            raise _IterationBudgetExceeded


class _BudgetedEvaluator(evaluation.Evaluator):
    """celpy's tree-walking evaluator, charging one unit per comprehension step (cel-cpp's budget).

    Relies on celpy 0.5 internals (pinned `<0.6`): macros evaluate their bodies through
    `build_macro_eval` / `build_ss_macro_eval`, nested scopes through `sub_evaluator`.
    """

    def __init__(self, ast: _Ast, activation: evaluation.Activation, budget: _Budget) -> None:
        super().__init__(ast, activation)
        self._budget = budget

    def sub_evaluator(self, ast: _Ast) -> evaluation.Evaluator:
        return _BudgetedEvaluator(ast, self.activation, self._budget)

    def _charged(self, body: Callable[[celtypes.Value], Any]) -> Callable[[celtypes.Value], Any]:
        budget = self._budget

        def step(value: celtypes.Value) -> Any:
            budget.charge()
            return body(value)

        return step

    def build_macro_eval(self, child: _Ast) -> Callable[[celtypes.Value], Any]:
        return self._charged(super().build_macro_eval(child))

    def build_ss_macro_eval(self, child: _Ast) -> Callable[[celtypes.Value], Any]:
        return self._charged(super().build_ss_macro_eval(child))


def _to_celpy(value: Any) -> Any:
    """Plain JSON (already checked by `prepare`) to celpy's values."""
    if value is None:
        return None
    kind = type(value)
    if kind is bool:
        return celtypes.BoolType(value)
    if isinstance(value, int):  # int enum members too, as cel-cpp reads them
        return celtypes.UintType(value) if value > _INT64_MAX else celtypes.IntType(value)
    if kind is float:
        return celtypes.DoubleType(value)
    if kind is str:
        return celtypes.StringType(value)
    if kind is list:
        return celtypes.ListType([_to_celpy(item) for item in value])
    if kind is dict:
        return celtypes.MapType({celtypes.StringType(key): _to_celpy(item) for key, item in value.items()})
    raise TypeError(f"a {kind.__name__} is not plain JSON data")  # a tuple: orjson lets it through


def _from_celpy(source: str, value: Any) -> Any:
    """celpy's values (celtypes, or plain Python from some operators) back to plain JSON values."""
    if value is None:
        return None
    if isinstance(value, (bool, celtypes.BoolType)):  # BoolType is an int subclass: test it first
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [_from_celpy(source, item) for item in value]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CelEvaluationError(source, f"the result is a map with a non-string key {key}")
            result[str(key)] = _from_celpy(source, item)
        return result
    kind = type(value).__name__.removesuffix("Type").lower()
    raise CelEvaluationError(source, f"the result is not JSON data (a {kind})")


@dataclass(frozen=True, slots=True)
class _ChainStep:
    optional: bool
    select: str | None  # `.name`
    key: str | None  # `["literal"]` or `[0]`, the literal's source text
    numeric: bool = False


class _OptionalRewriter:
    """Rewrites optional selection chains into `has()` tests that cel-python can evaluate.

    `a.?b.c` is none when `a.b` or `a.b.c` is missing (after `.?`, selection stays optional, as in
    cel-cpp); `a[?"k"]` when the key is missing. A chain that is the whole expression becomes
    `cond ? [a.b.c] : []` (unwrapped to the value or ABSENT); `.orValue(x)` becomes
    `cond ? a.b.c : x`, `.hasValue()` becomes `cond`, `.value()` the plain selection.
    """

    def __init__(self, source: str, tokens: list[_Token]) -> None:
        self._source = source
        self._tokens = tokens

    def rewrite(self) -> tuple[str, bool]:
        """The rewritten source, and whether its result is an optional to unwrap."""
        return self._range(0, len(self._tokens), top_level=True)

    def _fail(self) -> CelCompileError:
        return CelCompileError(self._source, _OPTIONAL_UNSUPPORTED)

    def _range(self, start: int, end: int, *, top_level: bool) -> tuple[str, bool]:
        tokens = self._tokens
        out: list[str] = []
        index = start
        while index < end:
            token = tokens[index]
            starts_chain = (
                token.kind == "ident"
                and (index == 0 or tokens[index - 1].text != ".")
                and not (index + 1 < end and tokens[index + 1].text == "(")
            )
            if not starts_chain:
                out.append(token.text)
                index += 1
                continue
            steps, after = self._chain(index + 1, end)
            if not any(step.optional for step in steps):
                out.append(token.text)
                index += 1
                continue
            condition, plain = self._render(token.text, steps)
            terminal = [t.text for t in tokens[after : after + 3]]
            if terminal == [".", "orValue", "("]:
                closing = self._closing(after + 2, end)
                default, _ = self._range(after + 3, closing, top_level=False)
                out.append(f"({condition} ? {plain} : ({default}))")
                index = closing + 1
            elif terminal == [".", "hasValue", "("] and self._closing(after + 2, end) == after + 3:
                out.append(f"({condition})")
                index = after + 4
            elif terminal == [".", "value", "("] and self._closing(after + 2, end) == after + 3:
                out.append(f"({plain})")
                index = after + 4
            elif top_level and index == start and after == end:
                return f"{condition} ? [{plain}] : []", True
            else:
                raise self._fail()
        return " ".join(out), False

    def _chain(self, index: int, end: int) -> tuple[list[_ChainStep], int]:
        tokens = self._tokens
        steps: list[_ChainStep] = []

        def text(at: int) -> str:
            return tokens[at].text if at < end else ""

        def is_name(at: int) -> bool:
            return at < end and tokens[at].kind == "ident" and text(at + 1) != "("

        while index < end:
            if text(index) == "." and text(index + 1) == "?" and is_name(index + 2):
                steps.append(_ChainStep(True, tokens[index + 2].text, None))
                index += 3
            elif text(index) == "." and is_name(index + 1):
                steps.append(_ChainStep(False, tokens[index + 1].text, None))
                index += 2
            elif (
                text(index) == "["
                and text(index + 1) == "?"
                and index + 2 < end
                and tokens[index + 2].kind in ("string", "number")
                and text(index + 3) == "]"
            ):
                key = tokens[index + 2]
                steps.append(_ChainStep(True, None, key.text, key.kind == "number"))
                index += 4
            elif (
                text(index) == "["
                and index + 1 < end
                and tokens[index + 1].kind in ("string", "number")
                and text(index + 2) == "]"
            ):
                key = tokens[index + 1]
                steps.append(_ChainStep(False, None, key.text, key.kind == "number"))
                index += 3
            else:
                break
        return steps, index

    @staticmethod
    def _render(base: str, steps: list[_ChainStep]) -> tuple[str, str]:
        """The presence condition and the plain selection. celpy's `has()` and `in` answer false
        where cel-cpp's optional selection fails (`"s".?x`, `[1][?"k"]`), so each test falls back
        to the plain selection, which fails the same way, on a value of the wrong type."""
        tests: list[str] = []
        prefix = base
        optional = False
        for step in steps:
            optional = optional or step.optional
            if step.select is not None:
                selected = f"{prefix}.{step.select}"
                test = f"(type({prefix}) == map ? has({selected}) : {selected})"
            else:
                selected = f"{prefix}[{step.key}]"
                if step.numeric:
                    test = f"(type({prefix}) == list ? {step.key} < size({prefix}) : {selected})"
                else:
                    test = f"(type({prefix}) == map ? {step.key} in {prefix} : {selected})"
            if optional:
                tests.append(test)
            prefix = selected
        return " && ".join(tests), prefix

    def _closing(self, opening: int, end: int) -> int:
        depth = 0
        for index in range(opening, end):
            text = self._tokens[index].text
            if text in "([{":
                depth += 1
            elif text in ")]}":
                depth -= 1
                if depth == 0:
                    return index
        raise self._fail()


def _uses_optionals(tokens: Sequence[_Token]) -> bool:
    for index, token in enumerate(tokens):
        if token.text == "?" and index > 0 and tokens[index - 1].text in (".", "[", "{", ","):
            return True
        if token.text == "optional" and index + 1 < len(tokens) and tokens[index + 1].text == ".":
            return True
    return False


class _NameChecker:
    """celpy does not type-check: reject undeclared variables and functions, as cel-cpp does."""

    def __init__(self, source: str, variables: frozenset[str]) -> None:
        self._source = source
        self._variables = variables

    def _fail(self, message: str) -> CelCompileError:
        return CelCompileError(self._source, message)

    def check(self, tree: _Ast, bound: frozenset[str] = frozenset()) -> None:
        kind = tree.data
        children = tree.children
        if kind in ("ident", "dot_ident"):
            name = str(children[0])
            if name not in self._variables and name not in bound and name not in _CELPY_TYPE_NAMES:
                raise self._fail(f"undeclared reference to '{name}'")
            return
        if kind in ("ident_arg", "dot_ident_arg"):
            name = str(children[0])
            if name not in _CELPY_FUNCTIONS:
                raise self._fail(f"undeclared reference to '{name}'")
        elif kind == "member_object":
            raise self._fail("message construction is not supported")
        elif kind == "member_dot_arg":
            target, method = children[0], str(children[1])
            if method in _COMPREHENSION_MACROS:
                self._check_macro(tree, bound)
                return
            if method not in _CELPY_FUNCTIONS:
                raise self._fail(f"undeclared reference to '{method}'")
            if isinstance(target, lark.Tree):
                self.check(target, bound)
            for child in children[2:]:
                if isinstance(child, lark.Tree):
                    self.check(child, bound)
            return
        for child in children:
            if isinstance(child, lark.Tree):
                self.check(child, bound)

    def _check_macro(self, tree: _Ast, bound: frozenset[str]) -> None:
        target, method = tree.children[0], str(tree.children[1])
        arguments = tree.children[2] if len(tree.children) > 2 else None
        parts = arguments.children if isinstance(arguments, lark.Tree) else []
        if len(parts) != 2 or not isinstance(parts[0], lark.Tree) or not isinstance(parts[1], lark.Tree):
            raise self._fail(f"{method}() takes a variable and one expression here")
        names = [str(ident.children[0]) for ident in parts[0].find_data("ident")]
        if len(names) != 1:
            raise self._fail(f"{method}() needs a simple variable name as its first argument")
        if isinstance(target, lark.Tree):
            self.check(target, bound)
        self.check(parts[1], bound | {names[0]})


_CELPY_LOCK: Final = threading.Lock()  # celpy shares one lark parser per process


class _PythonProgram:
    """A program for cel-python. Each evaluation builds its own evaluator: thread-safe."""

    __slots__ = ("_activation_factory", "_ast", "_bound_lists", "_unwraps", "source")

    def __init__(
        self,
        source: str,
        ast: _Ast,
        activation_factory: Callable[[], evaluation.Activation],
        *,
        unwraps: bool,
        bound_lists: bool,
    ) -> None:
        self.source = source
        self._ast = ast
        self._activation_factory = activation_factory
        self._unwraps = unwraps
        self._bound_lists = bound_lists

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        return self.evaluate_prepared(prepare(activation))

    def evaluate_prepared(self, activation: Activation) -> Any:
        _check_prepared(self.source, activation, self._bound_lists)
        try:
            context = activation._celpy
            if context is None:  # converted once per request, then shared by its programs
                context = {name: _to_celpy(value) for name, value in activation.variables.items()}
                activation._celpy = context
            evaluator = _BudgetedEvaluator(self._ast, self._activation_factory(), _Budget())
            value = evaluator.evaluate(context)
        except evaluation.CELEvalError as error:
            raise CelEvaluationError(self.source, _celpy_message(error)) from error
        except _IterationBudgetExceeded as error:
            raise CelEvaluationError(self.source, "Iteration budget exceeded") from error
        except RecursionError as error:
            raise CelEvaluationError(self.source, "the input is nested too deeply") from error
        except Exception as error:  # celpy raises assorted Python errors on unexpected values
            raise CelEvaluationError(self.source, f"{type(error).__name__}: {error}") from error
        result = _from_celpy(self.source, value)
        return _unwrap(result) if self._unwraps else result


def _celpy_message(error: evaluation.CELEvalError) -> str:
    return str(error.args[0]) if error.args else "evaluation failed"


class PythonEngine:
    """cel-python (celpy 0.5): the pure-Python fallback and differential oracle."""

    name: ClassVar[str] = "cel-python"

    def __init__(self) -> None:
        # celpy lowers or raises the process's recursion limit to 2,500 when it builds an
        # environment; never lower a limit the application set higher.
        previous = sys.getrecursionlimit()
        with _CELPY_LOCK:
            self._environment = importlib.import_module("celpy").Environment()
        sys.setrecursionlimit(max(previous, sys.getrecursionlimit()))

    def compile(self, source: str, variables: Sequence[str]) -> Program:
        check_cost_bound(source)
        tokens = _tokens(source)
        rewritten, unwraps = source, False
        if _uses_optionals(tokens):
            rewritten, unwraps = _OptionalRewriter(source, tokens).rewrite()
            if _uses_optionals(_tokens(rewritten)):
                raise CelCompileError(source, _OPTIONAL_UNSUPPORTED)
        try:
            with _CELPY_LOCK:
                ast = self._environment.compile(rewritten)
                runner = self._environment.program(ast)
        except celparser.CELParseError as error:
            raise CelCompileError(source, _celpy_syntax_message(error)) from error
        except Exception as error:  # lark raises a few errors of its own on odd input
            raise CelCompileError(source, f"syntax error: {type(error).__name__}") from error
        _NameChecker(source, frozenset(variables)).check(ast)
        return _PythonProgram(
            source, ast, runner.new_activation, unwraps=unwraps, bound_lists=_builds_lists(source)
        )


def _celpy_syntax_message(error: celparser.CELParseError) -> str:
    if error.line is not None and error.column is not None:
        return f"Syntax error at line {error.line}, column {error.column}"
    return "Syntax error"


# --- Engine selection -------------------------------------------------------------------------------

_ENGINE_TYPES: Final[dict[str, Callable[[], Engine]]] = {
    CppEngine.name: CppEngine,
    PythonEngine.name: PythonEngine,
}
_engines: dict[str, Engine] = {}
_engines_lock: Final = threading.Lock()


def engine_named(name: str) -> Engine:
    """The process's engine of that name; ValueError if unknown, ImportError if not installed."""
    factory = _ENGINE_TYPES.get(name)
    if factory is None:
        raise ValueError(f"unknown CEL engine {name!r}; expected one of {', '.join(_ENGINE_TYPES)}")
    with _engines_lock:
        engine = _engines.get(name)
        if engine is None:
            engine = _engines[name] = factory()
        return engine


def default_engine() -> Engine:
    """`CALLWARDEN_CEL_ENGINE` if set; else cel-expr-python, or cel-python if that cannot load."""
    chosen = os.environ.get(ENGINE_VARIABLE)
    if chosen:
        return engine_named(chosen)
    try:
        return engine_named(CppEngine.name)
    except ImportError:
        return engine_named(PythonEngine.name)


def compile_expression(source: str, variables: Sequence[str]) -> Program:
    """Compile `source` over the named variables with the process's default engine."""
    return default_engine().compile(source, variables)
