"""The real-Kubernetes test environment (tests/support/kube.py): a real kube-apiserver on etcd accepts the
project's CRDs and examples, enforces RBAC, survives a restart, and kubectl, helm and the Python client
all work against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes
import pytest
import yaml

if TYPE_CHECKING:
    # Imported at run time only through pytest_plugins, so that pytest loads it as a plugin first.
    from tests.support.kube import Kube

pytest_plugins = ("tests.support.kube",)
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"
EXAMPLE = ROOT / "examples" / "board-packet"
EXAMPLE_NAMESPACE = "board-packet"
CRD_NAMES = sorted(yaml.safe_load(path.read_text())["metadata"]["name"] for path in CRD_DIR.glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def names(kube: Kube, resource: str, namespace: str) -> list[str]:
    out = kube.kubectl("get", resource, "-n", namespace, "-o", "jsonpath={.items[*].metadata.name}").stdout
    return sorted(out.split())


@pytest.fixture(scope="module")
def crds(kube: Kube) -> Kube:
    """The project's CRDs applied and Established; the example namespace exists."""
    kube.kubectl("apply", "-f", str(CRD_DIR))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES))
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": EXAMPLE_NAMESPACE}})
    return kube


def test_apiserver_reports_the_pinned_kubernetes_version(kube: Kube) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    pinned = kube.versions["KUBERNETES_VERSION"]
    assert version["serverVersion"]["gitVersion"] == pinned
    assert version["clientVersion"]["gitVersion"] == pinned


def test_kubectl_applies_a_namespace_and_a_configmap(kube: Kube) -> None:
    kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "testenv-basics"}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "greeting", "namespace": "testenv-basics"},
            "data": {"text": "hello"},
        },
    )
    got = kube.kubectl("get", "configmap", "greeting", "-n", "testenv-basics", "-o", "jsonpath={.data.text}")
    assert got.stdout == "hello"


@pytest.mark.parametrize("crd", CRD_NAMES)
def test_project_crd_is_established(crds: Kube, crd: str) -> None:
    conditions = json.loads(crds.kubectl("get", "crd", crd, "-o", "jsonpath={.status.conditions}").stdout)
    status = {c["type"]: c["status"] for c in conditions}
    assert status["NamesAccepted"] == "True"
    assert status["Established"] == "True"


@pytest.mark.parametrize("example", ["servers.yaml", "policies.yaml"])
def test_board_packet_example_is_accepted_by_the_crd_schemas(crds: Kube, example: str) -> None:
    path = EXAMPLE / example
    # Strict field validation: a field the schema does not know is an error, not silently pruned.
    crds.kubectl("apply", "--validate=strict", "-f", str(path))
    for kind in {doc["kind"] for doc in documents(path)}:
        expected = sorted(doc["metadata"]["name"] for doc in documents(path) if doc["kind"] == kind)
        assert names(crds, f"{kind.lower()}.callwarden.io", EXAMPLE_NAMESPACE) == expected


def test_server_side_dry_run_validates_but_persists_nothing(crds: Kube) -> None:
    server = documents(EXAMPLE / "servers.yaml")[0]
    server["metadata"]["name"] = "dry-run-only"
    applied = crds.kubectl("apply", "--dry-run=server", "-f", "-", "-o", "name", input=yaml.safe_dump(server))
    assert applied.stdout.strip() == "mcpserver.callwarden.io/dry-run-only"
    after = crds.kubectl("get", "mcpserver", "dry-run-only", "-n", EXAMPLE_NAMESPACE, check=False)
    assert after.returncode != 0
    assert "NotFound" in after.stderr


def _without_spec(doc: dict[str, Any]) -> None:
    del doc["spec"]


def _unknown_effect(doc: dict[str, Any]) -> None:
    doc["spec"]["rules"][0]["effect"] = "Perhaps"


def _unknown_field(doc: dict[str, Any]) -> None:
    doc["spec"]["upstreem"] = {"url": "http://127.0.0.1:1"}


@pytest.mark.parametrize(
    ("example", "break_it", "message"),
    [
        pytest.param("servers.yaml", _without_spec, "spec: Required value", id="mcpserver-without-spec"),
        pytest.param(
            "policies.yaml", _unknown_effect, 'Unsupported value: "Perhaps"', id="rule-effect-unknown"
        ),
        pytest.param("servers.yaml", _unknown_field, 'unknown field "spec.upstreem"', id="unknown-field"),
    ],
)
def test_server_side_dry_run_rejects_what_the_schema_forbids(
    crds: Kube, example: str, break_it: Any, message: str
) -> None:
    doc = documents(EXAMPLE / example)[0]
    doc["metadata"]["name"] = "rejected"
    break_it(doc)
    rejected = crds.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert rejected.returncode != 0
    assert message in rejected.stderr


