"""Missions in a real kube-apiserver: the CRD and its columns, `callwarden missions --kubernetes`,
RBAC (who may update missions/status is who may approve), the watch that brings approvals and
revocations to ext_authz, and expansions proposed into the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from callwarden.demo.mission import wait_until
from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.mission_sync import proposer_for
from callwarden.extauthz.mission_watch import KubeWatchSync
from callwarden.kube.client import Kube, new_api_client
from callwarden.policy.decide import Verdict
from callwarden.policy.mission import OUTSIDE_PREFIX, ActiveMission, child_key, child_spec, mission_reference
from callwarden.policy.model import Mission
from callwarden.stores.kube import KubeDocuments
from callwarden.stores.missions import MissionRecords
from tests.support.mission_store_contract import *  # noqa: F403 - the contract every backend passes
from tests.support.missions import BOARD_PACKET, EXAMPLE, make_mission

if TYPE_CHECKING:
    from tests.support.kube import Kube as KubeEnvironment

pytestmark = pytest.mark.integration
pytest_plugins = ("tests.support.kube",)

CALLWARDEN: Final = str(Path(sys.executable).parent / "callwarden")
ROOT: Final = Path(__file__).resolve().parents[1]


ROLES: Final = str(ROOT / "deploy" / "rbac" / "missions.yaml")


@pytest.fixture(scope="module")
def crds(kube: KubeEnvironment) -> Iterator[KubeEnvironment]:
    kube.kubectl("apply", "-f", "crds/", "-f", ROLES)
    kube.kubectl("wait", "--for=condition=Established", "crd/missions.callwarden.io", "--timeout=60s")
    yield kube
    # The chart installs ClusterRoles of the same names: leave none behind for its tests.
    kube.kubectl("delete", "-f", ROLES, "--ignore-not-found")


@pytest.fixture
def namespace(crds: KubeEnvironment) -> str:
    name = f"missions-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def records(crds: KubeEnvironment) -> MissionRecords:
    return MissionRecords(KubeDocuments(Kube(new_api_client(str(crds.kubeconfig)))))


def in_namespace(namespace: str, **spec: object) -> Mission:
    return make_mission(namespace=namespace, **spec)


def callwarden(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [CALLWARDEN, "missions", *args, "--kubernetes", "--kubeconfig", str(kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def person(crds: KubeEnvironment, namespace: str, user: str, role: str) -> Path:
    crds.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        f"{user}-{role}",
        f"--clusterrole=callwarden-mission-{role}",
        f"--user={user}",
    )
    return crds.user_kubeconfig(user)


def test_kubectl_shows_purpose_subject_phase_calls_age_and_expiry_and_a_proposal_has_no_phase(
    records: MissionRecords, namespace: str, crds: KubeEnvironment
) -> None:
    records.propose(in_namespace(namespace), "alice")
    header, row = crds.kubectl("get", "missions", "-n", namespace).stdout.splitlines()[:2]
    starts = [header.index(name) for name in header.split()]
    cells = [row[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
    assert dict(zip(header.split(), cells, strict=True)) | {"AGE": "-"} == {
        "NAME": "q3-board-packet",
        "PURPOSE": "prepare the Q3 board packet for the audit committee",
        "SUBJECT": "alice",
        "PHASE": "",  # a proposal has no status: only a reviewer writes one
        "CALLS": "",
        "AGE": "-",
        "EXPIRES": "2099-12-31T00:00:00Z",
    }


def test_the_api_server_rejects_what_the_model_rejects(namespace: str, crds: KubeEnvironment) -> None:
    body = in_namespace(namespace).model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"status"}
    )
    body["spec"]["expires"] = "tomorrow"
    result = crds.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0 and "spec.expires" in result.stderr


@pytest.mark.parametrize("field", ["purpose", "subject"])
def test_the_api_server_refuses_text_a_reviewer_could_misread(
    namespace: str, crds: KubeEnvironment, field: str
) -> None:
    body = in_namespace(namespace).model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"status"}
    )
    body["spec"][field] = "approve \u202eevil"
    result = crds.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert (
        result.returncode != 0
        and f"{field} must not contain control or invisible characters" in result.stderr
    )


def test_a_proposer_cannot_approve_and_an_approver_can(namespace: str, crds: KubeEnvironment) -> None:
    proposer = person(crds, namespace, "alice", "proposer")
    approver = person(crds, namespace, "carol", "approver")
    path = EXAMPLE / "q3-board-packet.yaml"
    text = path.read_text().replace("namespace: board-packet", f"namespace: {namespace}")
    mission_file = crds.workdir / f"{namespace}.yaml"
    mission_file.write_text(text)
    proposed = callwarden(proposer, "propose", "-f", str(mission_file))
    assert proposed.returncode == 0, proposed.stderr
    key = f"{namespace}/q3-board-packet"
    refused = callwarden(proposer, "approve", key)
    assert refused.returncode != 0 and "forbidden" in (refused.stderr + refused.stdout).lower()
    approved = callwarden(approver, "approve", key)
    assert approved.returncode == 0, approved.stderr
    shown = json.loads(callwarden(approver, "show", key).stdout)
    assert (shown["status"]["phase"], shown["status"]["approver"]) == ("Approved", "carol")
    assert shown["metadata"]["annotations"]["callwarden.io/proposed-by"] == "alice"  # as authenticated
    assert shown["status"]["reference"] == mission_reference(BOARD_PACKET.spec)


def test_in_a_cluster_nobody_can_claim_another_name(namespace: str, crds: KubeEnvironment) -> None:
    approver = person(crds, namespace, "carol", "approver")
    result = callwarden(approver, "approve", f"{namespace}/q3-board-packet", "--as", "the-ceo")
    assert result.returncode == 2 and "in a cluster you act as who you log in as" in result.stderr


@pytest.fixture
def watched(crds: KubeEnvironment, namespace: str) -> Iterator[KubeWatchSync]:
    kube = Kube(new_api_client(str(crds.kubeconfig)))
    book = MissionBook(proposer=proposer_for(MissionRecords(KubeDocuments(kube))))
    sync = KubeWatchSync(kube, book, namespace)
    sync.start()
    try:
        yield sync
    finally:
        sync.stop()


def expansion_key(active: ActiveMission, request: dict[str, Any]) -> str:
    mcp = request["context"]["mcp"]
    return child_key(active, child_spec(active, mcp["server"], mcp["tool"], request["resource"]))


def phase(sync: KubeWatchSync, key: str) -> str | None:
    mission = sync.book.index.get(key)
    return None if mission is None else mission.status.phase


def test_the_watch_brings_approval_and_revocation_to_ext_authz(
    records: MissionRecords, namespace: str, watched: KubeWatchSync
) -> None:
    key = records.propose(in_namespace(namespace), "alice").key
    assert wait_until(lambda: phase(watched, key) == "Proposed", timeout=15)
    records.move(key, "approve", "carol")
    assert wait_until(lambda: phase(watched, key) == "Approved", timeout=15)
    records.move(key, "revoke", "carol")
    assert wait_until(lambda: phase(watched, key) == "Revoked", timeout=15)
    assert watched.readiness()[0]


def test_a_call_outside_the_mission_proposes_its_expansion_in_the_cluster(
    records: MissionRecords, namespace: str, watched: KubeWatchSync
) -> None:
    key = records.propose(in_namespace(namespace), "alice").key
    records.move(key, "approve", "carol")
    assert wait_until(lambda: phase(watched, key) == "Approved", timeout=15)
    active = watched.book.index.resolve(key, mission_reference(BOARD_PACKET.spec), datetime.now(UTC))
    request = {
        "resource": {"type": "reviewer_group", "id": "all-staff"},
        "context": {
            "mcp": {"server": f"{namespace}/workflow", "method": "tools/call", "tool": "notify_reviewer"}
        },
    }
    verdict = Verdict(False, "tools/call", "notify_reviewer", None, (f"{OUTSIDE_PREFIX}{key}",), (request,))
    child_key = expansion_key(active, request)
    assert watched.book.propose_expansions(active, [verdict]) == [verdict]
    assert wait_until(lambda: phase(watched, child_key) == "Proposed", timeout=15)
    child = records.get(child_key)
    assert child is not None and child.spec.parent == mission_reference(BOARD_PACKET.spec)
    assert watched.book.propose_expansions(active, [verdict]) == [verdict]  # proposed once, not again
    assert len(records.all(namespace)) == 2
