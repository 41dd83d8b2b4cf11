"""Helpers for the operator and bundle-watcher tests: objects, `callwarden operator` processes,
least-privilege kubeconfigs from deploy/rbac, polling, and CheckRequests for the Enforcer.

    kube_api = admin_api(kube)
    kubeconfig = rbac_kubeconfig(kube, "operator")      # deploy/rbac/operator.yaml, exactly
    with OperatorProcess(kubeconfig, tmp_path, identity="a") as operator:
        kube.apply(server_object("ns1", "finance", issuer))
        status = wait_for(lambda: ready_status(kube_api, "mcpservers", "ns1", "finance"))
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import yaml
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from kubernetes.client.exceptions import ApiException

from callwarden.kube.bundles import BUNDLE_SELECTOR
from callwarden.kube.client import Kube, new_api_client
from callwarden.policy.model import API_GROUP, API_VERSION, GROUP_VERSION
from e2e import scenario

if TYPE_CHECKING:  # imported for real by pytest_plugins, which must come first (assert rewriting)
    from tests.support.kube import Kube as KubeEnv

ROOT: Final = Path(__file__).resolve().parents[2]
CRDS: Final = ROOT / "crds"
RBAC: Final = ROOT / "deploy" / "rbac"
SYSTEM_NAMESPACE: Final = "callwarden-system"
RESOURCE: Final = "https://mcp.example.com/mcp"
T = TypeVar("T")


# --- Objects ---------------------------------------------------------------------------------------


def server_object(namespace: str, name: str, jwks_uri: str, issuer: str, **spec: Any) -> dict[str, Any]:
    """An McpServer with one issuer, its route on /<name>, and `spec` merged in."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "McpServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "resource": RESOURCE,
            "route": {"pathPrefix": f"/{name}"},
            "issuers": [{"issuer": issuer, "jwksUri": jwks_uri}],
            **spec,
        },
    }


def rule(name: str, effect: str, tools: Sequence[str] = ("*",), when: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "tools": list(tools), "effect": effect}
    if when is not None:
        result["when"] = when
    return result


def policy_object(
    namespace: str, name: str, rules: Sequence[dict[str, Any]], targets: Sequence[str] = ("*",)
) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ToolPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targets": list(targets), "rules": list(rules)},
    }


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


# --- The cluster ---------------------------------------------------------------------------------


def admin_api(kube: KubeEnv) -> Kube:
    return Kube(new_api_client(str(kube.kubeconfig)))


def install_crds(kube: KubeEnv, directory: Path = CRDS) -> None:
    """Applies every CRD in `directory` (callwarden's own by default) and waits until each is served."""
    kube.kubectl("apply", "--server-side", "-f", str(directory))
    for path in sorted(directory.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def rbac_kubeconfig(kube: KubeEnv, component: str) -> Path:
    """A kubeconfig for ServiceAccount `callwarden-<component>` bound by deploy/rbac/<component>.yaml."""
    kube.apply(namespace_object(SYSTEM_NAMESPACE))
    kube.kubectl("apply", "-f", str(RBAC / f"{component}.yaml"))
    return kube.service_account_kubeconfig(SYSTEM_NAMESPACE, f"callwarden-{component}")


def get_object(api: Kube, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = api.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def condition(obj: dict[str, Any] | None, kind: str = "Ready") -> dict[str, Any] | None:
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found.get("type") == kind:
            result: dict[str, Any] = found
            return result
    return None


def bundle_configmaps(api: Kube, namespace: str) -> list[dict[str, Any]]:
    items, _ = api.list_configmaps(namespace, BUNDLE_SELECTOR)
    return sorted(items, key=lambda cm: cm["metadata"]["name"])


def events_for(api: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = api.to_json(
        api.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    )
    events: list[dict[str, Any]] = listed.get("items") or []
    return sorted(events, key=lambda e: e["metadata"]["name"])


def wait_for(probe: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail the test naming `what` after `timeout`."""
    try:
        return scenario.wait_for(probe, timeout=timeout, what=what, interval=0.1)
    except TimeoutError as error:
        raise AssertionError(str(error)) from None


# --- `callwarden operator` ------------------------------------------------------------------------

# Short Lease timings keep fail-over tests quick; still retry < renew deadline < duration.
FAST_LEASE: Final = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")


class OperatorProcess:
    """`python -m callwarden.cli operator` with its log in `workdir/operator-<identity>.log`."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        identity: str,
        lease_name: str = "callwarden-operator",
        resync_seconds: float = 5.0,
        metrics_port: int | None = None,
    ) -> None:
        self.identity = identity
        self.metrics_port = metrics_port
        self.log_path = workdir / f"operator-{identity}.log"
        self.argv = [
            sys.executable,
            "-m",
            "callwarden.cli",
            "operator",
            f"--kubeconfig={kubeconfig}",
            f"--lease-namespace={SYSTEM_NAMESPACE}",
            f"--lease-name={lease_name}",
            f"--identity={identity}",
            f"--resync-seconds={resync_seconds}",
            *FAST_LEASE,
            *([f"--metrics-listen=127.0.0.1:{metrics_port}"] if metrics_port is not None else []),
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        wait_for(lambda: text in self.log(), timeout=timeout, what=f"{text!r} in {self.log_path}")

    def signal(self, signum: signal.Signals) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM without waiting (a leader releases its Lease on the way out)."""
        if self._process is not None and self._process.poll() is None and not self._terminated:
            self._terminated = True
            self._process.send_signal(signal.SIGCONT)  # in case a test paused it
            self._process.terminate()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it lingers."""
        self.terminate()
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


# --- Checks ----------------------------------------------------------------------------------------


def check_request(
    server_key: str, token: str, tool: str, arguments: dict[str, Any] | None = None
) -> CheckRequest:
    """What Envoy sends for a tools/call routed to McpServer `server_key`."""
    request = CheckRequest()
    http = request.attributes.request.http
    http.method = "POST"
    http.host = "mcp.example.com"
    http.path = f"/{server_key.split('/', 1)[1]}"
    http.headers["authorization"] = f"Bearer {token}"
    http.headers["content-type"] = "application/json"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}},
    }
    http.raw_body = json.dumps(body).encode()
    request.attributes.context_extensions["mcp_server"] = server_key
    return request
