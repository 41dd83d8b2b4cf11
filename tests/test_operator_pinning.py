"""pinning: reading an untrusted tools/list, and which declared mappings a bundle may carry."""

from __future__ import annotations

from typing import Any

import pytest

from callwarden.operator.pinning import (
    DiscoveredTool,
    DiscoveryLimits,
    DiscoveryResult,
    ListingRejected,
    pin,
    read_listing,
)
from callwarden.policy.mapping.digest import mapping_sha256
from callwarden.policy.model import McpServer

LIMITS = DiscoveryLimits(max_tools=3, max_mapping_bytes=256)
MAPPING = {
    "evaluation": {
        "action": {"name": "read"},
        "resource": {"type": "ledger", "id": "$params.arguments.entity"},
    }
}
HASH = mapping_sha256(MAPPING)
URL = "http://finance.svc/mcp"


def tool(name: Any = "query", **schema: Any) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object", **schema}}


def server(*tools: dict[str, Any]) -> McpServer:
    return McpServer.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "McpServer",
            "metadata": {"name": "finance", "namespace": "ns"},
            "spec": {
                "resource": "https://mcp.example.com",
                "issuers": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks"}],
                "tools": list(tools),
                "discovery": {"url": URL, "credentialSecretRef": {"name": "s", "key": "token"}},
            },
        }
    )


def source(model: McpServer) -> dict[str, Any]:
    return {
        "kind": "McpServer",
        "spec": model.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"],
    }


def declared_of(pinned: dict[str, Any], name: str = "query") -> Any:
    return next((t.get("declared") for t in pinned["spec"]["tools"] if t["name"] == name), None)


def declaring(mapping: Any = MAPPING) -> DiscoveryResult:
    """A listing of one tool, `query`, that declares `mapping`."""
    return listed(tool(**{"x-authzen-mapping": mapping}))


def listed(*tools: dict[str, Any]) -> DiscoveryResult:
    return DiscoveryResult(URL, read_listing(list(tools), LIMITS), "2026-11-01T00:00:00Z")


def test_a_declared_mapping_is_pinned_by_the_hash_of_its_canonical_json() -> None:
    (found,) = read_listing([tool(**{"x-authzen-mapping": MAPPING}, description="ignored")], LIMITS)
    assert found == DiscoveredTool(
        "query", {"name": "query", "inputSchema": {"x-authzen-mapping": MAPPING}}, HASH, None
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(tool("bad name"), "not a valid MCP tool name", id="space-in-name"),
        pytest.param(tool("qu\u0435ry"), "not a valid MCP tool name", id="cyrillic-lookalike"),
        pytest.param(tool(7), "not a valid MCP tool name", id="name-not-a-string"),
        pytest.param(tool("x" * 129), "not a valid MCP tool name", id="name-too-long"),
        pytest.param("query", "not a valid MCP tool name", id="tool-not-an-object"),
        pytest.param(
            tool(**{"x-authzen-mapping": {"evaluation": {"context": {"pad": "x" * 300}}}}),
            "over the 256-byte limit",
            id="oversized-mapping",
        ),
    ],
)
def test_a_malformed_tool_is_kept_with_its_problem_and_no_mapping(raw: Any, problem: str) -> None:
    (found,) = read_listing([raw], LIMITS)
    assert found.declared is None
    assert problem in (found.problem or "")


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        pytest.param([tool(f"t{i}") for i in range(4)], "more than 3 tools", id="too-many"),
        pytest.param([tool("query"), tool("query")], "listed twice", id="duplicate-names"),
    ],
)
def test_a_listing_that_breaks_the_rules_is_rejected_whole(tools: list[Any], message: str) -> None:
    with pytest.raises(ListingRejected, match=message):
        read_listing(tools, LIMITS)


def test_an_unaccepted_mapping_is_not_written_into_the_bundle() -> None:
    model = server({"name": "query"})
    pinned = pin(model, source(model), declaring(), None, {})
    assert declared_of(pinned.source) is None


def test_an_accepted_mapping_is_written_into_the_bundle() -> None:
    model = server({"name": "query", "acceptedMappingHash": HASH})
    pinned = pin(model, source(model), declaring(), None, {})
    assert declared_of(pinned.source) == {"name": "query", "inputSchema": {"x-authzen-mapping": MAPPING}}


def test_before_the_first_listing_the_published_accepted_mapping_stays() -> None:
    model = server({"name": "query", "acceptedMappingHash": HASH})
    published = pin(model, source(model), declaring(), None, {}).source
    after_restart = pin(model, source(model), None, published, {})
    assert declared_of(after_restart.source) == declared_of(published)


def test_a_published_mapping_whose_hash_is_no_longer_accepted_is_dropped() -> None:
    accepted = server({"name": "query", "acceptedMappingHash": HASH})
    published = pin(accepted, source(accepted), declaring(), None, {}).source
    other = server({"name": "query", "acceptedMappingHash": "0" * 64})
    assert declared_of(pin(other, source(other), None, published, {}).source) is None


def test_the_platform_declared_object_is_never_overwritten_by_discovery() -> None:
    own = {"name": "query", "inputSchema": {"x-authzen-mapping": {"evaluation": {}}}}
    model = server({"name": "query", "declared": own, "acceptedMappingHash": HASH})
    pinned = pin(model, source(model), declaring(), None, {})
    assert declared_of(pinned.source) == own


def test_pinning_leaves_the_live_spec_untouched() -> None:
    model = server({"name": "query", "acceptedMappingHash": HASH})
    live = source(model)
    pin(model, live, declaring(), None, {})
    assert declared_of(live) is None
