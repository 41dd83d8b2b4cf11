"""examples/board-packet: the demo's configuration loads cleanly, all of its CEL compiles, and its
policies decide the scenario's cases (examples/board-packet/cases.json) as intended."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from callwarden.policy.cel import ABSENT, compile_expression
from callwarden.policy.loader import Config, load_config
from callwarden.policy.model import McpServer
from callwarden.policy.pdp import RULE_VARIABLES, check_policy, compile_pdp

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "board-packet"
MAPPING_VARIABLES = ("token", "params")
CONFIG = load_config([EXAMPLE])
CASES: list[dict[str, Any]] = json.loads((EXAMPLE / "cases.json").read_text())["cases"]


def expressions(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, CEL source) of every `$`-string in a current-binding mapping (`$$` is a literal)."""
    if isinstance(value, str) and value.startswith("$") and not value.startswith("$$"):
        yield path, value[1:]
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from expressions(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from expressions(item, f"{path}[{index}]")


MAPPING_EXPRESSIONS = [
    pytest.param(source, id=f"{server.metadata.name}/{tool.name}{path}")
    for server in CONFIG.servers.values()
    for tool in server.spec.tools
    for path, source in expressions(tool.mapping, "")
]
RULE_CONDITIONS = [
    pytest.param(rule.when, id=f"{policy.metadata.name}/{rule.name}")
    for policy in CONFIG.policies.values()
    for rule in policy.spec.rules
    if rule.when is not None
]


def test_example_loads_without_problems_or_warnings() -> None:
    assert isinstance(CONFIG, Config)
    assert sorted(CONFIG.servers) == [
        "board-packet/documents",
        "board-packet/finance",
        "board-packet/workflow",
    ]
    assert sorted(CONFIG.policies) == [
        "board-packet/board-packet-task",
        "board-packet/finance-guardrails",
        "board-packet/session",
        "board-packet/treasury",
    ]
    assert CONFIG.warnings == []


@pytest.mark.parametrize(
    ("name", "tools", "port"),
    [
        ("finance", ["query_financials", "transfer_funds"], 1),
        ("documents", ["create_doc"], 2),
        ("workflow", ["notify_reviewer"], 3),
    ],
    ids=["finance", "documents", "workflow"],
)
def test_each_server_has_its_own_issuer_resource_and_upstream(name: str, tools: list[str], port: int) -> None:
    spec = CONFIG.servers[f"board-packet/{name}"].spec
    assert spec.resource == f"https://{name}.board.example/mcp"
    assert (spec.route.hosts, spec.route.path_prefix) == ([f"{name}.board.example"], "/mcp")
    assert spec.upstream is not None and spec.upstream.url == f"http://127.0.0.1:910{port}"
    [issuer] = spec.issuers
    assert (issuer.issuer, issuer.jwks_uri) == (
        f"https://issuer.{name}.board.example",
        f"http://127.0.0.1:911{port}/jwks.json",
    )
    assert [t.name for t in spec.tools] == tools


def test_every_tool_has_a_platform_mapping_in_the_evaluation_envelope() -> None:
    tools = [tool for server in CONFIG.servers.values() for tool in server.spec.tools]
    assert tools and all(tool.mapping is not None and list(tool.mapping) == ["evaluation"] for tool in tools)


@pytest.mark.parametrize("source", MAPPING_EXPRESSIONS)
def test_mapping_expression_compiles(source: str) -> None:
    compile_expression(source, MAPPING_VARIABLES)


@pytest.mark.parametrize("source", RULE_CONDITIONS)
def test_rule_condition_compiles(source: str) -> None:
    compile_expression(source, RULE_VARIABLES)


def test_every_policy_compiles_in_the_embedded_pdp() -> None:
    assert [error for policy in CONFIG.policies.values() for error in check_policy(policy)] == []


@pytest.mark.parametrize(
    "path", sorted(EXAMPLE.glob("*/*.json")), ids=lambda path: f"{path.parent.name}/{path.name}"
)
def test_claims_and_requests_are_json_objects(path: Path) -> None:
    body = json.loads(path.read_text())
    assert isinstance(body, dict)
    if path.parent.name == "requests":
        assert body["jsonrpc"] == "2.0" and isinstance(body["id"], int) and isinstance(body["method"], str)


def test_cases_use_existing_files_and_servers() -> None:
    for case in CASES:
        assert (EXAMPLE / case["claims"]).is_file() and (EXAMPLE / case["request"]).is_file()
        assert case["server"] in CONFIG.servers and case["decision"] in ("allow", "deny")


# --- The scenario's decisions ---------------------------------------------------------------------
# Until `callwarden check` exists, the SARC request is built here the way the binding defines it
# (the tool's platform mapping, else the default mapping for the method) and decided by the real
# embedded PDP: what is under test is the example's policy, not the mapping module.


def resolve(value: Any, activation: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("$$"):
        return value[1:]
    if isinstance(value, str) and value.startswith("$"):
        return compile_expression(value[1:], MAPPING_VARIABLES).evaluate(activation)
    if isinstance(value, Mapping):
        resolved = {key: resolve(item, activation) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not ABSENT}
    return value


def sarc_request(server: McpServer, claims: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    method, params = body["method"], body.get("params", {})
    mcp = {"server": server.key, "method": method}
    mappings = {tool.name: tool.mapping for tool in server.spec.tools}
    if method == "tools/call":
        mcp["tool"] = params["name"]
        default = {"action": {"name": method}, "resource": {"type": "tool", "id": "$params.name"}}
        template = mappings.get(params["name"]) or {"evaluation": default}
    else:
        template = {
            "evaluation": {
                "action": {"name": method},
                "resource": {"type": "mcp_server", "id": server.spec.resource},
            }
        }
    request = resolve(template["evaluation"], {"token": claims, "params": params})
    request.setdefault("subject", {"type": "identity", "id": claims["sub"]})
    request.setdefault("context", {})["mcp"] = mcp
    return request


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_scenario_case_is_decided_as_expected(case: dict[str, Any]) -> None:
    server = CONFIG.servers[case["server"]]
    claims = json.loads((EXAMPLE / case["claims"]).read_text())
    body = json.loads((EXAMPLE / case["request"]).read_text())
    pdp = compile_pdp([policy for policy in CONFIG.policies.values() if policy.targets_server(server)])
    decision = pdp.evaluate(sarc_request(server, claims, body))
    assert ("allow" if decision.allowed else "deny") == case["decision"], decision.message
    if "rule" in case:
        assert case["rule"] in decision.reasons, decision.message
