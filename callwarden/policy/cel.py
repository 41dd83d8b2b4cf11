"""The CEL seam: compile once at configuration load, evaluate many times on the hot path.

Everything else in callwarden talks to CEL only through `compile_expression` and `Program`,
so the engine behind it can change without touching the mapping or the PDP.

The default engine is `cel-expr-python` (Google's cel-cpp runtime, ~6 µs per evaluation
here, see DESIGN.md §6).

Values cross the seam as plain JSON-shaped Python values (dict, list, str, int, float,
bool, None). An expression whose result is a CEL optional (`token.?client_id`) yields the
unwrapped value, or `ABSENT` when the optional is empty: the COAZ binding uses absence to
omit a field (standards.md §2.7).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from cel_expr_python import cel
from cel_expr_python.ext import ext_optional

# A hostile or careless policy must not be able to stall the PEP: expressions are bounded
# before they reach a parser (length), and by their syntactic nesting (brackets), which
# bounds both the parser's recursion and the evaluator's.
MAX_EXPRESSION_LENGTH: Final = 4096
MAX_NESTING_DEPTH: Final = 32


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


def check_cost_bound(source: str) -> None:
    """Reject expressions too long or too deeply nested to evaluate in bounded time."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise CelCompileError(
            source[:80] + "...",
            f"expression is {len(source)} characters long; the limit is {MAX_EXPRESSION_LENGTH}",
        )
    depth = 0
    deepest = 0
    quote: str | None = None
    escaped = False
    for char in source:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    if deepest > MAX_NESTING_DEPTH:
        raise CelCompileError(
            source, f"expression nests {deepest} levels deep; the limit is {MAX_NESTING_DEPTH}"
        )


class _CppProgram:
    """A program compiled by cel-expr-python (cel-cpp)."""

    __slots__ = ("_expression", "source")

    def __init__(self, source: str, expression: Any) -> None:
        self.source = source
        self._expression = expression

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        try:
            value = self._expression.eval(data=activation)
        except Exception as error:  # the binding raises for values it cannot convert
            raise CelEvaluationError(self.source, str(error)) from error
        if value.type().name() == "ERROR":
            raise CelEvaluationError(self.source, str(value.value()))
        return value.plain_value()


class _CppOptionalProgram(_CppProgram):
    """An optional-typed expression, rewritten to a list of zero or one element."""

    __slots__ = ()

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        wrapped = super().evaluate(activation)
        return wrapped[0] if wrapped else ABSENT


class CppEngine:
    """cel-expr-python: Google's cel-cpp runtime. Every variable is a map of dyn values."""

    name: Final = "cel-expr-python"

    def __init__(self) -> None:
        self._cel = cel
        self._optional_extension = ext_optional.ExtOptional()
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
            if expression.return_type().name().startswith("optional_type"):
                unwrapped = f"({source}).hasValue() ? [({source}).value()] : []"
                return _CppOptionalProgram(source, environment.compile(unwrapped))
        except RuntimeError as error:
            raise CelCompileError(source, _first_line(str(error))) from error
        return _CppProgram(source, expression)


def _first_line(message: str) -> str:
    """cel-cpp appends a caret diagram after the first line; keep the message readable."""
    return message.strip().splitlines()[0].removeprefix("INVALID_ARGUMENT: ")


_default_engine: CppEngine | None = None


def default_engine() -> CppEngine:
    global _default_engine  # noqa: PLW0603 - one engine per process, created on first use
    if _default_engine is None:
        _default_engine = CppEngine()
    return _default_engine


def compile_expression(source: str, variables: Sequence[str]) -> Program:
    """Compile `source` over the named variables with the process's default engine."""
    return default_engine().compile(source, variables)
