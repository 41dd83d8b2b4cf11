"""The Helm chart (charts/callwarden): lint, render for every integration, and dry-run on a real API server.

Each values file under charts/callwarden/ci/ (and the defaults) is rendered with `helm template`
and sent to the test environment's kube-apiserver with `kubectl apply --dry-run=server`, which
runs the real schema validation and admission of Deployments, Services, HPAs, PDBs,
NetworkPolicies and RBAC. The objects whose content is a security decision (RBAC rules,
NetworkPolicy) are compared with snapshots in tests/snapshots/ (regenerate with
CALLWARDEN_UPDATE_SNAPSHOTS=1, see tests/support/snapshots.py).

The mesh objects the operator writes (Istio AuthorizationPolicy, Envoy Gateway SecurityPolicy) are
tested in tests/test_operator_mesh.py against tests/fixtures/mesh-crds/: minimal structural CRDs
(spec preserved, not validated) that stand in for Istio's and Envoy Gateway's real CRDs, which
cannot be downloaded here. The chart's ServiceMonitor and PodMonitor are dry-run the same way,
against the stand-ins in tests/fixtures/monitoring-crds/; the fields the Prometheus Operator acts
on (selector, port, path) are checked here against the chart's own Service and pods.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
import yaml

from callwarden.extauthz.envoy import envoy_binary
from callwarden.policy.crds import rendered_files
from tests.support.operator import ROOT, install_crds, namespace_object
from tests.support.snapshots import assert_snapshot

if TYPE_CHECKING:  # pytest_plugins imports it first, for assert rewriting
    from tests.support.kube import Kube

pytest_plugins = ("tests.support.kube",)

CHART: Final = ROOT / "charts" / "callwarden"
NAMESPACE: Final = "callwarden-system"
VARIANTS: Final = {
    "default": None,
    "istio": CHART / "ci" / "istio-values.yaml",
    "envoy-gateway": CHART / "ci" / "envoy-gateway-values.yaml",
    "gateway": CHART / "ci" / "gateway-values.yaml",
    "tls": CHART / "ci" / "tls-values.yaml",
    "kind": ROOT / "e2e" / "kind" / "values.yaml",  # what e2e/kind.sh installs
    "servicemonitor": CHART / "ci" / "servicemonitor-values.yaml",
    "podmonitor": CHART / "ci" / "podmonitor-values.yaml",
}
MONITORING_CRDS: Final = ROOT / "tests" / "fixtures" / "monitoring-crds"  # structural stand-ins
MONITOR_KINDS: Final = ("ServiceMonitor", "PodMonitor")
SECURITY_KINDS: Final = ("ClusterRole", "Role", "NetworkPolicy")


def helm_template(kube: Kube, values: Path | None, *extra: str, check: bool = True) -> str:
    args = ["template", "callwarden", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    return kube.run_helm(*args, *extra, check=check).stdout


def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module")
def rendered(kube: Kube) -> dict[str, list[dict[str, Any]]]:
    return {name: objects(helm_template(kube, values)) for name, values in VARIANTS.items()}


@pytest.fixture(scope="module")
def cluster(kube: Kube) -> Kube:
    """CRDs installed first (the chart's crds/ are the same files, the monitors' are stand-ins),
    and the namespaces it uses."""
    install_crds(kube)
    install_crds(kube, MONITORING_CRDS)
    kube.apply(namespace_object(NAMESPACE), namespace_object("board-packet"))
    return kube


def of_kind(found: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in found
        if o["kind"] == kind
        and (component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]


def test_helm_lint_passes_in_strict_mode(kube: Kube) -> None:
    result = kube.run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "default"], ids=str)
def test_helm_lint_passes_with_each_integration(kube: Kube, variant: str) -> None:
    kube.run_helm("lint", "--strict", str(CHART), "--values", str(VARIANTS[variant]))


def test_chart_crds_are_exactly_the_generated_crds() -> None:
    in_chart = {path.name: path.read_text() for path in (CHART / "crds").glob("*.yaml")}
    assert in_chart == rendered_files(), "run: python -m callwarden.policy.crds charts/callwarden/crds"


@pytest.mark.parametrize("variant", list(VARIANTS), ids=str)
def test_rendered_chart_is_accepted_by_the_api_server_dry_run(
    cluster: Kube, rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    documents = yaml.safe_dump_all(rendered[variant], sort_keys=False)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=documents)
    assert result.stdout.count("(server dry run)") == len(rendered[variant])


def test_kind_runner_manifest_is_accepted_by_the_api_server_dry_run(cluster: Kube) -> None:
    manifest = ROOT / "e2e" / "kind" / "runner.yaml"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert result.stdout.count("(server dry run)") == len(objects(manifest.read_text()))


@pytest.mark.parametrize("variant", list(VARIANTS), ids=str)
def test_rbac_and_network_policy_match_their_snapshot(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    chosen = [o for o in rendered[variant] if o["kind"] in SECURITY_KINDS]
    assert_snapshot(f"chart-{variant}", sorted(chosen, key=lambda o: (o["kind"], o["metadata"]["name"])))


@pytest.mark.parametrize("component", ["operator", "extauthz"], ids=str)
def test_chart_rbac_without_a_mesh_is_the_tested_least_privilege_rbac(
    rendered: dict[str, list[dict[str, Any]]], component: str
) -> None:
    """The release `callwarden` names its objects as deploy/rbac/ does, so they compare by name."""
    reference = objects((ROOT / "deploy" / "rbac" / f"{component}.yaml").read_text())

    def rules(found: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        return {
            (o["kind"], o["metadata"]["name"]): o.get("rules") or o.get("roleRef")
            for o in found
            if o["kind"] in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
            and o["metadata"]["name"].startswith(f"callwarden-{component}")
        }

    assert rules(rendered["default"]) == rules(reference)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=str)
def test_every_container_runs_non_root_on_a_read_only_root_filesystem(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    for deployment in of_kind(rendered[variant], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"]


def test_operator_elects_its_leader_with_a_lease_in_the_release_namespace(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = of_kind(rendered["default"], "Deployment", "operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert f"--lease-namespace={NAMESPACE}" in container["args"]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_extauthz_serves_grpc_and_probes_on_the_service_ports(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = of_kind(rendered["default"], "Deployment", "extauthz")
    (service,) = of_kind(rendered["default"], "Service", "extauthz")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:4] == [
        "extauthz",
        "--kubernetes",
        "--listen=0.0.0.0:9001",
        "--http-listen=0.0.0.0:9090",
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc", 9001),
        ("authz-http", 9002),
        ("http", 9090),
    }


def test_extauthz_runs_its_workers_and_serves_http_ext_authz_too(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = of_kind(rendered["default"], "Deployment", "extauthz")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--http-authz-listen=0.0.0.0:9002" in args
    assert "--workers=2" in args and "--grpc-threads=4" in args


def test_workers_zero_leaves_the_count_to_the_cpu_limit(kube: Kube) -> None:
    (deployment,) = of_kind(
        objects(helm_template(kube, None, "--set", "extauthz.workers=0")), "Deployment", "extauthz"
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [arg for arg in args if arg.startswith("--workers")]


def _gateway_ext_authz(
    rendered: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The gateway bootstrap's HCM, ext_authz filter config and ext_authz cluster."""
    (configmap,) = of_kind(rendered, "ConfigMap")
    bootstrap = yaml.safe_load(configmap["data"]["envoy.yaml"])
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "callwarden_ext_authz"]
    return hcm, hcm["http_filters"][0]["typed_config"], cluster


