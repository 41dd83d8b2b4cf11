"""Differential tests: cel-expr-python (cel-cpp) and cel-python must agree.

Two corpora run through both engines (DESIGN.md §6):
- the expressions mappings and policies use, with realistic activations (`CORPUS`);
- a subset of the official CEL conformance data (tests/vectors/cel/, see SOURCE.md), whose
  expected values cel-expr-python must also produce.

Where the engines legitimately differ, the case is listed in tests/vectors/cel/known_differences.json
under one of the reasons in `REASONS`; a listed case that stops differing fails, so the table stays true.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from callwarden.policy.cel import ABSENT, CelCompileError, CelEvaluationError, engine_named

VECTORS = Path(__file__).parent / "vectors" / "cel"
CPP = engine_named("cel-expr-python")
PYTHON = engine_named("cel-python")

# Why the engines may differ on a case listed in known_differences.json.
REASONS: dict[str, str] = {
    "heterogeneous-numbers": (
        "cel-python 0.5 has no heterogeneous numeric equality/ordering/membership: int, uint and "
        "double never compare (`dyn(1) == 1.0`, `3.0 in [3]`, `{1u: 1}[1]` are errors there, values in "
        "cel-cpp and the spec)"
    ),
    "mixed-type-equality": (
        "cel-python raises 'no such overload' comparing values of different types (`1 == 'a'`, "
        "`x == null` for a non-null x, mixed-type list/map elements); cel-cpp and the spec answer false"
    ),
    "nan-equality": "cel-python compares NaN equal to itself (`0.0/0.0 == 0.0/0.0` is true)",
    "double-int-range": (
        "cel-python converts a double outside the int64 range to int before comparing, so it "
        "overflows or answers wrongly (`dyn(9223372036854775808.0) > 9223372036854775807`)"
    ),
    "no-optionals": (
        "cel-python 0.5 has no optional types; PythonEngine only rewrites optional selection chains "
        "(`a.?b`, `a[?'k']`) that are the whole expression or end in orValue/hasValue/value"
    ),
    "backquoted-fields": "cel-python 0.5 predates backquoted field names (`m.`content-type``)",
    "duplicate-map-keys": "cel-cpp accepts a map literal with the same numeric key twice; cel-python fails",
    "multiline-strings": "cel-python 0.5 drops the line break inside a triple-quoted string literal",
}

# Cases where cel-expr-python itself does not produce the conformance value, and why.
CPP_DEVIATIONS: dict[str, str] = {
    "fields/qualified_identifier_resolution/map_value_repeat_key_heterogeneous": (
        "cel-cpp 0.1.3 accepts `{0: 1, 0u: 2}`; the data itself records this as 'Current behavior'"
    ),
}


def _known_differences() -> dict[str, str]:
    table: dict[str, str] = json.loads((VECTORS / "known_differences.json").read_text())
    unknown = {reason for reason in table.values() if reason not in REASONS}
    assert not unknown, f"known_differences.json uses undocumented reasons {unknown}"
    return table


KNOWN_DIFFERENCES = _known_differences()


# --- Outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    kind: str  # "value", "absent", "compile-error", "evaluation-error"
    value: Any = None
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.kind.endswith("error")


def run(engine_name: str, source: str, activation: Mapping[str, Any]) -> Outcome:
    engine = CPP if engine_name == "cel-expr-python" else PYTHON
    try:
        program = engine.compile(source, tuple(activation))
    except CelCompileError as error:
        return Outcome("compile-error", message=error.message)
    try:
        value = program.evaluate(activation)
    except CelEvaluationError as error:
        return Outcome("evaluation-error", message=error.message)
    return Outcome("absent") if value is ABSENT else Outcome("value", value)


def same_json(left: Any, right: Any) -> bool:
    """Equal and of the same types all the way down (1 and 1.0 and True differ); NaN matches NaN."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same_json, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_json(left[key], right[key]) for key in left)
    return bool(left == right)


def agree(left: Outcome, right: Outcome) -> bool:
    """Same value, or both absent, or both failed (compile and evaluation errors count alike:
    cel-cpp checks types at compile time, cel-python only when it evaluates)."""
    if left.failed or right.failed:
        return left.failed and right.failed
    return left.kind == right.kind and same_json(left.value, right.value)


# --- The mapping and policy corpus ------------------------------------------------------------------

