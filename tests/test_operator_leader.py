"""Leader election: two `callwarden operator` replicas on one Lease, only the holder writes.

Lease timings are shortened (duration 4 s, renew deadline 3 s, retry 0.5 s) so fail-over is
quick; each test uses its own Lease so no earlier replica can interfere.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from callwarden.kube.client import Kube
from tests.support.operator import (
    SYSTEM_NAMESPACE,
    OperatorProcess,
    condition,
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
_names = itertools.count()


@pytest.fixture
def replicas(operator_kubeconfig: Path, tmp_path: Path) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """Two replicas on a fresh Lease; the first is started first and becomes the leader."""
    lease = f"leader-{next(_names)}"
    first = OperatorProcess(operator_kubeconfig, tmp_path, identity=f"{lease}-a", lease_name=lease).start()
    second = OperatorProcess(operator_kubeconfig, tmp_path, identity=f"{lease}-b", lease_name=lease)
    try:
        first.wait_for_log("is now the leader")
        second.start().wait_for_log("campaigns for Lease")
        yield first, second
    finally:
        first.terminate()  # both at once: each takes a few seconds to wind down
        second.terminate()
        first.stop()
        second.stop()


def holder(admin: Kube, replica: OperatorProcess) -> str | None:
    lease_name = replica.identity.rsplit("-", 1)[0]
    lease = admin.read_lease(SYSTEM_NAMESPACE, lease_name) or {}
    found: str | None = (lease.get("spec") or {}).get("holderIdentity")
    return found


def publish(kube: KubeEnv, admin: Kube, rule_name: str) -> str:
    """Apply a server and a policy in a fresh namespace; wait until the policy is Published."""
    namespace = f"leader-ns-{next(_names)}"
    kube.apply(namespace_object(namespace))
    kube.apply(
        server_object(namespace, "finance", JWKS, "https://issuer.example"),
        policy_object(namespace, "guard", [rule(rule_name, "Allow")]),
    )
    wait_for(
        lambda: (
            (condition(get_object(admin, "toolpolicies", namespace, "guard")) or {}).get("reason")
            == "Published"
        ),
        what=f"ToolPolicy {namespace}/guard Published",
    )
    return namespace


def test_only_the_lease_holder_writes(
    kube: KubeEnv, admin: Kube, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, standby = replicas
    namespace = publish(kube, admin, "first")
    assert holder(admin, leader) == leader.identity
    assert f"wrote ConfigMap {namespace}/" in leader.log()
    assert "wrote" not in standby.log()
    assert "is now the leader" not in standby.log()


def test_a_standby_takes_over_when_the_leader_stops(
    kube: KubeEnv, admin: Kube, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, standby = replicas
    started = time.monotonic()
    leader.stop()  # SIGTERM: the leader releases the Lease on the way out
    standby.wait_for_log("is now the leader", timeout=10)
    assert time.monotonic() - started < 10
    namespace = publish(kube, admin, "after-failover")
    assert holder(admin, standby) == standby.identity
    assert f"wrote ConfigMap {namespace}/" in standby.log()


def test_a_paused_leader_writes_nothing_once_the_standby_took_over(
    kube: KubeEnv, admin: Kube, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, standby = replicas
    leader.signal(signal.SIGSTOP)  # a frozen pod: it cannot renew, nor release
    standby.wait_for_log("is now the leader", timeout=15)
    namespace = publish(kube, admin, "while-paused")
    mark = len(leader.log())
    leader.signal(signal.SIGCONT)
    leader.wait_for_log("is not the leader", timeout=10)
    time.sleep(1.0)  # whatever the resumed replica had queued, it had time to try
    assert "wrote" not in leader.log()[mark:]
    assert holder(admin, standby) == standby.identity
    assert f"wrote ConfigMap {namespace}/" in standby.log()
