"""Real Envoy in tests: McpServer objects for routes, a managed Envoy, and a whole gateway.

    with gateway([mcp_server("finance", upstream.url)], checker, tmp_path) as gw:
        httpx2.post(gw.url + "/mcp", ...)

`gateway` starts the ext_authz gRPC server (callwarden.extauthz.server) on a free port, renders
the bootstrap for the servers, and starts Envoy on free ports; both stop on exit. If the block
fails, Envoy's log (access log included) is printed so pytest shows it with the failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from callwarden.extauthz.envoy import EnvoyProcess, render_bootstrap
from callwarden.extauthz.server import Checker, RunningServer, serve
from callwarden.policy.model import McpServer

ISSUER = {"issuer": "https://issuer.test", "jwksUri": "https://issuer.test/jwks"}


def mcp_server(
    name: str,
    upstream_url: str,
    *,
    namespace: str = "default",
    hosts: Sequence[str] = (),
    path_prefix: str = "/mcp",
    max_request_bytes: int = 1_048_576,
    **spec: Any,
) -> McpServer:
    """An McpServer routed at `hosts` + `path_prefix` to `upstream_url` (other spec fields via **spec)."""
    return McpServer.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "McpServer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "resource": f"https://{name}.test{path_prefix}",
                "route": {"hosts": list(hosts), "pathPrefix": path_prefix},
                "upstream": {"url": upstream_url},
                "issuers": [ISSUER],
                "maxRequestBytes": max_request_bytes,
                **spec,
            },
        }
    )


@contextmanager
def start_envoy(
    bootstrap: Mapping[str, Any], workdir: Path, *, concurrency: int = 1
) -> Iterator[EnvoyProcess]:
    envoy = EnvoyProcess(bootstrap, workdir, concurrency=concurrency).start()
    try:
        yield envoy
    except BaseException:
        print(f"--- envoy log ({envoy.log_path}) ---\n{envoy.log_text()[-8000:]}")
        raise
    finally:
        envoy.stop()


@dataclass
class Gateway:
    envoy: EnvoyProcess
    ext_authz: RunningServer

    @property
    def url(self) -> str:
        return self.envoy.url


@contextmanager
def gateway(
    servers: Sequence[McpServer], checker: Checker, workdir: Path, **bootstrap_options: Any
) -> Iterator[Gateway]:
    with serve(checker, "127.0.0.1:0", workers=4) as ext_authz:
        bootstrap = render_bootstrap(servers, ext_authz=f"127.0.0.1:{ext_authz.port}", **bootstrap_options)
        with start_envoy(bootstrap, workdir) as envoy:
            yield Gateway(envoy, ext_authz)


def envoy_counter(envoy: EnvoyProcess, name: str) -> int:
    """The value of one Envoy counter (e.g. `http.callwarden.ext_proc.streams_started`), 0 if unset."""
    answer = httpx2.get(
        f"{envoy.admin_url}/stats", params={"filter": f"^{name}$", "format": "json"}, trust_env=False
    )
    stats = answer.json()["stats"]
    return int(stats[0]["value"]) if stats else 0