TOKEN = {
    "iss": "https://issuer.example",
    "sub": "alice",
    "aud": ["https://mcp.example/finance"],
    "client_id": "agent-7",
    "scope": "finance:read docs:write",
    "roles": ["analyst", "approver"],
    "exp": 1_900_000_000,
    "act": {"sub": "agent-7", "iss": "https://issuer.example", "act": {"sub": "orchestrator"}},
    "tenant": None,
}
PARAMS = {
    "name": "query_financials",
    "arguments": {
        "customer-id": "c-42",
        "period": "2026-Q1",
        "entity": "ACME Corp",
        "amount": 25000.5,
        "count": 3,
        "tags": ["q1", "board"],
        "items": [{"id": "a", "qty": 2}, {"id": "b", "qty": 0}],
        "quote": 'it\'s "quoted"',
        "unicode": "ünïcødé ✓",
    },
}
MAPPING = {"token": TOKEN, "params": PARAMS}
REQUEST = {
    "subject": {"type": "identity", "id": "alice", "properties": {"department": "finance", "level": 4}},
    "action": {"name": "query_financials"},
    "resource": {"type": "ledger", "id": "2026-Q1", "properties": {"owner": "alice", "limit": 10000}},
    "context": {
        "mcp": {"server": "default/finance", "method": "tools/call", "tool": "query_financials"},
        "agent": "agent-7",
        "actors": [{"sub": "agent-7"}, {"sub": "orchestrator"}],
        "amount": 25000.5,
    },
}

