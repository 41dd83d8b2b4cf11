"""The cluster approval store: AccessRequest custom resources in a real kube-apiserver."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from callwarden.kube.client import Kube, new_api_client
from callwarden.policy import approval as ap
from callwarden.stores.approvals import ApprovalRecords
from callwarden.stores.kube import KubeDocuments
from tests.support.store_contract import *  # noqa: F403 - the contract every backend passes
from tests.support.store_contract import new_record

if TYPE_CHECKING:
    from tests.support.kube import Kube as KubeEnvironment

pytest_plugins = ("tests.support.kube",)


@pytest.fixture(scope="module")
def crds(kube: KubeEnvironment) -> KubeEnvironment:
    kube.kubectl("apply", "-f", "crds/")
    kube.kubectl("wait", "--for=condition=Established", "crd/accessrequests.callwarden.io", "--timeout=60s")
    return kube


@pytest.fixture
def namespace(crds: KubeEnvironment) -> str:
    name = f"approvals-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def store(crds: KubeEnvironment) -> ApprovalRecords:
    return ApprovalRecords(KubeDocuments(Kube(new_api_client(str(crds.kubeconfig)))))


def test_kubectl_shows_the_reviewer_s_columns(
    store: ApprovalRecords, namespace: str, crds: KubeEnvironment
) -> None:
    created = store.create(new_record(namespace))
    table = crds.kubectl("get", "accessrequests", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "TOOL", "SUBJECT", "RESOURCE", "STATE", "AGE", "EXPIRES"]
    assert row.split()[:5] == [created.id, "transfer_funds", "alice@example.com", "acct-991", "pending"]


def test_a_transition_posts_an_event_naming_the_approver(
    store: ApprovalRecords, namespace: str, crds: KubeEnvironment
) -> None:
    created = store.create(new_record(namespace))
    approved = store.replace(ap.approve(created, "carol", datetime.now(UTC)))
    store.event(approved, "Approved", "approved by carol")
    events = json.loads(crds.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert [(e["reason"], e["message"], e["involvedObject"]["name"]) for e in events] == [
        ("Approved", "approved by carol", created.id)
    ]


def test_the_api_server_rejects_a_record_that_breaks_the_schema(
    crds: KubeEnvironment, namespace: str
) -> None:
    bad = {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": "ar-bad", "namespace": namespace},
        "spec": {"server": "x/y", "argumentsDigest": "md5:nope"},
    }
    result = crds.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "argumentsDigest" in result.stderr
