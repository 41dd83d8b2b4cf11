"""`callwarden operator` as a process (kopf watches + Lease + reconciler), with the RBAC of
deploy/rbac/operator.yaml only, reacting to `kubectl apply` and `kubectl delete`.

The periodic resync is set to a minute, longer than any wait here: what these tests see is
driven by watch events.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from callwarden.kube.bundles import DATA_KEY
from callwarden.kube.client import Kube
from tests.support.operator import (
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

JWKS = "http://127.0.0.1:9/jwks.json"
BAD_WHEN = "resource.id.startsWith("
_names = itertools.count()


@pytest.fixture(scope="module")
def operator(
    operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    from tests.support.kube import free_port  # after pytest_plugins loaded it (assert rewriting)

    with OperatorProcess(
        operator_kubeconfig,
        tmp_path_factory.mktemp("operator"),
        identity="solo",
        lease_name="process-tests",
        resync_seconds=60,
        metrics_port=free_port(),
    ) as process:
        process.wait_for_log("is now the leader")
        yield process


@pytest.fixture
def namespace(kube: KubeEnv, operator: OperatorProcess) -> str:
    name = f"process-{next(_names)}"
    kube.apply(namespace_object(name))
    return name


def objects(namespace: str, when: str = "resource.id == 'secret'") -> list[dict[str, Any]]:
    return [
        server_object(namespace, "finance", JWKS, "https://issuer.example"),
        policy_object(namespace, "guard", [rule("no-secret", "Deny", when=when)]),
    ]


def ready(
    admin: Kube, namespace: str, plural: str, name: str, reason: str = "Published"
) -> dict[str, Any] | None:
    """The object once its Ready condition has `reason` for its current generation."""
    found = get_object(admin, plural, namespace, name)
    if found is None:
        return None
    status = condition(found) or {}
    current = status.get("observedGeneration") == found["metadata"]["generation"]
    return found if current and status.get("reason") == reason else None


def test_applied_objects_become_ready_with_a_bundle(kube: KubeEnv, admin: Kube, namespace: str) -> None:
    kube.apply(*objects(namespace))
    server = wait_for(lambda: ready(admin, namespace, "mcpservers", "finance"), what="McpServer Ready")
    wait_for(lambda: ready(admin, namespace, "toolpolicies", "guard"), what="ToolPolicy Ready")
    (configmap,) = bundle_configmaps(admin, namespace)
    assert (
        configmap["metadata"]["annotations"]["callwarden.io/revision"] == server["status"]["bundleRevision"]
    )


def test_an_invalid_expression_is_reported_with_an_event_and_no_bundle_change(
    kube: KubeEnv, admin: Kube, namespace: str
) -> None:
    kube.apply(*objects(namespace))
    wait_for(lambda: ready(admin, namespace, "toolpolicies", "guard"), what="ToolPolicy Ready")
    (before,) = bundle_configmaps(admin, namespace)
    kube.apply(objects(namespace, when=BAD_WHEN)[1])
    policy = wait_for(
        lambda: ready(admin, namespace, "toolpolicies", "guard", "CompileError"), what="Invalid"
    )
    assert repr(BAD_WHEN) in (condition(policy, "Invalid") or {})["message"]
    wait_for(lambda: len(events_for(admin, namespace, "guard")) == 2, what="the CompileError Event")
    (after,) = bundle_configmaps(admin, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_fixing_the_expression_recovers(kube: KubeEnv, admin: Kube, namespace: str) -> None:
    kube.apply(*objects(namespace, when=BAD_WHEN))
    wait_for(lambda: ready(admin, namespace, "toolpolicies", "guard", "CompileError"), what="Invalid")
    kube.apply(objects(namespace, when="resource.id == 'fixed'")[1])
    wait_for(lambda: ready(admin, namespace, "toolpolicies", "guard"), what="Ready again")
    (configmap,) = bundle_configmaps(admin, namespace)
    assert "resource.id == 'fixed'" in configmap["data"][DATA_KEY]


def test_deleting_the_server_removes_its_bundle(kube: KubeEnv, admin: Kube, namespace: str) -> None:
    kube.apply(*objects(namespace))
    wait_for(lambda: bundle_configmaps(admin, namespace), what="the bundle")
    kube.kubectl("delete", "mcpserver", "finance", "-n", namespace)
    wait_for(lambda: not bundle_configmaps(admin, namespace), what="the bundle deleted")
    policy = wait_for(
        lambda: ready(admin, namespace, "toolpolicies", "guard", "TargetNotFound"), what="TargetNotFound"
    )
    assert json.dumps(policy["status"]["servers"]) == "[]"


def test_the_leader_reports_its_lease_and_its_reconciles_as_metrics(
    kube: KubeEnv, admin: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(*objects(namespace))
    wait_for(lambda: ready(admin, namespace, "mcpservers", "finance"), what="McpServer Ready")
    response = httpx2.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5, trust_env=False)
    samples = {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["callwarden_operator_leader"] == 1.0
    assert samples['callwarden_operator_reconciles_total{outcome="ok"}'] >= 1.0