CORPUS: list[tuple[str, str, dict[str, Any]]] = [
    # field selection, index notation, quoting
    ("select-claim", "token.sub", MAPPING),
    ("select-nested", "token.act.sub", MAPPING),
    ("select-null-claim", "token.tenant", MAPPING),
    ("select-missing-claim", "token.nope", MAPPING),
    ("select-through-missing", "token.nope.deeper", MAPPING),
    ("select-through-string", "token.sub.deeper", MAPPING),
    ("index-dashed-key", 'params.arguments["customer-id"]', MAPPING),
    ("index-single-quoted", "params.arguments['customer-id']", MAPPING),
    ("index-missing-key", 'params.arguments["nope"]', MAPPING),
    ("index-list", "token.roles[1]", MAPPING),
    ("index-list-out-of-range", "token.roles[5]", MAPPING),
    ("whole-object", "params.arguments", MAPPING),
    ("list-literal", "[token.sub, token.client_id, 'x']", MAPPING),
    (
        "map-literal",
        '{"user": token.sub, "tool": params.name, "n": 1, "f": 1.5, "b": true, "z": null}',
        MAPPING,
    ),
    ("string-escapes", r'"tab\there \"dq\" \'sq\' \u00fc \\"', MAPPING),
    ("raw-string", r"r'\d+\n'", MAPPING),
    ("triple-quoted", '"""multi\nline"""', MAPPING),
    ("string-with-quote-data", "params.arguments.quote", MAPPING),
    ("unicode-data", "params.arguments.unicode", MAPPING),
    ("concat", 'token.sub + "@" + params.arguments.entity', MAPPING),
    # has() and optionals
    ("has-present", "has(token.client_id)", MAPPING),
    ("has-absent", "has(token.nope)", MAPPING),
    ("has-null-claim", "has(token.tenant)", MAPPING),
    ("has-nested", "has(token.act.act)", MAPPING),
    ("optional-present", "token.?client_id", MAPPING),
    ("optional-absent", "token.?nope", MAPPING),
    ("optional-null", "token.?tenant", MAPPING),
    ("optional-chain-present", "token.?act.?sub", MAPPING),
    ("optional-chain-absent", "token.?nope.?sub", MAPPING),
    ("optional-then-select", "token.?act.act.sub", MAPPING),
    ("optional-then-missing", "token.?act.nope", MAPPING),
    ("optional-index", 'params.arguments[?"customer-id"]', MAPPING),
    ("optional-index-absent", 'params.arguments[?"nope"]', MAPPING),
    ("optional-list-index", "token.roles[?1]", MAPPING),
    ("optional-list-index-absent", "token.roles[?9]", MAPPING),
    ("or-value-present", 'token.?client_id.orValue("none")', MAPPING),
    ("or-value-absent", 'token.?nope.orValue("none")', MAPPING),
    ("or-value-in-expression", 'token.?nope.orValue(token.sub) + "!"', MAPPING),
    ("or-value-nested-default", "token.?nope.orValue(token.?client_id.orValue('x'))", MAPPING),
    ("has-value", "token.?client_id.hasValue() && !token.?nope.hasValue()", MAPPING),
    ("optional-value", "token.?act.value()", MAPPING),
    ("optional-on-string", "token.sub.?x", MAPPING),
    # in, string functions
    ("in-list", '"approver" in token.roles', MAPPING),
    ("not-in-list", '"admin" in token.roles', MAPPING),
    ("in-map", '"customer-id" in params.arguments', MAPPING),
    ("starts-with", 'params.arguments.period.startsWith("2026")', MAPPING),
    ("ends-with", 'params.arguments.period.endsWith("Q1")', MAPPING),
    ("contains", 'token.scope.contains("finance:read")', MAPPING),
    ("matches", r'params.arguments.period.matches("^\\d{4}-Q[1-4]$")', MAPPING),
    ("matches-bad-regex", 'token.sub.matches("(")', MAPPING),
    ("size-string", "size(params.arguments.entity)", MAPPING),
    ("size-method", "params.arguments.entity.size()", MAPPING),
    ("size-unicode", "size(params.arguments.unicode)", MAPPING),
    ("size-list", "size(token.roles)", MAPPING),
    # macros
    ("exists", 'token.roles.exists(r, r == "approver")', MAPPING),
    ("all", "params.arguments.items.all(i, i.qty >= 0)", MAPPING),
    ("exists-one", 'params.arguments.tags.exists_one(t, t.startsWith("q"))', MAPPING),
    ("map", "params.arguments.items.map(i, i.id)", MAPPING),
    ("filter", "params.arguments.items.filter(i, i.qty > 0)", MAPPING),
    ("map-over-map-keys", "params.arguments.map(k, k).size()", MAPPING),
    ("nested-macros", "params.arguments.items.all(i, token.roles.exists(r, r != i.id))", MAPPING),
    ("macro-error-in-body", "params.arguments.items.all(i, i.nope == 1)", MAPPING),
    # comparisons, ternaries, logic
    ("int-compare", "params.arguments.count > 2", MAPPING),
    ("int-equal", "params.arguments.count == 3", MAPPING),
    ("double-compare", "params.arguments.amount > 10000.0", MAPPING),
    ("double-equal", "params.arguments.amount == 25000.5", MAPPING),
    ("double-vs-int-literal", "params.arguments.amount > 10000", MAPPING),
    ("int-vs-double-literal", "params.arguments.count < 3.5", MAPPING),
    ("int-equals-double", "params.arguments.count == 3.0", MAPPING),
    ("string-compare", 'params.arguments.period < "2026-Q2"', MAPPING),
    ("ternary", 'params.arguments.count > 2 ? "many" : "few"', MAPPING),
    ("ternary-error-branch-not-taken", "true ? token.sub : token.nope", MAPPING),
    ("and-absorbs-error", "false && token.nope == 1", MAPPING),
    ("or-absorbs-error", "token.nope == 1 || true", MAPPING),
    ("arithmetic", "params.arguments.count * 2 + 1", MAPPING),
    ("division-by-zero", "params.arguments.count / 0", MAPPING),
    ("int-overflow", "9223372036854775807 + params.arguments.count", MAPPING),
    ("string-conversion", "string(params.arguments.count)", MAPPING),
    ("int-conversion", "int(params.arguments.amount)", MAPPING),
    ("type-error", "token.sub + params.arguments.count", MAPPING),
    # PDP rule conditions
    ("rule-subject", "subject.id == resource.properties.owner", REQUEST),
    ("rule-tool", 'context.mcp.tool == "query_financials" && context.mcp.method == "tools/call"', REQUEST),
    ("rule-agent", 'has(context.agent) && context.agent.startsWith("agent-")', REQUEST),
    ("rule-actor-chain", "context.actors.size() > 1 && context.actors[0].sub == context.agent", REQUEST),
    ("rule-amount-double", "context.amount > 25000.0", REQUEST),
    ("rule-amount-int-limit", "context.amount > resource.properties.limit", REQUEST),
    ("rule-level", "subject.properties.level >= 3", REQUEST),
    ("rule-department-in", 'subject.properties.department in ["finance", "audit"]', REQUEST),
    ("rule-missing-property", 'resource.properties.classification == "secret"', REQUEST),
    (
        "rule-has-guard",
        'has(resource.properties.classification) && resource.properties.classification == "x"',
        REQUEST,
    ),
    ("rule-non-bool", "subject.id", REQUEST),
]


def _corpus_params() -> list[Any]:
    return [pytest.param(source, activation, id=f"corpus/{name}") for name, source, activation in CORPUS]


@pytest.mark.parametrize(("source", "activation"), _corpus_params())
def test_engines_agree_on_the_mapping_and_policy_corpus(
    request: pytest.FixtureRequest, source: str, activation: dict[str, Any]
) -> None:
    check_agreement(request.node.callspec.id, source, activation)