READER_NAMESPACE = "testenv-rbac"


@pytest.fixture(scope="module")
def reader(kube: Kube) -> Path:
    """A user in group `testenv:readers`, which may only get and list ConfigMaps in one namespace."""
    kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": READER_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "visible", "namespace": READER_NAMESPACE},
            "data": {"k": "v"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "configmap-reader", "namespace": READER_NAMESPACE},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "readers", "namespace": READER_NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "testenv:readers"}
            ],
        },
    )
    return kube.user_kubeconfig("reader", groups=("testenv:readers",))


def test_least_privilege_user_may_do_what_its_role_grants(kube: Kube, reader: Path) -> None:
    got = kube.kubectl("get", "configmap", "visible", "-n", READER_NAMESPACE, "-o", "name", kubeconfig=reader)
    assert got.stdout.strip() == "configmap/visible"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("delete", "configmap", "visible", "-n", READER_NAMESPACE),
            'User "reader" cannot delete resource "configmaps" in API group ""'
            f' in the namespace "{READER_NAMESPACE}"',
            id="delete-granted-kind",
        ),
        pytest.param(
            ("get", "secrets", "-n", READER_NAMESPACE),
            'User "reader" cannot list resource "secrets"',
            id="other-kind",
        ),
        pytest.param(
            ("get", "configmaps", "-n", "default"),
            'User "reader" cannot list resource "configmaps" in API group "" in the namespace "default"',
            id="other-namespace",
        ),
        pytest.param(
            ("get", "namespaces"),
            'User "reader" cannot list resource "namespaces" in API group "" at the cluster scope',
            id="cluster-scope",
        ),
    ],
)
def test_least_privilege_user_is_forbidden_what_its_role_does_not_grant(
    kube: Kube, reader: Path, args: tuple[str, ...], message: str
) -> None:
    denied = kube.kubectl(*args, kubeconfig=reader, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert message in denied.stderr


def test_service_account_kubeconfig_authenticates_as_the_service_account(kube: Kube) -> None:
    config = kube.service_account_kubeconfig("testenv-sa", "operator")
    who = kube.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=config)
    assert who.stdout == "system:serviceaccount:testenv-sa:operator"


def test_service_account_without_rbac_is_forbidden(kube: Kube) -> None:
    config = kube.service_account_kubeconfig("testenv-sa", "nobody")
    denied = kube.kubectl("get", "configmaps", "-n", "testenv-sa", kubeconfig=config, check=False)
    assert denied.returncode != 0
    assert 'User "system:serviceaccount:testenv-sa:nobody" cannot list resource "configmaps"' in denied.stderr


def test_restart_apiserver_keeps_data(kube: Kube) -> None:
    kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "testenv-restart"}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "survivor", "namespace": "testenv-restart"},
            "data": {"written": "before-restart"},
        },
    )
    server = kube.server
    kube.restart_apiserver()
    assert kube.server == server
    got = kube.kubectl(
        "get", "configmap", "survivor", "-n", "testenv-restart", "-o", "jsonpath={.data.written}"
    )
    assert got.stdout == "before-restart"


def test_python_client_works_with_the_kubeconfig(kube: Kube) -> None:
    client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))  # type: ignore[no-untyped-call]
    with client:
        namespaces = kubernetes.client.CoreV1Api(client).list_namespace()
    assert "default" in {ns.metadata.name for ns in namespaces.items if ns.metadata}


def test_helm_version_is_the_pinned_version(kube: Kube) -> None:
    assert kube.run_helm("version", "--short").stdout.strip() == kube.versions["HELM_VERSION"]


def test_helm_installs_a_chart_into_the_api_server(kube: Kube, tmp_path: Path) -> None:
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\n"
        "data:\n  release: {{ .Release.Name | quote }}\n"
    )
    kube.run_helm("install", "demo", str(chart), "--namespace", "testenv-helm", "--create-namespace")
    got = kube.kubectl(
        "get", "configmap", "demo-config", "-n", "testenv-helm", "-o", "jsonpath={.data.release}"
    )
    assert got.stdout == "demo"
