"""The local harness: the e2e scenario against a real kube-apiserver, everything else as processes here.

`callwarden operator --mesh gateway` and `callwarden extauthz --kubernetes` run as processes
(as in a pod, with their own kubeconfigs), real Envoy is the gateway (bootstrap from
callwarden.extauthz.envoy, its ext_authz cluster pointing at the ext_authz process), and the demo
MCP servers and issuers run on loopback in this process so the scenario can count executed calls
and mint tokens.

    .venv/bin/python -m e2e.local --kubeconfig /path/to/admin.kubeconfig

tests/test_e2e_local.py runs it against the test environment's kube-apiserver (docs/testenv.md),
with the operator and ext_authz on the least-privilege RBAC of deploy/rbac/.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, Final

import httpx2
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from callwarden.demo.issuers import RunningIssuers, start_issuers
from callwarden.demo.servers import RunningServers, start_servers
from callwarden.extauthz.envoy import EnvoyProcess, render_bootstrap
from callwarden.kube.client import Kube, new_api_client
from callwarden.policy.loader import config_from_objects
from e2e.scenario import SERVERS, Fixtures, Gateway, Report, ensure_namespace, example_objects, run_scenario

ROOT: Final = Path(__file__).resolve().parents[1]
SYSTEM_NAMESPACE: Final = "callwarden-system"


class LocalEndpoints:
    def __init__(self, servers: RunningServers, issuers: RunningIssuers) -> None:
        self.servers = servers
        self.issuers = issuers

    def upstream(self, name: str) -> str:
        return self.servers.base_url(name)

    def jwks_uri(self, name: str) -> str:
        return self.issuers[name].jwks_uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def process(argv: Sequence[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `callwarden` process with its output in `log_path`; SIGTERM (then SIGKILL) on the way out."""
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "callwarden.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


def wait_ready(url: str, child: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{child.args!r} exited {child.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx2.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


def install_crds(kube: Kube) -> None:
    api = client.ApiextensionsV1Api(kube.api)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body: Any = yaml.safe_load(path.read_text())
        try:
            api.create_custom_resource_definition(body)
        except ApiException as error:
            if error.status != 409:
                raise
    for _ in range(100):
        crds = kube.to_json(api.list_custom_resource_definition())["items"]
        established = {
            crd["metadata"]["name"]
            for crd in crds
            if any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            )
        }
        if {"mcpservers.callwarden.io", "toolpolicies.callwarden.io"} <= established:
            return
        time.sleep(0.1)
    raise TimeoutError("callwarden CRDs not Established")


def run(
    admin_kubeconfig: Path,
    workdir: Path,
    *,
    operator_kubeconfig: Path | None = None,
    extauthz_kubeconfig: Path | None = None,
    out: IO[str] | None = sys.stdout,
) -> Report:
    """The scenario on this machine; the components use the given kubeconfigs (admin by default)."""
    admin = Kube(new_api_client(str(admin_kubeconfig)))
    install_crds(admin)
    ensure_namespace(admin, SYSTEM_NAMESPACE)
    grpc_port, http_port = free_port(), free_port()
    operator_argv = [
        "operator",
        f"--kubeconfig={operator_kubeconfig or admin_kubeconfig}",
        f"--lease-namespace={SYSTEM_NAMESPACE}",
        "--lease-name=callwarden-e2e",
        "--resync-seconds=10",
        "--mesh=gateway",
    ]
    extauthz_argv = [
        "extauthz",
        "--kubernetes",
        f"--kubeconfig={extauthz_kubeconfig or admin_kubeconfig}",
        f"--listen=127.0.0.1:{grpc_port}",
        f"--http-listen=127.0.0.1:{http_port}",
        f"--audit-log={workdir / 'decisions.jsonl'}",
    ]
    ports = dict.fromkeys(SERVERS, 0)
    with ExitStack() as stack:
        servers = stack.enter_context(start_servers(ports))
        issuers = stack.enter_context(start_issuers(ports))
        endpoints = LocalEndpoints(servers, issuers)
        stack.enter_context(process(operator_argv, workdir / "operator.log"))
        extauthz_log = workdir / "extauthz.log"
        extauthz = stack.enter_context(process(extauthz_argv, extauthz_log))
        wait_ready(f"http://127.0.0.1:{http_port}/readyz", extauthz, extauthz_log)
        models = list(config_from_objects(example_objects(endpoints)).servers.values())
        bootstrap = render_bootstrap(models, ext_authz=f"127.0.0.1:{grpc_port}")
        envoy = stack.enter_context(EnvoyProcess(bootstrap, workdir / "envoy"))
        if out is not None:
            print(f"e2e: Envoy {envoy.url} -> ext_authz 127.0.0.1:{grpc_port}; logs in {workdir}", file=out)
        return run_scenario(admin, endpoints, Gateway(envoy.url), Fixtures(servers, issuers), out=out)
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the e2e scenario against a kube-apiserver, locally.")
    parser.add_argument("--kubeconfig", required=True, type=Path, help="admin kubeconfig of the API server")
    parser.add_argument("--workdir", type=Path, help="logs go here (default: a temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="callwarden-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run(args.kubeconfig, workdir)
    print("e2e " + ("failed" if report.failures else "passed"))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
