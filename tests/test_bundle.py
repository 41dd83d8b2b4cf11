"""policy.bundle: compiling configuration for replicas, and routing a request to its McpServer."""

from __future__ import annotations

from typing import Any

import pytest

from callwarden.policy.bundle import Bundle, BundleError, compile_bundle
from callwarden.policy.loader import config_from_objects

ISSUER = {"issuer": "https://issuer.test", "jwksUri": "https://issuer.test/jwks"}


def server(name: str, hosts: list[str], prefix: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "McpServer",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "resource": f"https://{name}.test/mcp",
            "route": {"hosts": hosts, "pathPrefix": prefix},
            "issuers": [ISSUER],
            **spec,
        },
    }


def policy(name: str, rules: list[dict[str, Any]], targets: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "ToolPolicy",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"targets": targets or ["*"], "rules": rules},
    }


ALLOW_ALL = {"name": "all", "tools": ["*"], "effect": "Allow"}


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    objects = [
        server("finance", ["finance.example"], "/mcp"),
        server("finance-admin", ["finance.example"], "/mcp/admin"),
        server("anyhost", [], "/shared"),
        server("withport", ["ports.example:8443"], "/"),
        policy("open", [ALLOW_ALL]),
    ]
    return compile_bundle(config_from_objects(objects))


@pytest.mark.parametrize(
    ("authority", "path", "expected"),
    [
        pytest.param("finance.example", "/mcp", "ns/finance", id="exact-prefix"),
        pytest.param("finance.example:443", "/mcp", "ns/finance", id="host-with-port"),
        pytest.param("FINANCE.example", "/mcp", "ns/finance", id="host-case-insensitive"),
        pytest.param("finance.example", "/mcp/admin/x", "ns/finance-admin", id="longest-prefix-wins"),
        pytest.param("finance.example", "/mcp?x=1", "ns/finance", id="query-ignored"),
        pytest.param("finance.example", "/mcpx", None, id="prefix-is-path-segment"),
        pytest.param("other.example", "/mcp", None, id="unknown-host"),
        pytest.param("whatever.example", "/shared/mcp", "ns/anyhost", id="route-without-hosts"),
        pytest.param("ports.example:8443", "/anything", "ns/withport", id="host-port-listed"),
        pytest.param("ports.example:9000", "/anything", None, id="other-port-not-listed"),
    ],
)
def test_route_selects_the_server(bundle: Bundle, authority: str, path: str, expected: str | None) -> None:
    routed = bundle.route(authority, path)
    assert (routed.key if routed else None) == expected


def test_find_accepts_key_or_unambiguous_name(bundle: Bundle) -> None:
    assert bundle.find("ns/finance") is bundle.servers["ns/finance"]
    assert bundle.find("finance") is bundle.servers["ns/finance"]
    assert bundle.find("missing") is None


def test_a_policy_that_does_not_compile_rejects_the_whole_bundle() -> None:
    bad = {"name": "deny-bad", "tools": ["*"], "effect": "Deny", "when": "subject.id =="}
    objects = [server("finance", [], "/mcp"), policy("open", [ALLOW_ALL]), policy("broken", [bad])]
    with pytest.raises(BundleError) as caught:
        compile_bundle(config_from_objects(objects))
    assert any("subject.id ==" in problem for problem in caught.value.problems)


def test_a_tool_mapping_that_does_not_compile_is_a_problem_not_a_failure() -> None:
    tools = [{"name": "lookup", "mapping": {"evaluation": {"resource": {"type": "x", "id": "$params.("}}}}]
    objects = [server("finance", [], "/mcp", tools=tools), policy("open", [ALLOW_ALL])]
    compiled = compile_bundle(config_from_objects(objects))
    assert compiled.problems and "lookup" in compiled.problems[0]


def test_policies_only_reach_the_servers_they_target() -> None:
    objects = [
        server("finance", [], "/finance"),
        server("documents", [], "/documents"),
        policy("finance-only", [ALLOW_ALL], targets=["finance"]),
    ]
    compiled = compile_bundle(config_from_objects(objects))
    assert compiled.servers["ns/finance"].policies == ("ns/finance-only",)
    assert compiled.servers["ns/documents"].policies == ()


def test_revision_is_the_configuration_content_address() -> None:
    objects = [server("finance", [], "/mcp"), policy("open", [ALLOW_ALL])]
    first = compile_bundle(config_from_objects(objects))
    again = compile_bundle(config_from_objects(list(reversed(objects))))
    moved = [server("finance", [], "/mcp2"), policy("open", [ALLOW_ALL])]
    changed = compile_bundle(config_from_objects(moved))
    assert first.revision == again.revision != changed.revision
