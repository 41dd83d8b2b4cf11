"""The reconciler against a real kube-apiserver, with exactly the RBAC of deploy/rbac/operator.yaml.

These drive `Reconciler.reconcile_namespace` directly (no kopf, no Lease: this replica is the
leader), so each test sees one reconcile's effect on real objects. tests/test_operator_process.py
runs the whole `callwarden operator`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from callwarden.kube.bundles import DATA_KEY, REVISION_ANNOTATION
from callwarden.kube.client import Kube
from callwarden.operator.reconcile import NotLeader, Reconciler
from tests.support.operator import (
    bundle_configmaps,
    condition,
    events_for,
    get_object,
    namespace_object,
    policy_object,
    rule,
    server_object,
)

if TYPE_CHECKING:  # pytest_plugins imports it first, for assert rewriting
    from tests.support.kube import Kube as KubeEnv

pytest_plugins = ("tests.support.kube", "tests.support.operator_fixtures")

BAD_WHEN = "context.agent == "
JWKS = "http://127.0.0.1:9/jwks.json"
_names = itertools.count()


@pytest.fixture
def reconciler(operator_api: Kube) -> Reconciler:
    return Reconciler(operator_api, is_leader=lambda: True, identity="test-replica")


@pytest.fixture
def namespace(kube: KubeEnv) -> Iterator[str]:
    name = f"reconcile-{next(_names)}"
    kube.apply(namespace_object(name))
    yield name


@pytest.fixture
def reconcile(reconciler: Reconciler, namespace: str) -> Callable[[], None]:
    def run() -> None:
        reconciler.reconcile_namespace(namespace)

    return run


def finance(namespace: str) -> dict[str, Any]:
    return server_object(namespace, "finance", JWKS, "https://issuer.example")


def guard(
    namespace: str, when: str = "context.agent == 'rogue'", targets: tuple[str, ...] = ("*",)
) -> dict[str, Any]:
    return policy_object(namespace, "guard", [rule("block-rogue", "Deny", when=when)], targets=targets)


def test_a_server_and_its_policy_are_published_and_ready(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    (configmap,) = bundle_configmaps(admin, namespace)
    objects = json.loads(configmap["data"][DATA_KEY])
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("McpServer", "finance"),
        ("ToolPolicy", "guard"),
    ]
    server = get_object(admin, "mcpservers", namespace, "finance") or {}
    assert (condition(server) or {}).get("status") == "True"
    assert server["status"]["bundleRevision"] == configmap["metadata"]["annotations"][REVISION_ANNOTATION]
    assert server["status"]["observedGeneration"] == server["metadata"]["generation"]
    policy = get_object(admin, "toolpolicies", namespace, "guard")
    assert (condition(policy) or {}).get("reason") == "Published"


def test_an_invalid_expression_is_reported_and_leaves_the_bundle_untouched(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    (before,) = bundle_configmaps(admin, namespace)
    kube.apply(guard(namespace, when=BAD_WHEN))
    reconcile()
    (after,) = bundle_configmaps(admin, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    invalid = condition(get_object(admin, "toolpolicies", namespace, "guard"), "Invalid") or {}
    assert (invalid.get("status"), invalid.get("reason")) == ("True", "CompileError")
    assert "spec.rules[0].when" in invalid["message"] and repr(BAD_WHEN) in invalid["message"]


def test_fixing_the_expression_publishes_the_fix(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace, when=BAD_WHEN))
    reconcile()
    kube.apply(guard(namespace, when="context.agent == 'fixed'"))
    reconcile()
    (configmap,) = bundle_configmaps(admin, namespace)
    policies = [o for o in json.loads(configmap["data"][DATA_KEY]) if o["kind"] == "ToolPolicy"]
    assert policies[0]["spec"]["rules"][0]["when"] == "context.agent == 'fixed'"
    ready = condition(get_object(admin, "toolpolicies", namespace, "guard")) or {}
    assert (ready.get("status"), ready.get("reason")) == ("True", "Published")


def test_each_ready_transition_posts_one_event(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    kube.apply(guard(namespace, when=BAD_WHEN))
    reconcile()
    reconcile()  # nothing changed: no new Event
    events = events_for(admin, namespace, "guard")
    assert [(e["type"], e["reason"]) for e in events] == [
        ("Normal", "Published"),
        ("Warning", "CompileError"),
    ]
    assert repr(BAD_WHEN) in events[1]["message"]
    assert events[1]["involvedObject"]["kind"] == "ToolPolicy"
    assert events[1]["source"]["component"] == "callwarden-operator"


def test_a_second_reconcile_writes_nothing(
    kube: KubeEnv, admin: Kube, namespace: str, reconciler: Reconciler, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    assert reconciler.reconcile_namespace(namespace).empty


def test_deleting_the_server_deletes_its_configmap(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    kube.kubectl("delete", "mcpserver", "finance", "-n", namespace)
    reconcile()
    assert bundle_configmaps(admin, namespace) == []


def test_deleting_a_policy_removes_it_from_the_bundle(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    kube.kubectl("delete", "toolpolicy", "guard", "-n", namespace)
    reconcile()
    (configmap,) = bundle_configmaps(admin, namespace)
    assert [o["kind"] for o in json.loads(configmap["data"][DATA_KEY])] == ["McpServer"]


def test_a_hand_edited_bundle_is_restored(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(finance(namespace), guard(namespace))
    reconcile()
    (configmap,) = bundle_configmaps(admin, namespace)
    name = configmap["metadata"]["name"]
    kube.kubectl(
        "patch", "configmap", name, "-n", namespace, "--type=merge", "-p", '{"data":{"objects.json":"[]"}}'
    )
    reconcile()
    (restored,) = bundle_configmaps(admin, namespace)
    assert restored["data"] == configmap["data"]


def test_a_policy_for_a_missing_server_reports_target_not_found(
    kube: KubeEnv, admin: Kube, namespace: str, reconcile: Callable[[], None]
) -> None:
    kube.apply(guard(namespace, targets=("payroll",)))
    reconcile()
    ready = condition(get_object(admin, "toolpolicies", namespace, "guard")) or {}
    assert (ready.get("status"), ready.get("reason")) == ("False", "TargetNotFound")
    assert "payroll" in ready["message"]


def test_a_replica_that_is_not_the_leader_writes_nothing(
    kube: KubeEnv, admin: Kube, operator_api: Kube, namespace: str
) -> None:
    kube.apply(finance(namespace))
    follower = Reconciler(operator_api, is_leader=lambda: False, identity="follower")
    with pytest.raises(NotLeader):
        follower.reconcile_namespace(namespace)
    assert bundle_configmaps(admin, namespace) == []
    assert "status" not in (get_object(admin, "mcpservers", namespace, "finance") or {})


@pytest.mark.parametrize(
    "verb",
    [
        ("update", "mcpservers.callwarden.io"),
        ("delete", "toolpolicies.callwarden.io"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "leases.coordination.k8s.io", "-n", "default"),
        ("patch", "configmaps"),
    ],
    ids=["update-spec", "delete-policy", "get-secret", "list-secrets", "lease-elsewhere", "patch-configmap"],
)
def test_the_operator_role_grants_no_more_than_it_uses(
    kube: KubeEnv, operator_kubeconfig: Path, verb: tuple[str, ...]
) -> None:
    answer = kube.kubectl("auth", "can-i", *verb, kubeconfig=operator_kubeconfig, check=False)
    assert answer.stdout.strip() == "no"
