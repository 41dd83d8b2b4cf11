"""Mapping discovery against a real kube-apiserver and a real MCP server (official SDK).

The operator's identity has exactly deploy/rbac/operator.yaml, plus, per test namespace, the
RoleBinding of ClusterRole callwarden-operator-discovery that a namespace opting into discovery
creates. Each step runs one discovery attempt (`Discoverer.discover`) and one reconcile, so a test
sees their effect on the McpServer's status and its bundle ConfigMaps; the last test runs the whole
`callwarden operator`, which discovers on its own.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from callwarden.kube.bundles import DATA_KEY, assemble, merge_objects, read_shard
from callwarden.kube.client import Kube
from callwarden.operator.discovery import Discoverer, Target
from callwarden.operator.pinning import DiscoveryLimits
from callwarden.operator.reconcile import Reconciler
from callwarden.policy.bundle import compile_bundle
from callwarden.policy.loader import config_from_objects
from callwarden.policy.mapping import AuthorizationRequests
from callwarden.policy.mapping.digest import mapping_sha256
from tests.support.declaring_server import DeclaringServer, finance_mapping
from tests.support.operator import (
    RESOURCE,
    SYSTEM_NAMESPACE,
    OperatorProcess,
    bundle_configmaps,
    condition,
    events_for,
    get_object,
    namespace_object,
    policy_object,
    rule,
    server_object,
    wait_for,
)

if TYPE_CHECKING:  # pytest_plugins imports it first, for assert rewriting
    from tests.support.kube import Kube as KubeEnv

pytest_plugins = ("tests.support.kube", "tests.support.operator_fixtures")

TOKEN = "discovery-token-1"
ISSUER = "https://issuer.example"
TOOL = "query_financials"
CLAIMS = {"sub": "alice", "client_id": "board-agent", "iss": ISSUER, "aud": RESOURCE}
CALL = {"name": TOOL, "arguments": {"period": "2026-Q3", "entity": "acme"}}
_names = itertools.count()


@pytest.fixture
def mcp() -> Iterator[DeclaringServer]:
    with DeclaringServer(token=TOKEN) as server:
        server.declare(TOOL, finance_mapping())
        yield server


@pytest.fixture
def namespace(kube: KubeEnv) -> str:
    """A namespace that opted into discovery: the Secret, and the RoleBinding that lets the operator
    read Secrets here (deploy/rbac/operator.yaml grants nothing by itself)."""
    name = f"discovery-{next(_names)}"
    kube.apply(namespace_object(name), secret(name, TOKEN), discovery_binding(name))
    return name


@pytest.fixture
def discoverer(operator_api: Kube) -> Discoverer:
    return Discoverer(operator_api, limits=DiscoveryLimits(timeout_seconds=5))


@pytest.fixture
def step(
    operator_api: Kube, admin: Kube, discoverer: Discoverer, namespace: str
) -> Callable[[], dict[str, Any]]:
    """One discovery attempt and one reconcile; the McpServer as they left it."""
    reconciler = Reconciler(operator_api, is_leader=lambda: True, identity="test", discoverer=discoverer)

    def run() -> dict[str, Any]:
        reconciler.reconcile_namespace(namespace)  # tracks the server: what discovery must reach
        target = Target.of(get_object(admin, "mcpservers", namespace, "finance") or {})
        assert target is not None
        discoverer.discover(target)
        reconciler.reconcile_namespace(namespace)
        return get_object(admin, "mcpservers", namespace, "finance") or {}

    return run


def secret(namespace: str, token: str, name: str = "finance-discovery") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def discovery_binding(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "callwarden-operator-discovery", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "callwarden-operator-discovery",
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "callwarden-operator", "namespace": SYSTEM_NAMESPACE}
        ],
    }


def finance(
    namespace: str, url: str, accepted: str | None = None, credential: str = "finance-discovery"
) -> dict[str, Any]:
    tools = [{"name": TOOL, "acceptedMappingHash": accepted}] if accepted else []
    return server_object(
        namespace,
        "finance",
        "http://127.0.0.1:9/jwks.json",
        ISSUER,
        tools=tools,
        discovery={"url": url, "credentialSecretRef": {"name": credential, "key": "token"}},
    )


def ledger_policy(namespace: str) -> dict[str, Any]:
    return policy_object(
        namespace, "ledgers", [rule("read-ledgers", "Allow", when="resource.type == 'ledger'")]
    )


def tool_status(server: dict[str, Any], name: str = TOOL) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in server["status"]["tools"] if t["name"] == name)
    return found


def published_declared(admin: Kube, namespace: str) -> dict[str, Any] | None:
    """The declared object of the tool in the McpServer's published bundle, if any."""
    configmaps = bundle_configmaps(admin, namespace)
    if not configmaps:
        return None
    server = json.loads(configmaps[0]["data"][DATA_KEY])[0]
    tools = server["spec"].get("tools") or []
    return next((t.get("declared") for t in tools if t["name"] == TOOL), None)


