"""The catalog question (policy.catalog): which tools could this caller ever be allowed to call.

A tool is listed when some Allow or RequireApproval rule could match it for this subject and
agent with the call's arguments unknown, and removed when no rule names it or a Deny applies
whatever the arguments. The board-packet example, then one rule shape at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from callwarden.policy.bundle import CompiledServer, compile_bundle
from callwarden.policy.catalog import Catalog, catalog_for, reads_arguments
from callwarden.policy.decide import decide
from callwarden.policy.loader import config_from_objects, load_config
from callwarden.policy.remote import OFFLINE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "board-packet"
CLAIMS = {
    name: json.loads((EXAMPLE / "claims" / f"{name}.json").read_text())
    for name in ("analyst", "intern", "finance-admin", "other-agent")
}
ANALYST = CLAIMS["analyst"]

READ_MAPPING = {
    "evaluation": {
        "subject": {
            "type": "identity",
            "id": "$token.sub",
            "properties": {"roles": "$token.?roles.orValue([])"},
        },
        "action": {"name": "read"},
        "resource": {"type": "ledger", "id": "$params.arguments.entity"},
        "context": {"agent": "$token.?client_id"},
    }
}


def board_packet(server: str = "finance") -> CompiledServer:
    return compile_bundle(load_config([EXAMPLE])).servers[f"board-packet/{server}"]


def compiled(rules: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()) -> CompiledServer:
    """One McpServer `ledger` with `tools` and one ToolPolicy holding `rules`."""
    server = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "McpServer",
        "metadata": {"name": "ledger", "namespace": "t"},
        "spec": {
            "resource": "https://ledger.test/mcp",
            "route": {"hosts": ["ledger.test"], "pathPrefix": "/mcp"},
            "issuers": [{"issuer": "https://issuer.test", "jwksUri": "https://issuer.test/jwks"}],
            "tools": list(tools),
        },
    }
    policy = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "ToolPolicy",
        "metadata": {"name": "p", "namespace": "t"},
        "spec": {"targets": ["ledger"], "rules": list(rules)},
    }
    return compile_bundle(config_from_objects([server, policy])).servers["t/ledger"]


def catalog(server: CompiledServer, claims: Mapping[str, Any] = ANALYST) -> Catalog:
    found = catalog_for(server, claims)
    assert found is not None
    return found


def listed(server: CompiledServer, tool: str, claims: Mapping[str, Any] = ANALYST) -> bool:
    return catalog(server, claims).listing(tool).listed


def reason(server: CompiledServer, tool: str, claims: Mapping[str, Any] = ANALYST) -> str:
    return catalog(server, claims).listing(tool).reason


# --- the board-packet example ------------------------------------------------------------


def test_the_analyst_s_board_agent_sees_query_financials() -> None:
    listing = catalog(board_packet()).listing("query_financials")
    assert listing.listed and listing.rules == ("board-packet/board-packet-task/read-q3-financials",)


def test_an_intern_never_sees_query_financials() -> None:
    assert reason(board_packet(), "query_financials", CLAIMS["intern"]) == "not-allowed"


def test_a_finance_admin_sees_query_financials_by_their_own_rule() -> None:
    listing = catalog(board_packet(), CLAIMS["finance-admin"]).listing("query_financials")
    assert listing.rules == ("board-packet/finance-guardrails/finance-admins-read",)


def test_the_analyst_through_another_agent_never_sees_query_financials() -> None:
    assert not listed(board_packet(), "query_financials", CLAIMS["other-agent"])


def test_a_tool_no_rule_names_is_removed() -> None:
    assert reason(board_packet(), "wire_money") == "no-rule"


@pytest.mark.parametrize(
    "case", json.loads((EXAMPLE / "cases.json").read_text())["cases"], ids=lambda c: c["name"]
)
def test_every_call_the_example_allows_is_to_a_tool_its_caller_sees(case: dict[str, Any]) -> None:
    server = compile_bundle(load_config([EXAMPLE])).servers[case["server"]]
    claims = json.loads((EXAMPLE / case["claims"]).read_text())
    request = json.loads((EXAMPLE / case["request"]).read_text())
    verdict = decide(server, request["method"], request.get("params"), claims)
    if verdict.allowed and verdict.tool is not None:
        assert listed(server, verdict.tool, claims)
    if verdict.tool is not None and not listed(server, verdict.tool, claims):
        assert not verdict.allowed


# --- rule shapes ---------------------------------------------------------------------------


def test_an_allow_with_no_condition_lists_the_tool() -> None:
    assert listed(compiled([{"name": "all", "tools": ["*"], "effect": "Allow"}]), "anything")


def test_an_allow_on_the_arguments_alone_lists_the_tool() -> None:
    rules = [{"name": "one", "tools": ["read"], "effect": "Allow", "when": 'resource.id == "acme"'}]
    assert listed(compiled(rules, [{"name": "read", "mapping": READ_MAPPING}]), "read")


def test_an_allow_the_subject_can_never_meet_removes_the_tool() -> None:
    rules = [
        {
            "name": "ops",
            "tools": ["read"],
            "effect": "Allow",
            "when": '"ops" in subject.properties.roles && resource.id == "a"',
        }
    ]
    assert reason(compiled(rules, [{"name": "read", "mapping": READ_MAPPING}]), "read") == "not-allowed"


def test_a_deny_with_no_condition_removes_the_tool_whatever_allows_it() -> None:
    rules = [
        {"name": "all", "tools": ["*"], "effect": "Allow"},
        {"name": "never", "tools": ["drop_table"], "effect": "Deny"},
    ]
    listing = catalog(compiled(rules)).listing("drop_table")
    assert (listing.listed, listing.reason, listing.rules) == (False, "denied-regardless", ("t/p/never",))


def test_a_deny_on_the_subject_alone_removes_the_tool() -> None:
    rules = [
        {"name": "all", "tools": ["*"], "effect": "Allow"},
        {
            "name": "no-analysts",
            "tools": ["read"],
            "effect": "Deny",
            "when": '"analyst" in subject.properties.roles',
        },
    ]
    assert reason(compiled(rules, [{"name": "read", "mapping": READ_MAPPING}]), "read") == "denied-regardless"


def test_a_deny_on_the_arguments_keeps_the_tool_listed() -> None:
    rules = [
        {"name": "all", "tools": ["*"], "effect": "Allow"},
        {"name": "not-secret", "tools": ["read"], "effect": "Deny", "when": 'resource.id == "secret"'},
    ]
    assert listed(compiled(rules, [{"name": "read", "mapping": READ_MAPPING}]), "read")


def test_a_deny_true_for_every_argument_by_absorption_removes_the_tool() -> None:
    rules = [
        {"name": "all", "tools": ["*"], "effect": "Allow"},
        {
            "name": "always",
            "tools": ["read"],
            "effect": "Deny",
            "when": 'resource.id == "x" || context.agent == "board-agent"',
        },
    ]
    assert reason(compiled(rules, [{"name": "read", "mapping": READ_MAPPING}]), "read") == "denied-regardless"


def test_a_tool_only_require_approval_names_is_listed() -> None:
    rules = [{"name": "ask", "tools": ["pay"], "effect": "RequireApproval"}]
    assert listed(compiled(rules), "pay")


def test_a_presence_test_on_an_unknown_entity_counts_as_possible() -> None:
    rules = [{"name": "has", "tools": ["read"], "effect": "Allow", "when": "has(resource.properties.x)"}]
    assert listed(compiled(rules, [{"name": "read", "mapping": READ_MAPPING}]), "read")


def test_a_condition_that_fails_at_run_time_counts_as_possible() -> None:
    rules = [{"name": "typo", "tools": ["*"], "effect": "Allow", "when": "subject.properties.clearance > 3"}]
    assert listed(compiled(rules), "read")


def test_a_rule_demanding_a_proven_key_lists_the_tool_for_a_bound_token_only() -> None:
    server = compiled([{"name": "bound", "tools": ["pay"], "effect": "Allow", "when": "has(context.cnf)"}])
    bound = {**ANALYST, "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}
    assert (listed(server, "pay", bound), listed(server, "pay", ANALYST)) == (True, False)


def test_glob_rules_decide_by_the_listed_name() -> None:
    rules = [{"name": "reads", "tools": ["read_*"], "effect": "Allow"}]
    server = compiled(rules)
    assert (listed(server, "read_ledger"), listed(server, "write_ledger")) == (True, False)


def test_a_tool_name_outside_the_mcp_alphabet_is_removed() -> None:
    server = compiled([{"name": "all", "tools": ["*"], "effect": "Allow"}])
    assert reason(server, "read\u0430") == "unmappable"  # a Cyrillic a: its calls can never be mapped


def test_a_token_without_a_subject_lists_nothing() -> None:
    server = compiled([{"name": "all", "tools": ["*"], "effect": "Allow"}])
    assert reason(server, "read", {"client_id": "board-agent"}) == "unmappable"


def test_an_evaluations_mapping_needs_every_request_possible() -> None:
    resource = {"type": "ledger", "id": "$params.arguments.entity"}
    mapping = {
        "evaluations": {
            "subject": {"type": "identity", "id": "$token.sub"},
            "evaluations": [
                {"action": {"name": "read"}, "resource": resource},
                {"action": {"name": "export"}, "resource": resource},
            ],
        }
    }
    rules = [{"name": "reads", "tools": ["copy"], "effect": "Allow", "when": 'action.name == "read"'}]
    assert reason(compiled(rules, [{"name": "copy", "mapping": mapping}]), "copy") == "not-allowed"


# --- the pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "reads"),
    [
        ("$token.sub", False),
        ("$params.name", False),
        ("$params.arguments.entity", True),
        ("$params.?arguments.orValue({})", True),
        ("$params.name + params.arguments.x", True),
        ("$params.names", True),
    ],
)
def test_an_expression_reads_the_arguments_when_it_uses_params_beyond_the_name(
    source: str, reads: bool
) -> None:
    mapping = {"evaluation": {"action": {"name": "read"}, "resource": {"type": "t", "id": source}}}
    server = compiled(
        [{"name": "all", "tools": ["*"], "effect": "Allow"}], [{"name": "read", "mapping": mapping}]
    )
    plan = server.mapping.tool_plan("read")
    assert not isinstance(plan, Exception) and plan.resource is not None
    assert reads_arguments(dict(plan.resource.members)["id"]) is reads


def test_a_server_decided_by_a_remote_pdp_has_no_local_catalog() -> None:
    server = board_packet()
    assert catalog_for(CompiledServer(server.server, server.mapping, OFFLINE, ()), ANALYST) is None
