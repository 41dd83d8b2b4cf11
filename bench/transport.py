"""Transport only: Envoy's gRPC ext_authz against its HTTP ext_authz, each with a trivial checker.

Both checkers allow everything without looking at the request, so the CPU per request of the
checker process is the cost of the transport alone: for gRPC, callwarden's own server
(`callwarden.extauthz.server.serve`, grpcio's thread pool) answering a prebuilt OK; for HTTP, a
minimal asyncio HTTP/1.1 server (one thread, no hand-offs) answering 200. bench/run.py runs this
in full mode; `transport.py serve grpc|http` is the checker process it starts.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import Service, taskset  # noqa: E402

from callwarden.extauthz.envoy import EXT_AUTHZ_CLUSTER, EXT_AUTHZ_FILTER  # noqa: E402

_PORT_PREFIX = "PORT "


def _serve_grpc() -> None:
    from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

    from callwarden.extauthz.decide import DECISION_HEADER
    from callwarden.extauthz.responses import allow_response
    from callwarden.extauthz.server import serve

    answer = allow_response({DECISION_HEADER: "01J0000000000000000000000"})

    class Allow:
        def check(self, request: CheckRequest) -> CheckResponse:
            return answer

    server = serve(Allow(), "127.0.0.1:0", workers=4)
    print(f"{_PORT_PREFIX}{server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-callwarden-decision-id: 01J0000000000000000000000\r\n\r\n"


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            writer.write(_OK)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _serve_http_forever() -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    print(f"{_PORT_PREFIX}{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def start_checker(kind: str, cpus: set[int] | None) -> Service:
    command = [*taskset(cpus), sys.executable, str(Path(__file__).resolve()), "serve", kind]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith(_PORT_PREFIX):
        process.kill()
        raise RuntimeError(f"trivial {kind} checker did not start: {line!r}")
    return Service(f"trivial-{kind}", [f"127.0.0.1:{int(line.removeprefix(_PORT_PREFIX))}"], [process])


def use_http_ext_authz(bootstrap: dict[str, Any], address: str) -> None:
    """Turn the gateway bootstrap's gRPC ext_authz into Envoy's HTTP ext_authz to `address`."""
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = next(f for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ_FILTER)["typed_config"]
    ext_authz.pop("grpc_service")
    ext_authz["http_service"] = {
        "server_uri": {"uri": f"http://{address}", "cluster": EXT_AUTHZ_CLUSTER, "timeout": "1s"},
        "authorization_request": {
            "allowed_headers": {"patterns": [{"exact": name} for name in ("authorization", "content-type")]}
        },
    }
    cluster = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EXT_AUTHZ_CLUSTER)
    cluster.pop("typed_extension_protocol_options")  # HTTP/1.1 to the checker


def main() -> None:
    if sys.argv[1:2] != ["serve"] or sys.argv[2:3] not in (["grpc"], ["http"]):
        raise SystemExit("usage: transport.py serve grpc|http")
    if sys.argv[2] == "grpc":
        _serve_grpc()
    else:
        asyncio.run(_serve_http_forever())


if __name__ == "__main__":
    main()