def decide(admin: Kube, namespace: str) -> tuple[str, bool]:
    """What ext_authz would do with a tools/call on the published ConfigMaps: (resource type, allowed)."""
    bundles, _ = assemble(read_shard(cm) for cm in bundle_configmaps(admin, namespace))
    compiled = compile_bundle(config_from_objects(merge_objects(bundles.values())))
    server = compiled.servers[f"{namespace}/finance"]
    mapped = server.mapping.map("tools/call", CALL, CLAIMS)
    assert isinstance(mapped, AuthorizationRequests)
    (request,) = mapped.requests
    return request["resource"]["type"], server.pdp.evaluate(request).allowed


HASH = mapping_sha256(finance_mapping())
CHANGED = finance_mapping(resource_type="any-ledger")


def test_a_declared_mapping_is_reported_with_its_hash_and_not_enforced_before_it_is_accepted(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(finance(namespace, mcp.url))
    server = step()
    assert tool_status(server) == {
        "name": TOOL,
        "source": "default",
        "sha256": tool_status(server)["sha256"],
        "declaredMappingHash": HASH,
        "accepted": False,
    }
    changed = condition(server, "MappingChanged") or {}
    assert (changed["status"], changed["reason"]) == ("True", "MappingNotAccepted")
    assert HASH in changed["message"]
    assert (condition(server, "Discovered") or {}).get("reason") == "ToolsListed"
    assert published_declared(admin, namespace) is None


def test_a_mapping_not_yet_accepted_is_announced_by_a_warning_event(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(finance(namespace, mcp.url))
    step()
    events = [e for e in events_for(admin, namespace, "finance") if e["reason"] == "MappingNotAccepted"]
    assert [e["type"] for e in events] == ["Warning"]
    assert HASH in events[0]["message"]


def test_an_accepted_hash_puts_the_declared_mapping_in_the_bundle_and_decisions_follow_it(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(finance(namespace, mcp.url), ledger_policy(namespace))
    step()
    assert decide(admin, namespace) == ("tool", False)  # the default mapping: no rule allows it
    kube.apply(finance(namespace, mcp.url, accepted=HASH))
    server = step()
    declared = published_declared(admin, namespace) or {}
    assert declared["inputSchema"] == {"x-authzen-mapping": finance_mapping()}
    assert tool_status(server) | {"source": "declared", "sha256": HASH, "accepted": True} == tool_status(
        server
    )
    assert (condition(server, "MappingChanged") or {}).get("status") == "False"
    assert decide(admin, namespace) == ("ledger", True)


def test_a_changed_mapping_raises_mapping_changed_and_the_accepted_one_stays_enforced(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(finance(namespace, mcp.url, accepted=HASH))
    step()
    mcp.declare(TOOL, CHANGED)
    server = step()
    changed = condition(server, "MappingChanged") or {}
    assert (changed["status"], changed["reason"]) == ("True", "MappingNotAccepted")
    assert mapping_sha256(CHANGED) in changed["message"]
    assert tool_status(server)["declaredMappingHash"] == mapping_sha256(CHANGED)
    assert tool_status(server)["sha256"] == HASH  # still enforced
    assert (published_declared(admin, namespace) or {})["inputSchema"] == {
        "x-authzen-mapping": finance_mapping()
    }


def test_an_invalid_declared_mapping_is_reported_and_never_enforced_even_when_accepted(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    invalid = {"evaluation": {"resource": {"type": "ledger", "id": "$params.arguments.entity +"}}}
    mcp.declare(TOOL, invalid)
    kube.apply(finance(namespace, mcp.url, accepted=mapping_sha256(invalid)))
    server = step()
    assert "params.arguments.entity +" in tool_status(server)["error"]
    assert tool_status(server)["source"] == "default"
    assert (condition(server, "MappingChanged") or {}).get("reason") == "MappingInvalid"
    assert (condition(server) or {}).get("status") == "True"  # the server itself stays published
    assert published_declared(admin, namespace) is None


def test_a_missing_secret_is_a_condition_with_a_clear_reason(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(finance(namespace, mcp.url, credential="nowhere"))
    server = step()
    discovered = condition(server, "Discovered") or {}
    assert (discovered["status"], discovered["reason"]) == ("False", "CredentialMissing")
    assert f"Secret {namespace}/nowhere does not exist" in discovered["message"]
    assert (condition(server) or {}).get("status") == "True"


def test_a_namespace_without_the_rolebinding_keeps_its_secrets_from_the_operator(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.kubectl("delete", "rolebinding", "callwarden-operator-discovery", "-n", namespace)
    kube.apply(finance(namespace, mcp.url))
    discovered = condition(step(), "Discovered") or {}
    assert (discovered["status"], discovered["reason"]) == ("False", "CredentialForbidden")
    assert "callwarden-operator-discovery" in discovered["message"]


def test_a_token_the_server_refuses_is_reported_as_rejected(
    kube: KubeEnv, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(secret(namespace, "not-the-token"), finance(namespace, mcp.url))
    discovered = condition(step(), "Discovered") or {}
    assert (discovered["status"], discovered["reason"]) == ("False", "CredentialRejected")
    assert "HTTP 401" in discovered["message"]


def test_a_server_that_goes_down_keeps_the_last_listing_and_its_enforced_mapping(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, step: Callable[[], dict[str, Any]]
) -> None:
    kube.apply(finance(namespace, mcp.url, accepted=HASH))
    step()
    mcp.stop()
    server = step()
    discovered = condition(server, "Discovered") or {}
    assert (discovered["status"], discovered["reason"]) == ("False", "ServerUnreachable")
    assert "keeping the listing of" in discovered["message"]
    assert tool_status(server)["declaredMappingHash"] == HASH
    assert published_declared(admin, namespace) is not None


def test_a_listing_over_the_size_bound_is_rejected(
    kube: KubeEnv, operator_api: Kube, admin: Kube, namespace: str, mcp: DeclaringServer
) -> None:
    small = Discoverer(operator_api, limits=DiscoveryLimits(timeout_seconds=5, max_response_bytes=512))
    reconciler = Reconciler(operator_api, is_leader=lambda: True, identity="test", discoverer=small)
    kube.apply(finance(namespace, mcp.url))
    reconciler.reconcile_namespace(namespace)
    target = Target.of(get_object(admin, "mcpservers", namespace, "finance") or {})
    assert target is not None
    result = small.discover(target)
    assert result.problem is not None
    assert result.problem[0] == "ListingRejected"
    assert "larger than 512 bytes" in result.problem[1]


@pytest.fixture
def operator(operator_kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(
        operator_kubeconfig, tmp_path, identity="discovery", lease_name="discovery"
    ) as running:
        yield running


def test_the_operator_discovers_on_its_own_and_enforces_once_accepted(
    kube: KubeEnv, admin: Kube, namespace: str, mcp: DeclaringServer, operator: OperatorProcess
) -> None:
    kube.apply(finance(namespace, mcp.url))

    def listed() -> dict[str, Any] | None:
        server = get_object(admin, "mcpservers", namespace, "finance") or {}
        tools = (server.get("status") or {}).get("tools") or []
        return server if any(t.get("declaredMappingHash") == HASH for t in tools) else None

    wait_for(listed, what=f"the discovered mapping in status.tools ({operator.log_path})")
    kube.apply(finance(namespace, mcp.url, accepted=HASH))
    wait_for(lambda: published_declared(admin, namespace), what="the accepted mapping in the bundle")
