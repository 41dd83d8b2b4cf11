"""Approvals in a cluster: a real kube-apiserver is the one store of two ext_authz replicas.

A call held through replica A is approved with `callwarden approvals approve --kubernetes` by a
reviewer whose only right is the approver Role (deploy/rbac/approver.yaml) and completed through
replica B; the call runs exactly once in total, and both replicas then answer the stored result.
ext_authz runs as its ServiceAccount with deploy/rbac/extauthz.yaml, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from callwarden.cli import main
from callwarden.kube.client import Kube, new_api_client
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.kube import KubeDocuments
from tests.support.datapath import DataPath, start_datapath
from tests.support.operator import install_crds, rbac_kubeconfig
from tests.test_datapath_approvals import call, get_task, transfer

if TYPE_CHECKING:
    from tests.support.kube import Kube as KubeEnvironment

pytest_plugins = ("tests.support.kube",)
pytestmark = pytest.mark.integration

NAMESPACE = "board-packet"


@pytest.fixture(scope="module")
def extauthz_kubeconfig(kube: KubeEnvironment) -> Iterator[Path]:
    """The CRDs, and ext_authz's ServiceAccount with exactly deploy/rbac/extauthz.yaml; removed
    afterwards, because the chart's tests install the same names with Helm in this session."""
    install_crds(kube)
    yield rbac_kubeconfig(kube, "extauthz")
    kube.kubectl("delete", "-f", "deploy/rbac/extauthz.yaml", "--ignore-not-found")


@pytest.fixture(scope="module")
def reviewer(kube: KubeEnvironment, extauthz_kubeconfig: Path) -> Iterator[Path]:
    """carol, in group treasury, bound to the approver ClusterRole in board-packet only."""
    kube.kubectl("apply", "-f", "deploy/rbac/approver.yaml")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    kube.kubectl(
        "create", "rolebinding", "treasury-approvers", "-n", NAMESPACE,
        "--clusterrole=callwarden-approver", "--group=treasury",
    )  # fmt: skip
    yield kube.user_kubeconfig("carol", groups=("treasury",))
    kube.kubectl("delete", "rolebinding", "treasury-approvers", "-n", NAMESPACE, "--ignore-not-found")
    kube.kubectl("delete", "-f", "deploy/rbac/approver.yaml", "--ignore-not-found")


@pytest.fixture(scope="module")
def replicas(
    extauthz_kubeconfig: Path, reviewer: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DataPath, DataPath]]:
    store = ApprovalRecords(KubeDocuments(Kube(new_api_client(str(extauthz_kubeconfig)))))
    with start_datapath(tmp_path_factory.mktemp("a"), approvals=store) as first:  # noqa: SIM117
        # The same issuers (the same tokens): two replicas of one deployment, one API server.
        with start_datapath(tmp_path_factory.mktemp("b"), approvals=store, issuers=first.issuers) as second:
            yield first, second


def transfers(*paths: DataPath) -> int:
    return sum(path.servers.ledgers["finance"].count("transfer_funds") for path in paths)


def approvals(kubeconfig: Path, *args: str) -> int:
    return main(["approvals", "--kubernetes", "--kubeconfig", str(kubeconfig), "-n", NAMESPACE, *args])


def test_approve_through_one_replica_and_complete_through_the_other_runs_once(
    replicas: tuple[DataPath, DataPath],
    reviewer: Path,
    kube: KubeEnvironment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = replicas
    token = first.token("finance")
    task_id = call(first, transfer(50_000, to="acct-k8s"), token)["result"]["taskId"]
    assert get_task(second, task_id, token)["result"]["status"] == "working"
    assert approvals(reviewer, "approve", task_id, "--until", "20m") == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["approver"], line["decision"]) == ("carol", "approved")
    completed = get_task(second, task_id, token)["result"]
    assert completed["status"] == "completed"
    assert transfers(first, second) == 1
    assert get_task(first, task_id, token)["result"]["result"] == completed["result"]
    assert transfers(first, second) == 1
    table = kube.kubectl("get", "accessrequests", "-n", NAMESPACE, task_id).stdout
    assert "approved" in table
    reasons = json.loads(kube.kubectl("get", "events", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    mine = [e["reason"] for e in reasons if e["involvedObject"]["name"] == task_id]
    assert mine[:2] == ["Requested", "Approved"] and "Executed" in mine


def test_only_a_reviewer_with_the_approver_role_can_approve(
    replicas: tuple[DataPath, DataPath], kube: KubeEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = replicas
    task_id = call(first, transfer(51_000, to="acct-k8s"), first.token("finance"))["result"]["taskId"]
    outsider = kube.user_kubeconfig("eve", groups=("engineering",))
    assert approvals(outsider, "approve", task_id) == 2
    assert "403" in capsys.readouterr().err
    record = ApprovalRecords(KubeDocuments(Kube(new_api_client(str(kube.kubeconfig))))).get(
        NAMESPACE, task_id
    )
    assert record is not None and record.state == "pending"
