"""The kind harness' runner: the e2e scenario from a Job pod inside the cluster (see e2e/kind.sh).

The pod runs the demo MCP servers and issuers (they bind loopback, so each is forwarded from a
fixed port on every interface, which the Service `board-packet-fixtures` exposes to ext_authz and
the gateway), applies the example through the in-cluster API (its ServiceAccount's RBAC is in
e2e/kind/runner.yaml), and drives the agent through the chart's gateway Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from callwarden.demo.issuers import start_issuers
from callwarden.demo.servers import start_servers
from callwarden.kube.client import Kube, new_api_client
from e2e.scenario import SERVERS, Fixtures, Gateway, run_scenario

SERVICE: Final = os.environ.get(
    "E2E_FIXTURES_SERVICE", "board-packet-fixtures.board-packet.svc.cluster.local"
)
GATEWAY_URL: Final = os.environ.get("E2E_GATEWAY_URL", "http://callwarden-gateway.callwarden-system.svc:8080")
SERVER_PORTS: Final = {name: 9101 + i for i, name in enumerate(SERVERS)}
ISSUER_PORTS: Final = {name: 9111 + i for i, name in enumerate(SERVERS)}


class ClusterEndpoints:
    def upstream(self, name: str) -> str:
        return f"http://{SERVICE}:{SERVER_PORTS[name]}"

    def jwks_uri(self, name: str) -> str:
        return f"http://{SERVICE}:{ISSUER_PORTS[name]}/jwks.json"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _forward(routes: Mapping[int, int]) -> None:
    """Accept on 0.0.0.0:<public> and splice each connection to 127.0.0.1:<private>."""

    def handler(private: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", private)
            except OSError:
                writer.close()
                return
            with contextlib.suppress(OSError):
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        return handle

    servers = [
        await asyncio.start_server(handler(private), "0.0.0.0", public)  # noqa: S104 (other pods call in)
        for public, private in routes.items()
    ]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> int:
    ports = dict.fromkeys(SERVERS, 0)
    with start_servers(ports) as servers, start_issuers(ports) as issuers:
        routes = {SERVER_PORTS[name]: servers.ports[name] for name in SERVERS}
        routes |= {ISSUER_PORTS[name]: int(issuers[name].base_url.rsplit(":", 1)[1]) for name in SERVERS}
        threading.Thread(target=asyncio.run, args=(_forward(routes),), daemon=True).start()
        report = run_scenario(
            Kube(new_api_client()),
            ClusterEndpoints(),
            Gateway(GATEWAY_URL),
            Fixtures(servers, issuers),
            out=sys.stdout,
            timeout=180,
        )
    print("e2e " + ("failed" if report.failures else "passed"), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
