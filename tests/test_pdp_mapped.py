"""`EmbeddedPdp.evaluate_mapped`, the PDP's entry for the mapping's own requests: it skips the
shape checks the mapping's construction guarantees, keeps the nesting bound, and decides exactly
as `evaluate` does. Also the end-to-end `decide` path that uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from callwarden.policy.bundle import compile_server
from callwarden.policy.decide import decide
from callwarden.policy.evaluation import MAX_DEPTH, nesting_problem
from callwarden.policy.loader import load_config
from callwarden.policy.model import ToolPolicy
from callwarden.policy.pdp import EmbeddedPdp, compile_pdp

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "board-packet"


def policy(*rules: dict[str, Any]) -> ToolPolicy:
    return ToolPolicy.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "ToolPolicy",
            "metadata": {"name": "rules", "namespace": "default"},
            "spec": {"targets": ["*"], "rules": list(rules)},
        }
    )


PDP: EmbeddedPdp = compile_pdp(
    [
        policy(
            {"name": "open", "methods": ["tools/list"], "effect": "Allow"},
            {
                "name": "analysts-read",
                "tools": ["read"],
                "effect": "Allow",
                "when": '"analyst" in subject.properties.roles',
            },
            {
                "name": "q1-only",
                "tools": ["read"],
                "effect": "Deny",
                "when": 'resource.properties.period != "Q1"',
            },
            {"name": "agent-known", "tools": ["re*"], "effect": "Allow", "when": "context.agent == 'bot'"},
            {"name": "approve-write", "tools": ["write"], "effect": "RequireApproval"},
            {"name": "broken", "tools": ["broken"], "effect": "Allow", "when": "resource.properties.nope"},
            {
                "name": "outside-mcp",
                "tools": ["export"],
                "effect": "Allow",
                "when": "action.name == 'export'",
            },
        )
    ]
)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def tool_call(tool: str, *, roles: Any = ("analyst",), period: Any = "Q1", **context: Any) -> dict[str, Any]:
    return {
        "subject": {"type": "identity", "id": "alice", "properties": {"roles": list(roles)}},
        "action": {"name": "read"},
        "resource": {"type": "financials", "id": "acme", "properties": {"period": period}},
        "context": {
            "agent": "bot",
            "mcp": {"server": "default/fin", "method": "tools/call", "tool": tool},
            **context,
        },
    }


REQUESTS = [
    pytest.param(tool_call("read"), id="allowed-by-two"),
    pytest.param(tool_call("read", period="Q2"), id="deny-overrides"),
    pytest.param(tool_call("read", roles=()), id="allowed-by-one"),
    pytest.param(tool_call("write"), id="requires-approval"),
    pytest.param(tool_call("broken"), id="rule-error-denies"),
    pytest.param(tool_call("other"), id="no-rule"),
    pytest.param(tool_call("read", period="Q1\u0000"), id="nul-fails-every-condition"),
    pytest.param(tool_call("read", extra={1, 2}), id="not-json-fails-every-condition"),
    pytest.param(tool_call("read", deep=nested(MAX_DEPTH - 1)), id="deep-at-the-bound"),
    pytest.param(tool_call("read", deep=nested(MAX_DEPTH)), id="too-deep"),
    pytest.param(tool_call("read", deep=nested(20_000)), id="deep-enough-to-crash-cel"),
    pytest.param(tool_call("read", wide=[[] for _ in range(MAX_DEPTH * 3)]), id="many-brackets-shallow"),
    pytest.param(tool_call("read", text="[{" * MAX_DEPTH), id="brackets-in-a-string"),
    pytest.param(
        {
            "subject": {"type": "identity", "id": "alice"},
            "action": {"name": "tools/list"},
            "resource": {"type": "mcp_server", "id": "default/fin"},
            "context": {"mcp": {"server": "default/fin", "method": "tools/list"}},
        },
        id="method",
    ),
    pytest.param(
        {
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "export"},
            "resource": {"type": "report", "id": "r1"},
        },
        id="outside-mcp-no-context",
    ),
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_evaluate_mapped_decides_as_evaluate(request_: dict[str, Any]) -> None:
    assert PDP.evaluate_mapped([request_]) == [PDP.evaluate(request_)]


def test_evaluate_mapped_decides_each_request_of_a_boxcar() -> None:
    requests = [param.values[0] for param in REQUESTS]
    assert PDP.evaluate_mapped(requests) == [PDP.evaluate(request) for request in requests]


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        pytest.param(
            tool_call("read", deep=nested(MAX_DEPTH)), "context nests deeper than 128 levels", id="context"
        ),
        pytest.param(
            {
                **tool_call("read"),
                "subject": {"type": "u", "id": "a", "properties": {"x": [[nested(MAX_DEPTH)]]}},
            },
            "subject nests deeper than 128 levels",
            id="subject-through-lists",
        ),
        pytest.param(tool_call("read", deep=nested(MAX_DEPTH - 1)), None, id="at-the-bound"),
        pytest.param(tool_call("read", wide=[[] for _ in range(500)]), None, id="wide"),
        pytest.param(
            tool_call("read", odd={1, 2}, deep=nested(MAX_DEPTH)), "context nests", id="not-json-walked"
        ),
    ],
)
def test_nesting_problem_matches_the_full_check(request_: dict[str, Any], problem: str | None) -> None:
    found = nesting_problem(request_)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --- decide(): mapping, then evaluate_mapped -----------------------------------------------------------

CONFIG = load_config([EXAMPLE])
SERVER = compile_server(CONFIG.servers["board-packet/finance"], list(CONFIG.policies.values()))
CLAIMS = {
    "iss": "https://issuer.finance.board.example",
    "sub": "alice",
    "aud": "https://finance.board.example/mcp",
    "client_id": "board-agent",
    "roles": ["analyst"],
}


def query(entity: str) -> dict[str, Any]:
    return {"name": "query_financials", "arguments": {"period": "2026-Q3", "entity": entity}}


def test_decide_allows_the_board_packet_read() -> None:
    verdict = decide(SERVER, "tools/call", query("example-corp"), CLAIMS)
    assert verdict.allowed
    assert verdict.reasons == ("board-packet/board-packet-task/read-q3-financials",)


def test_decide_denies_another_entity() -> None:
    verdict = decide(SERVER, "tools/call", query("other-corp"), CLAIMS)
    assert not verdict.allowed
    assert verdict.reasons == ("board-packet/finance-guardrails/only-example-corp",)


def test_decide_without_roles_uses_the_default_and_denies() -> None:
    claims = {key: value for key, value in CLAIMS.items() if key != "roles"}
    verdict = decide(SERVER, "tools/call", query("example-corp"), claims)
    assert not verdict.allowed
    assert verdict.requests[0]["subject"]["properties"]["roles"] == []


def test_decide_denies_a_mapped_request_nested_too_deeply() -> None:
    # The mapping copies the token's agent claim into context.agent whole: its depth is the token's.
    claims = {**CLAIMS, "client_id": nested(MAX_DEPTH + 5)}
    verdict = decide(SERVER, "tools/call", query("example-corp"), claims)
    assert not verdict.allowed
    assert verdict.error is not None
    assert "malformed request: context nests deeper than 128 levels" in verdict.error.message


def test_decide_denies_a_nul_in_the_arguments() -> None:
    verdict = decide(SERVER, "tools/call", query("example-corp\u0000x"), CLAIMS)
    assert not verdict.allowed
    assert verdict.error is not None
    assert "NUL" in verdict.error.message
