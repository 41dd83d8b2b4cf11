"""Mesh wiring (callwarden/operator/mesh.py): the objects the operator writes per McpServer, and the
enforcement coverage it reports in `status.enforcement`.

Against the real API server, with the operator's RBAC exactly as the chart renders it for the mode.
Istio's AuthorizationPolicy, Envoy Gateway's SecurityPolicy and Gateway API's HTTPRoute are served
by tests/fixtures/mesh-crds/: minimal structural CRDs (spec preserved, not validated) that stand in
for the real CRDs, which cannot be downloaded here. What they check is group/version/kind, scope,
ownerReferences, labels, RBAC and that the API server stores what the operator sends.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from callwarden.kube.client import Kube, new_api_client
from callwarden.operator.mesh import (
    MeshOptions,
    MeshWiring,
    desired_object,
    istio_coverage,
    selector_labels,
)
from callwarden.policy.loader import config_from_objects
from callwarden.policy.model import McpServer
from tests.support.operator import (
    ROOT,
    SYSTEM_NAMESPACE,
    OperatorProcess,
    admin_api,
    get_object,
    install_crds,
    namespace_object,
    server_object,
    wait_for,
)
from tests.support.snapshots import assert_snapshot

if TYPE_CHECKING:  # pytest_plugins imports it first, for assert rewriting
    from tests.support.kube import Kube as KubeEnv

pytest_plugins = ("tests.support.kube",)

CHART: Final = ROOT / "charts" / "callwarden"
MESH_CRDS: Final = ROOT / "tests" / "fixtures" / "mesh-crds"
JWKS: Final = "https://issuer.example/jwks.json"
ISSUER: Final = "https://issuer.example"
RBAC_KINDS: Final = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
ISTIO = MeshOptions(mode="istio", istio_provider="callwarden-ext-authz")
ENVOY_GATEWAY = MeshOptions(
    mode="envoy-gateway", extauthz_service="callwarden-extauthz.callwarden-system.svc.cluster.local:9001"
)
_names = itertools.count()


def selected_server(namespace: str, name: str = "finance", **extra: Any) -> dict[str, Any]:
    return server_object(
        namespace,
        name,
        JWKS,
        ISSUER,
        workloadSelector={"matchLabels": {"app": name}},
        **extra,
    )


def model(obj: dict[str, Any]) -> McpServer:
    (server,) = config_from_objects([obj]).servers.values()
    return server


def pod(
    namespace: str, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "server", "image": "example.invalid/mcp:1"}]},
    }


# --- Pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"matchLabels": {"app": "finance"}}, {"app": "finance"}),
        ({"app": "finance", "tier": "mcp"}, {"app": "finance", "tier": "mcp"}),
        (None, None),
        ({}, None),
        ({"matchLabels": {}}, None),
        ({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]}, None),
        ({"matchLabels": {"app": 1}}, None),
        ({"matchLabels": ["app"]}, None),
        ({"app": {"nested": "x"}}, None),
    ],
    ids=[
        "matchLabels",
        "plain-labels",
        "none",
        "empty",
        "empty-matchLabels",
        "matchExpressions",
        "non-string-value",
        "list",
        "nested",
    ],
)
def test_selector_labels_accepts_only_plain_label_maps(
    selector: dict[str, Any] | None, expected: dict[str, str] | None
) -> None:
    assert selector_labels(selector) == expected


SIDECAR = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}


@pytest.mark.parametrize(
    ("pods", "namespace_labels", "covered"),
    [
        ([pod("ns", "a", {}, SIDECAR), pod("ns", "b", {}, SIDECAR)], {}, True),
        ([pod("ns", "a", {}, SIDECAR), pod("ns", "b", {})], {}, False),
        ([pod("ns", "a", {})], {"istio.io/dataplane-mode": "ambient"}, True),
        ([pod("ns", "a", {"istio.io/dataplane-mode": "ambient"})], {}, True),
        ([], {"istio.io/dataplane-mode": "ambient"}, False),
        ([pod("ns", "a", {"istio.io/dataplane-mode": "none"})], {}, False),
    ],
    ids=["all-sidecars", "one-bare-pod", "ambient-namespace", "ambient-pod", "no-pods", "opted-out-pod"],
)
def test_istio_coverage_needs_an_envoy_in_front_of_every_selected_pod(
    pods: list[dict[str, Any]], namespace_labels: dict[str, str], covered: bool
) -> None:
    assert istio_coverage(pods, namespace_labels)[0] is covered


def test_istio_coverage_names_the_pods_without_a_sidecar() -> None:
    _, reason = istio_coverage([pod("ns", "a", {}, SIDECAR), pod("ns", "bare-1", {})], {})
    assert reason == "1 of 2 pod(s) have no Istio sidecar: bare-1"


def test_istio_authorization_policy_matches_its_snapshot() -> None:
    obj = selected_server("board-packet")
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    assert_snapshot("mesh-istio-authorizationpolicy", [desired_object(ISTIO, obj, model(obj)) or {}])


def test_envoy_gateway_security_policy_matches_its_snapshot() -> None:
    obj = selected_server("board-packet")
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    assert_snapshot(
        "mesh-envoy-gateway-securitypolicy", [desired_object(ENVOY_GATEWAY, obj, model(obj)) or {}]
    )


def test_security_policy_targets_the_httproute_named_by_the_annotation() -> None:
    obj = selected_server("board-packet")
    obj["metadata"]["annotations"] = {"callwarden.io/httproute": "mcp-route"}
    policy = desired_object(ENVOY_GATEWAY, obj, model(obj))
    assert policy is not None
    assert policy["spec"]["targetRefs"][0]["name"] == "mcp-route"


def test_security_policy_forwards_the_body_up_to_the_servers_limit() -> None:
    obj = selected_server("board-packet", maxRequestBytes=65536)
    policy = desired_object(ENVOY_GATEWAY, obj, model(obj))
    assert policy is not None
    assert policy["spec"]["extAuth"]["bodyToExtAuth"] == {"maxRequestBytes": 65536}
    assert policy["spec"]["extAuth"]["failOpen"] is False


def test_unknown_mesh_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mesh mode must be one of"):
        MeshOptions(mode="linkerd")


# --- Against the API server ------------------------------------------------------------------------


def chart_rbac_kubeconfig(kube: KubeEnv, release: str, mode: str) -> Path:
    """The operator's ServiceAccount and RBAC exactly as the chart renders them for `mode`."""
    rendered = kube.run_helm(
        "template", release, str(CHART), "--namespace", SYSTEM_NAMESPACE, "--set", f"mesh.mode={mode}"
    ).stdout
    rbac = [
        o
        for o in yaml.safe_load_all(rendered)
        if o
        and o["kind"] in RBAC_KINDS
        and o["metadata"]["name"].startswith(f"{release}-callwarden-operator")
    ]
    kube.apply(namespace_object(SYSTEM_NAMESPACE), *rbac)
    return kube.service_account_kubeconfig(SYSTEM_NAMESPACE, f"{release}-callwarden-operator")


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv) -> KubeEnv:
    install_crds(kube)
    install_crds(kube, MESH_CRDS)
    return kube