def test_the_gateway_asks_over_http_ext_authz_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hcm, ext_authz, cluster = _gateway_ext_authz(rendered["gateway"])
    assert "grpc_service" not in ext_authz
    uri = ext_authz["http_service"]["server_uri"]["uri"]
    assert uri == "http://callwarden-extauthz.callwarden-system.svc.cluster.local:9002"
    assert "typed_extension_protocol_options" not in cluster  # HTTP/1.1, not HTTP/2
    assert [m["status_code"] for m in hcm["local_reply_config"]["mappers"]] == [200]  # 299 -> 200


def test_the_gateway_with_tls_asks_over_grpc(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hcm, ext_authz, cluster = _gateway_ext_authz(rendered["tls"])
    assert ext_authz["grpc_service"]["envoy_grpc"] == {"cluster_name": "callwarden_ext_authz"}
    assert "http_service" not in ext_authz and "local_reply_config" not in hcm
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 9001


def test_tls_with_the_http_transport_is_refused(kube: Kube) -> None:
    settings = ["extauthz.tls.enabled=true", "extauthz.tls.secretName=s", "extauthz.transport=http"]
    result = kube.run_helm("template", "callwarden", str(CHART), "--set", ",".join(settings), check=False)
    assert result.returncode != 0
    assert "extauthz.tls.enabled needs extauthz.transport=grpc" in result.stderr


@pytest.mark.parametrize("variant", ["istio", "envoy-gateway", "gateway"], ids=str)
def test_network_policy_admits_only_the_meshs_envoys_to_the_grpc_port(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    (policy,) = of_kind(rendered[variant], "NetworkPolicy")
    grpc_rules = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 9001]
    assert len(grpc_rules) == 1
    assert grpc_rules[0]["from"], "an empty `from` would admit every pod"


def test_network_policy_without_a_mesh_admits_nobody_to_the_grpc_port(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (policy,) = of_kind(rendered["default"], "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == [9090]


def test_tls_mounts_the_secret_and_passes_the_key_pair_to_extauthz(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = of_kind(rendered["tls"], "Deployment", "extauthz")
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--tls-cert=/etc/callwarden/tls/tls.crt" in args
    assert "--tls-key=/etc/callwarden/tls/tls.key" in args
    assert {"name": "tls", "secret": {"secretName": "callwarden-extauthz-tls"}} in pod["volumes"]


def test_every_extauthz_replica_mounts_one_generated_dpop_nonce_key(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (secret,) = [
        o for o in of_kind(rendered["default"], "Secret") if o["metadata"]["name"].endswith("dpop-nonce")
    ]
    assert len(base64.b64decode(secret["data"]["nonce-key"])) == 64
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (deployment,) = of_kind(rendered["default"], "Deployment", "extauthz")
    pod = deployment["spec"]["template"]["spec"]
    assert "--dpop-nonce-key-file=/etc/callwarden/dpop/nonce-key" in pod["containers"][0]["args"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "dpop-nonce"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_an_existing_dpop_nonce_secret_is_mounted_instead_of_a_generated_one(kube: Kube) -> None:
    found = objects(helm_template(kube, None, "--set", "extauthz.dpop.nonceKey.existingSecret=my-nonce-key"))
    assert not [o for o in of_kind(found, "Secret") if o["metadata"]["name"].endswith("dpop-nonce")]
    (deployment,) = of_kind(found, "Deployment", "extauthz")
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "dpop-nonce"]
    assert volume["secret"]["secretName"] == "my-nonce-key"


def test_tls_without_a_secret_name_is_refused(kube: Kube) -> None:
    result = kube.run_helm(
        "template", "callwarden", str(CHART), "--set", "extauthz.tls.enabled=true", check=False
    )
    assert result.returncode != 0
    assert "extauthz.tls.enabled needs extauthz.tls.secretName" in result.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "mesh.mode=linkerd",
        "extauthz.grpcPort=0",
        "operator.replicas=0",
        "extauthz.unknownKey=1",
        "metrics.serviceMonitor.interval=soon",
        "metrics.podMonitor.enabled=yes",
    ],
    ids=["unknown-mesh", "port-zero", "no-operator", "unknown-key", "monitor-interval", "monitor-toggle"],
)
def test_values_schema_rejects_bad_values(kube: Kube, setting: str) -> None:
    args = ["template", "callwarden", str(CHART), "--set", setting]
    result = kube.run_helm(*args, check=False)
    assert result.returncode != 0, f"helm {shlex.join(args)} accepted it"
    assert "values don't meet the specifications of the schema" in result.stderr


def test_every_value_is_documented_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()

    def leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
        found = []
        for key, value in values.items():
            path = f"{prefix}{key}"
            if (
                isinstance(value, dict)
                and value
                and key not in ("resources", "podSecurityContext", "securityContext")
            ):
                found += leaves(value, f"{path}.")
            else:
                found.append(path)
        return found

    missing = [
        path
        for path in leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
        if f"`{path}`" not in readme
    ]
    assert missing == []


def test_gateway_envoy_bootstrap_is_valid_for_real_envoy(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    (configmap,) = of_kind(rendered["gateway"], "ConfigMap")
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(configmap["data"]["envoy.yaml"])
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path", str(bootstrap)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_gateway_s_ext_proc_speaks_grpc_to_ext_authz_s_port_over_tls_when_asked(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (configmap,) = of_kind(rendered["tls"], "ConfigMap")
    bootstrap = yaml.safe_load(configmap["data"]["envoy.yaml"])
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    authz, proc = clusters["callwarden_ext_authz"], clusters["callwarden_ext_proc"]
    assert proc["load_assignment"]["endpoints"] == authz["load_assignment"]["endpoints"]
    assert proc["transport_socket"] == authz["transport_socket"]
    assert "http2_protocol_options" in str(proc["typed_extension_protocol_options"])


def test_gateway_routes_name_their_mcpserver_for_ext_authz(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (configmap,) = of_kind(rendered["gateway"], "ConfigMap")
    bootstrap = yaml.safe_load(configmap["data"]["envoy.yaml"])
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    extensions = [
        r["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]["context_extensions"]
        for r in routes
    ]
    assert extensions == [
        {"mcp_server": "board-packet/finance"},
        {"mcp_server": "board-packet/documents"},
        {"mcp_server": "board-packet/workflow"},
    ]
    assert hcm["http_filters"][0]["typed_config"]["failure_mode_allow"] is False


@pytest.mark.parametrize(
    "variant", [v for v in VARIANTS if v not in ("servicemonitor", "podmonitor")], ids=str
)
def test_no_monitor_is_rendered_unless_enabled(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    assert [o for o in rendered[variant] if o["kind"] in MONITOR_KINDS] == []


# component -> the port its /metrics is on (a named port of its pods, and of its Service).
METRICS_PORTS: Final = {"extauthz": "http", "operator": "metrics"}


def pod_template(found: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The pod template of the component's Deployment, asserting that it names its metrics port."""
    (deployment,) = of_kind(found, "Deployment", component)
    pod: dict[str, Any] = deployment["spec"]["template"]
    assert METRICS_PORTS[component] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    return pod


@pytest.mark.parametrize("component", list(METRICS_PORTS), ids=str)
def test_a_service_monitor_scrapes_each_components_service(
    rendered: dict[str, list[dict[str, Any]]], component: str
) -> None:
    found = rendered["servicemonitor"]
    (monitor,) = of_kind(found, "ServiceMonitor", component)
    port = METRICS_PORTS[component]
    selector = monitor["spec"]["selector"]["matchLabels"]
    (service,) = [
        o for o in of_kind(found, "Service", component) if selector.items() <= o["metadata"]["labels"].items()
    ]
    assert port in {p["name"] for p in service["spec"]["ports"]}
    pod = pod_template(found, component)
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": port, "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("component", list(METRICS_PORTS), ids=str)
def test_a_pod_monitor_scrapes_each_components_pods(
    rendered: dict[str, list[dict[str, Any]]], component: str
) -> None:
    found = rendered["podmonitor"]
    (monitor,) = of_kind(found, "PodMonitor", component)
    pod = pod_template(found, component)
    port = METRICS_PORTS[component]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": port, "path": "/metrics", "interval": "1m"}]
    assert of_kind(found, "ServiceMonitor") == []


def test_the_operator_serves_its_metrics_on_the_metrics_port(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = of_kind(rendered["default"], "Deployment", "operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-listen=0.0.0.0:8081" in container["args"]
    assert {"name": "metrics", "containerPort": 8081} in container["ports"]


def test_the_operator_metrics_service_comes_only_with_service_monitors(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def operator_services(variant: str) -> list[str]:
        return [o["metadata"]["name"] for o in of_kind(rendered[variant], "Service", "operator")]

    assert operator_services("servicemonitor") == ["callwarden-operator-metrics"]
    assert operator_services("podmonitor") == operator_services("default") == []


def test_both_monitors_at_once_are_refused(kube: Kube) -> None:
    both = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true"]
    result = kube.run_helm("template", "callwarden", str(CHART), *both, check=False)
    assert result.returncode != 0
    assert "enable metrics.serviceMonitor or metrics.podMonitor, not both" in result.stderr


# A release of its own: a server dry run refuses to adopt objects of the same names that other tests
# leave in the shared API server without Helm's ownership labels (deploy/rbac's ServiceAccounts and
# ClusterRoles are named callwarden-<component>, this release's callwarden-notes-<component>).
NOTES_RELEASE: Final = "callwarden-notes"


def notes(cluster: Kube, *settings: str) -> str:
    """NOTES.txt as `helm install` prints it (a server dry run: nothing is installed)."""
    args = ["install", NOTES_RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server"]
    for setting in settings:
        args += ["--set", setting]
    output = cluster.run_helm(*args).stdout
    assert "NOTES:" in output
    return output.split("NOTES:", 1)[1]


def test_notes_tell_the_installer_how_to_check_enforcement(cluster: Kube) -> None:
    text = notes(cluster)
    assert "kubectl get mcpservers --all-namespaces" in text
    assert "ENFORCED" in text and ".status.enforcement.reason" in text
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{NOTES_RELEASE}-operator" in text
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{NOTES_RELEASE}-extauthz" in text
    assert "mesh.mode=none: the operator wires no Envoy" in text


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (("mesh.mode=istio",), 'the extension provider "callwarden-ext-authz"'),
        (("mesh.mode=envoy-gateway",), "ReferenceGrant"),
        (("mesh.mode=gateway",), "calls through the Service callwarden-notes-gateway are checked"),
        (
            ("metrics.serviceMonitor.enabled=true",),
            "ServiceMonitors callwarden-notes-extauthz and callwarden-notes-operator",
        ),
        (
            ("metrics.podMonitor.enabled=true",),
            "PodMonitors callwarden-notes-extauthz and callwarden-notes-operator",
        ),
        ((), "set metrics.serviceMonitor.enabled=true"),
    ],
    ids=["istio", "envoy-gateway", "gateway", "servicemonitor", "podmonitor", "no-monitor"],
)
def test_notes_say_what_the_chosen_settings_still_need(
    cluster: Kube, settings: tuple[str, ...], said: str
) -> None:
    assert said in notes(cluster, *settings)