def check_agreement(case_id: str, source: str, activation: Mapping[str, Any]) -> None:
    cpp = run("cel-expr-python", source, activation)
    python = run("cel-python", source, activation)
    reason = KNOWN_DIFFERENCES.get(case_id)
    if reason is None:
        assert agree(cpp, python), f"{source!r}: cel-expr-python {cpp} but cel-python {python}"
    else:
        assert not agree(cpp, python), f"{case_id} is listed as '{reason}' but the engines now agree"


# --- The conformance subset --------------------------------------------------------------------------

_TEXTPROTO_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<string>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""
    r"""|(?P<word>[-+]?[A-Za-z0-9_.]+)|(?P<punct>[:{}<>\[\],;])"""
)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unquote(literal: str) -> bytes:
    """A protobuf text-format string literal's bytes (C escapes, octal, hex, \\u)."""
    body, out, index = literal[1:-1], bytearray(), 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out += char.encode()
            index += 1
            continue
        escape = body[index + 1]
        if escape in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[escape].encode()
            index += 2
        elif escape == "x":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[index + 2 :])
            assert digits is not None
            out.append(int(digits.group(), 16))
            index += 2 + len(digits.group())
        elif escape in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[index + 1 :])
            assert digits is not None
            out.append(int(digits.group(), 8))
            index += 1 + len(digits.group())
        elif escape in "uU":
            width = 4 if escape == "u" else 8
            out += chr(int(body[index + 2 : index + 2 + width], 16)).encode("utf-8", "surrogatepass")
            index += 2 + width
        else:
            out += escape.encode()
            index += 2
    return bytes(out)


def parse_textproto(text: str) -> dict[str, list[Any]]:
    """Protobuf text format, schema-less: every field is a list of sub-messages (dicts), strings
    (bytes) or bare words (str). Enough for cel-spec's SimpleTestFile data."""
    tokens = [
        (match.lastgroup, match.group())
        for match in _TEXTPROTO_TOKEN.finditer(text)
        if match.lastgroup is not None
    ]
    position = 0

    def scalar() -> Any:
        nonlocal position
        kind, token = tokens[position]
        if kind != "string":
            position += 1
            return token
        data = b""
        while position < len(tokens) and tokens[position][0] == "string":  # adjacent literals join
            data += _unquote(tokens[position][1])
            position += 1
        return data

    def message(closing: str | None) -> dict[str, list[Any]]:
        nonlocal position
        fields: dict[str, list[Any]] = {}
        while position < len(tokens):
            token = tokens[position][1]
            position += 1
            if token == closing:
                return fields
            if token in ",;":
                continue
            if tokens[position][1] == ":":
                position += 1
            opening = tokens[position][1]
            if opening in "{<":
                position += 1
                fields.setdefault(token, []).append(message("}" if opening == "{" else ">"))
            elif opening == "[":
                position += 1
                while tokens[position][1] != "]":
                    if tokens[position][1] == ",":
                        position += 1
                    else:
                        fields.setdefault(token, []).append(scalar())
                position += 1
            else:
                fields.setdefault(token, []).append(scalar())
        assert closing is None, "unterminated message"
        return fields

    return message(None)


class Unsupported(Exception):
    """A conformance case this seam cannot express; counted, never silently dropped."""


def json_value(value: Mapping[str, list[Any]]) -> Any:
    """A cel.expr.Value message as the JSON-shaped Python the seam returns."""
    ((kind, (content,)),) = value.items()
    if kind == "null_value":
        return None
    if kind == "bool_value":
        return content == "true"
    if kind in ("int64_value", "uint64_value"):
        return int(content, 0)
    if kind == "double_value":
        return float(content)
    if kind == "string_value":
        return content.decode()
    if kind == "list_value":
        return [json_value(item) for item in content.get("values", [])]
    if kind == "map_value":
        result = {}
        for entry in content.get("entries", []):
            key = json_value(entry["key"][0])
            if not isinstance(key, str):
                raise Unsupported("expects a map with non-string keys (not JSON)")
            result[key] = json_value(entry["value"][0])
        return result
    raise Unsupported(f"expects a {kind} (not JSON)")


@dataclass(frozen=True)
class ConformanceCase:
    case_id: str
    source: str
    activation: dict[str, Any]
    expected: Outcome  # kind "value", or "evaluation-error" for any failure


_UNSUPPORTED_FLAGS = {
    "container": "uses a container (namespaces)",
    "disable_check": "needs disable_check (callwarden always type-checks)",
    "disable_macros": "needs disable_macros",
    "check_only": "is check-only",
    "typed_result": "expects a typed result",
    "unknown": "expects unknowns",
    "any_unknowns": "expects unknowns",
}