@pytest.fixture(scope="module")
def istio_operator(cluster: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    kubeconfig = chart_rbac_kubeconfig(cluster, "istiomesh", "istio")
    operator = OperatorProcess(
        kubeconfig, tmp_path_factory.mktemp("mesh"), identity="mesh", lease_name="mesh-tests"
    )
    operator.argv += ["--mesh=istio", "--istio-provider=callwarden-ext-authz"]
    with operator:
        operator.wait_for_log("is now the leader")
        yield operator


def fresh_namespace(kube: KubeEnv, labels: dict[str, str] | None = None) -> str:
    namespace = f"mesh-{next(_names)}"
    kube.apply({**namespace_object(namespace), "metadata": {"name": namespace, "labels": labels or {}}})
    return namespace


def authorization_policy(api: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: Any = api.custom.get_namespaced_custom_object(
            "security.istio.io", "v1", namespace, "authorizationpolicies", name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    result: dict[str, Any] = found
    return result


def enforcement(api: Kube, namespace: str, name: str = "finance") -> dict[str, Any] | None:
    obj = get_object(api, "mcpservers", namespace, name)
    found: dict[str, Any] | None = ((obj or {}).get("status") or {}).get("enforcement")
    return found


def test_operator_writes_an_authorization_policy_owned_by_the_mcpserver(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(selected_server(namespace))
    policy = wait_for(
        lambda: authorization_policy(api, namespace, "callwarden-finance"), what="AuthorizationPolicy"
    )
    server = get_object(api, "mcpservers", namespace, "finance")
    assert server is not None
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"] == {"name": "callwarden-ext-authz"}
    assert policy["spec"]["selector"] == {"matchLabels": {"app": "finance"}}
    assert [(o["kind"], o["name"], o["uid"]) for o in policy["metadata"]["ownerReferences"]] == [
        ("McpServer", "finance", server["metadata"]["uid"])
    ]


def test_pods_with_sidecars_make_the_server_covered(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(pod(namespace, "finance-0", {"app": "finance"}, SIDECAR), selected_server(namespace))
    status = wait_for(lambda: (enforcement(api, namespace) or {}).get("covered"), what="covered")
    assert status is True
    assert enforcement(api, namespace) == {
        "mode": "istio",
        "covered": True,
        "reason": "AuthorizationPolicy callwarden-finance: 1 pod(s) selected, each with an Istio sidecar",
    }


def test_a_pod_without_a_sidecar_makes_the_server_not_covered(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(
        pod(namespace, "finance-0", {"app": "finance"}, SIDECAR),
        pod(namespace, "finance-bare", {"app": "finance"}),
        selected_server(namespace),
    )
    found = wait_for(lambda: enforcement(api, namespace), what="status.enforcement")
    assert found["covered"] is False
    assert "finance-bare" in found["reason"]


def test_an_ambient_namespace_makes_the_server_covered(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api = admin_api(cluster)
    namespace = fresh_namespace(cluster, {"istio.io/dataplane-mode": "ambient"})
    cluster.apply(pod(namespace, "finance-0", {"app": "finance"}), selected_server(namespace))
    assert wait_for(lambda: (enforcement(api, namespace) or {}).get("covered"), what="covered") is True


def test_enforced_printer_column_shows_coverage(cluster: KubeEnv, istio_operator: OperatorProcess) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(pod(namespace, "finance-0", {"app": "finance"}, SIDECAR), selected_server(namespace))
    wait_for(lambda: (enforcement(api, namespace) or {}).get("covered"), what="covered")
    table = cluster.kubectl("get", "mcpservers", "-n", namespace).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert row[header.index("ENFORCED")] == "true"


def test_a_server_without_a_workload_selector_gets_no_policy_and_is_not_covered(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(server_object(namespace, "finance", JWKS, ISSUER))
    found = wait_for(lambda: enforcement(api, namespace), what="status.enforcement")
    assert found["covered"] is False
    assert "workloadSelector" in found["reason"]
    assert authorization_policy(api, namespace, "callwarden-finance") is None


def test_deleting_the_mcpserver_removes_its_authorization_policy(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(selected_server(namespace))
    wait_for(lambda: authorization_policy(api, namespace, "callwarden-finance"), what="AuthorizationPolicy")
    cluster.kubectl("delete", "mcpserver", "finance", "-n", namespace)
    wait_for(
        lambda: authorization_policy(api, namespace, "callwarden-finance") is None,
        what="AuthorizationPolicy gone",
    )


def test_removing_the_workload_selector_removes_the_authorization_policy(
    cluster: KubeEnv, istio_operator: OperatorProcess
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(selected_server(namespace))
    wait_for(lambda: authorization_policy(api, namespace, "callwarden-finance"), what="AuthorizationPolicy")
    cluster.kubectl(
        "patch", "mcpserver", "finance", "-n", namespace, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/workloadSelector"}]',
    )  # fmt: skip
    wait_for(
        lambda: authorization_policy(api, namespace, "callwarden-finance") is None,
        what="AuthorizationPolicy gone",
    )


# Envoy Gateway: MeshWiring in process (a second operator would fight the Istio one over statuses),
# with the chart's envoy-gateway RBAC.


@pytest.fixture(scope="module")
def envoy_gateway_wiring(cluster: KubeEnv) -> MeshWiring:
    kubeconfig = chart_rbac_kubeconfig(cluster, "egmesh", "envoy-gateway")
    return MeshWiring(Kube(new_api_client(str(kubeconfig))), ENVOY_GATEWAY)


def live_server(api: Kube, namespace: str) -> dict[str, Any]:
    found = get_object(api, "mcpservers", namespace, "finance")
    assert found is not None
    return found


def never_fenced() -> None:
    """The guard of a replica that keeps its Lease."""


def test_envoy_gateway_security_policy_is_stored_and_covered_once_the_httproute_exists(
    cluster: KubeEnv, envoy_gateway_wiring: MeshWiring
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(selected_server(namespace))
    server = live_server(api, namespace)
    before = envoy_gateway_wiring.wire(namespace, [server], never_fenced)["finance"]
    route: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "finance", "namespace": namespace},
        "spec": {"rules": [{"backendRefs": [{"name": "finance", "port": 8000}]}]},
    }
    cluster.apply(route)
    after = envoy_gateway_wiring.wire(namespace, [server], never_fenced)["finance"]
    stored: Any = api.custom.get_namespaced_custom_object(
        "gateway.envoyproxy.io", "v1alpha1", namespace, "securitypolicies", "callwarden-finance"
    )
    assert (before["covered"], after["covered"]) == (False, True)
    assert stored["spec"]["extAuth"]["grpc"]["backendRefs"] == [
        {"name": "callwarden-extauthz", "namespace": "callwarden-system", "port": 9001}
    ]


def test_envoy_gateway_wiring_deletes_policies_of_servers_that_are_gone(
    cluster: KubeEnv, envoy_gateway_wiring: MeshWiring
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(selected_server(namespace))
    envoy_gateway_wiring.wire(namespace, [live_server(api, namespace)], never_fenced)
    envoy_gateway_wiring.wire(namespace, [], never_fenced)
    listed: Any = api.custom.list_namespaced_custom_object(
        "gateway.envoyproxy.io", "v1alpha1", namespace, "securitypolicies"
    )
    assert listed["items"] == []


def test_a_mesh_api_error_is_reported_as_not_covered_not_raised(
    cluster: KubeEnv, envoy_gateway_wiring: MeshWiring
) -> None:
    api, namespace = admin_api(cluster), fresh_namespace(cluster)
    cluster.apply(selected_server(namespace))
    # The envoy-gateway RBAC may not list AuthorizationPolicies: the API answers 403.
    wiring = MeshWiring(envoy_gateway_wiring.kube, ISTIO)
    result = wiring.wire(namespace, [live_server(api, namespace)], never_fenced)["finance"]
    assert result["covered"] is False
    assert result["reason"].startswith("cannot list AuthorizationPolicy objects: HTTP 403")
