"""ext_authz following the operator's bundles: `callwarden operator` (a process) publishes,
`start_kubernetes_extauthz` (in process, with deploy/rbac/extauthz.yaml only) watches, swaps
and decides; checks go straight to `Enforcer.check` with the CheckRequest Envoy would send.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from callwarden.extauthz import metrics
from callwarden.extauthz.watch import KubernetesExtAuthz, start_kubernetes_extauthz
from callwarden.kube.bundles import build_configmaps
from callwarden.kube.client import Kube, new_api_client
from callwarden.policy.loader import ConfigError, config_from_objects
from tests.support.issuer import LocalIssuer
from tests.support.operator import (
    ROOT,
    OperatorProcess,
    check_request,
    namespace_object,
    policy_object,
    rbac_kubeconfig,
    rule,
    server_object,
    wait_for,
)

if TYPE_CHECKING:  # pytest_plugins imports it first, for assert rewriting
    from tests.support.kube import Kube as KubeEnv

pytest_plugins = ("tests.support.kube", "tests.support.operator_fixtures")

TOOL = "query_financials"
_names = itertools.count()


@dataclass
class Stack:
    kube: KubeEnv
    admin: Kube
    issuer: LocalIssuer
    operator: OperatorProcess
    running: KubernetesExtAuthz
    audit_path: Path
    token: str = field(init=False)

    def __post_init__(self) -> None:
        self.token = self.issuer.mint()

    def allowed(self, server_key: str, tool: str = TOOL) -> bool:
        response = self.running.ext_authz.enforcer.check(check_request(server_key, self.token, tool))
        return bool(response.status.code == 0)

    def revision(self) -> str | None:
        return self.running.watcher.health().revision

    def new_server(self, *policies: dict[str, Any]) -> str:
        """A fresh namespace with McpServer `finance` and `policies`; returns the server key."""
        namespace = f"watch-{next(_names)}"
        self.kube.apply(namespace_object(namespace))
        server = server_object(namespace, "finance", self.issuer.jwks_uri, self.issuer.issuer)
        self.kube.apply(server, *(with_namespace(p, namespace) for p in policies))
        return f"{namespace}/finance"


def with_namespace(policy: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**policy, "metadata": {**policy["metadata"], "namespace": namespace}}


def allow(name: str = "allow", *extra: dict[str, Any]) -> dict[str, Any]:
    return policy_object("placeholder", name, [rule("everything", "Allow"), *extra])


def deny(tool: str = TOOL) -> dict[str, Any]:
    return policy_object("placeholder", "deny", [rule("no-financials", "Deny", tools=[tool])])


@pytest.fixture(scope="module")
def stack(
    kube: KubeEnv,
    admin: Kube,
    operator_kubeconfig: Path,
    extauthz_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("watch")
    extauthz_api = Kube(new_api_client(str(extauthz_kubeconfig)))
    issuer = LocalIssuer(name="watch-issuer")
    audit_path = workdir / "decisions.jsonl"
    try:
        with (
            OperatorProcess(
                operator_kubeconfig, workdir, identity="watch", lease_name="watch-tests"
            ) as operator,
            start_kubernetes_extauthz(
                extauthz_api, http_listen="127.0.0.1:0", audit_path=str(audit_path), workers=4
            ) as running,
        ):
            operator.wait_for_log("is now the leader")
            yield Stack(kube, admin, issuer, operator, running, audit_path)
    finally:
        issuer.stop()


def test_a_policy_published_by_the_operator_is_enforced_within_seconds(stack: Stack) -> None:
    started = time.monotonic()
    key = stack.new_server(allow())
    wait_for(lambda: stack.allowed(key), timeout=15, what="the allow policy enforced")
    assert time.monotonic() - started < 15


def test_a_policy_change_is_decided_by_within_seconds(stack: Stack) -> None:
    key = stack.new_server(allow())
    wait_for(lambda: stack.allowed(key), timeout=15, what="the allow policy enforced")
    started = time.monotonic()
    stack.kube.apply(with_namespace(deny(), key.split("/")[0]))
    wait_for(lambda: not stack.allowed(key), timeout=15, what="the deny policy enforced")
    assert time.monotonic() - started < 15


def test_no_check_fails_while_bundles_swap(stack: Stack) -> None:
    key = stack.new_server(allow())
    namespace = key.split("/")[0]
    wait_for(lambda: stack.allowed(key), timeout=15, what="the allow policy enforced")
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                outcomes.append(stack.allowed(key))
            except BaseException as error:
                errors.append(error)

    thread = threading.Thread(target=hammer, name="hammer")
    thread.start()
    revisions = {stack.revision()}
    try:
        for swap in range(4):  # each change keeps the call allowed but makes a new bundle
            extra = rule(f"also-{swap}", "Allow", tools=[f"other-{swap}"])
            stack.kube.apply(with_namespace(allow("allow", extra), namespace))
            wait_for(lambda: stack.revision() not in revisions, timeout=15, what=f"swap {swap}")
            revisions.add(stack.revision())
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(outcomes) > 50 and all(outcomes)
    assert len(revisions) == 5


def test_decision_lines_carry_the_served_bundle_revision(stack: Stack) -> None:
    key = stack.new_server(allow())
    wait_for(lambda: stack.allowed(key), timeout=15, what="the allow policy enforced")
    revision = stack.revision()
    stack.running.ext_authz.decision_log.flush()
    lines = [json.loads(line) for line in stack.audit_path.read_text().splitlines()]
    assert lines[-1]["server"] == key
    assert lines[-1]["revision"] == revision


def test_a_bundle_that_does_not_compile_keeps_the_last_good_one_and_is_reported(stack: Stack) -> None:
    key = stack.new_server(allow())
    namespace = key.split("/")[0]
    wait_for(lambda: stack.allowed(key), timeout=15, what="the allow policy enforced")
    errors_before = metric("callwarden_bundle_errors_total", reason="does-not-compile")
    rogue = hand_made_configmap(stack, namespace, rule("broken", "Deny", when="subject.id =="))
    stack.kube.apply(rogue)
    try:
        wait_for(lambda: stack.running.watcher.health().degraded, timeout=15, what="degraded")
        ready = httpx2.get(f"http://127.0.0.1:{stack.running.http_port}/readyz", timeout=5)
        assert ready.status_code == 200
        assert "degraded" in ready.text and f"{namespace}/hand-made" in ready.text
        assert metric("callwarden_bundle_errors_total", reason="does-not-compile") > errors_before
        assert stack.allowed(key)  # everything else keeps being enforced
    finally:
        stack.kube.kubectl("delete", "configmap", rogue["metadata"]["name"], "-n", namespace)
    wait_for(lambda: not stack.running.watcher.health().degraded, timeout=15, what="degraded cleared")


def test_a_broken_update_of_one_server_keeps_that_servers_last_good_bundle(stack: Stack) -> None:
    namespace = f"watch-{next(_names)}"
    stack.kube.apply(namespace_object(namespace))
    key = f"{namespace}/hand-made"
    stack.kube.apply(hand_made_configmap(stack, namespace, rule("everything", "Allow")))
    wait_for(lambda: stack.allowed(key), timeout=15, what="the hand-made bundle enforced")
    good = stack.running.watcher.health().revision
    stack.kube.apply(
        hand_made_configmap(stack, namespace, rule("no-financials", "Deny", when="subject.id =="))
    )
    try:
        wait_for(lambda: stack.running.watcher.health().degraded, timeout=15, what="degraded")
        assert stack.allowed(key)  # still the last good bundle: allowed, not denied and not unrouted
        assert stack.running.watcher.health().revision == good
    finally:
        stack.kube.kubectl("delete", "configmap", "-n", namespace, "-l", "callwarden.io/server=hand-made")


def test_the_cli_serves_from_kubernetes_and_reports_readiness(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = rbac_kubeconfig(stack.kube, "extauthz")
    argv = [sys.executable, "-m", "callwarden.cli", "extauthz", "--kubernetes", f"--kubeconfig={kubeconfig}"]
    argv += ["--listen=127.0.0.1:0", f"--http-listen=127.0.0.1:{port}", f"--audit-log={tmp_path / 'audit'}"]
    with (tmp_path / "extauthz.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        answer = wait_for(
            lambda: readyz(port), timeout=30, what="/readyz from `callwarden extauthz --kubernetes`"
        )
        assert answer.startswith("ready: bundle revision ")
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_updates_arrive_after_the_api_server_restarts(stack: Stack) -> None:
    key = stack.new_server(allow())
    wait_for(lambda: stack.allowed(key), timeout=15, what="the allow policy enforced")
    stack.kube.restart_apiserver()
    stack.kube.apply(with_namespace(deny(), key.split("/")[0]))  # made while clients reconnect
    wait_for(lambda: not stack.allowed(key), timeout=45, what="the deny policy enforced after the restart")


def metric(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def hand_made_configmap(stack: Stack, namespace: str, policy_rule: dict[str, Any]) -> dict[str, Any]:
    """A bundle written by hand (the operator manages only its own): server `hand-made`, one policy."""
    server = server_object(namespace, "hand-made", stack.issuer.jwks_uri, stack.issuer.issuer)
    server["metadata"]["uid"] = "hand-made"
    policy = policy_object(namespace, "only", [policy_rule])
    revision = config_revision([server, policy])
    (configmap,) = build_configmaps(server, [server, policy], revision)
    del configmap["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    del configmap["metadata"]["ownerReferences"]
    return configmap


def config_revision(objects: list[dict[str, Any]]) -> str:
    """The loader's content address; for a broken policy, any stable stand-in."""
    try:
        return config_from_objects(objects).revision
    except ConfigError:
        return "unloadable"


def readyz(port: int) -> str | None:
    try:
        response = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx2.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