def _conformance_case(file: str, section: str, test: Mapping[str, list[Any]]) -> ConformanceCase:
    case_id = f"{file}/{section}/{test['name'][0].decode()}"
    source = test["expr"][0].decode()
    for flag, why in _UNSUPPORTED_FLAGS.items():
        if flag in test:
            raise Unsupported(why)
    if "google.protobuf." in source or "TestAllTypes" in source:
        raise Unsupported("needs protobuf messages")
    activation: dict[str, Any] = {}
    for binding in test.get("bindings", []):
        name = binding["key"][0].decode()
        value = json_value(binding["value"][0]["value"][0])
        if not isinstance(value, dict) or "." in name:
            raise Unsupported("binds a variable that is not a simply named map")
        activation[name] = value
    for declaration in test.get("type_env", []):
        if declaration["name"][0].decode() not in activation:
            raise Unsupported("declares a variable or function without a map binding")
    if "eval_error" in test or "any_eval_errors" in test:
        expected = Outcome("evaluation-error")
    elif "value" in test:
        expected = Outcome("value", json_value(test["value"][0]))
    else:
        expected = Outcome("value", True)  # simple.proto: an unset result matcher means true
    return ConformanceCase(case_id, source, activation, expected)


def conformance_cases() -> tuple[list[ConformanceCase], Counter[str]]:
    cases: list[ConformanceCase] = []
    unsupported: Counter[str] = Counter()
    for path in sorted(VECTORS.glob("*.textproto")):
        for section in parse_textproto(path.read_text())["section"]:
            for test in section["test"]:
                try:
                    cases.append(_conformance_case(path.stem, section["name"][0].decode(), test))
                except Unsupported as why:
                    unsupported[f"{path.stem}: {why}"] += 1
    return cases, unsupported


CASES, UNSUPPORTED = conformance_cases()

# Every conformance case is run or counted here; a change in the data or the seam shows up.
EXPECTED_COVERAGE = {
    "run": 598,
    "unsupported": {
        "basic: binds a variable that is not a simply named map": 4,
        "basic: expects a bytes_value (not JSON)": 3,
        "basic: needs disable_check (callwarden always type-checks)": 4,
        "comparisons: binds a variable that is not a simply named map": 7,
        "comparisons: expects a bytes_value (not JSON)": 1,
        "comparisons: needs disable_check (callwarden always type-checks)": 21,
        "comparisons: needs protobuf messages": 28,
        "comparisons: uses a container (namespaces)": 44,
        "fields: binds a variable that is not a simply named map": 3,
        "fields: expects a bytes_value (not JSON)": 1,
        "fields: needs disable_check (callwarden always type-checks)": 5,
        "logic: needs disable_check (callwarden always type-checks)": 9,
        "optionals: uses a container (namespaces)": 11,
        "string: expects a bytes_value (not JSON)": 4,
    },
}


def _case_params() -> list[Any]:
    return [pytest.param(case, id=case.case_id) for case in CASES]


def test_conformance_cases_are_all_run_or_counted(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nCEL conformance subset: {len(CASES)} cases run; not expressible here:")
        for reason, count in sorted(UNSUPPORTED.items()):
            print(f"  {count:4d}  {reason}")
    assert {"run": len(CASES), "unsupported": dict(UNSUPPORTED)} == EXPECTED_COVERAGE


@pytest.mark.parametrize("case", _case_params())
def test_cel_expr_python_produces_the_conformance_result(case: ConformanceCase) -> None:
    outcome = run("cel-expr-python", case.source, case.activation)
    if case.case_id in CPP_DEVIATIONS:
        assert not agree(outcome, case.expected), f"{case.case_id} now conforms: drop it from CPP_DEVIATIONS"
    else:
        assert agree(outcome, case.expected), f"{case.source!r}: expected {case.expected}, got {outcome}"


@pytest.mark.parametrize("case", _case_params())
def test_engines_agree_on_the_conformance_subset(case: ConformanceCase) -> None:
    check_agreement(case.case_id, case.source, case.activation)


def test_every_known_difference_names_a_case() -> None:
    case_ids = {case.case_id for case in CASES} | {f"corpus/{name}" for name, _, _ in CORPUS}
    assert set(KNOWN_DIFFERENCES) <= case_ids


def test_every_documented_reason_is_used() -> None:
    assert set(KNOWN_DIFFERENCES.values()) == set(REASONS)
