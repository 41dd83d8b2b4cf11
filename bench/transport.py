"""Transport only: Envoy's gRPC ext_authz against its HTTP ext_authz, each with a trivial checker.

Both checkers allow everything without looking at the request, so the CPU per request of the
checker process is the cost of the transport alone: for gRPC, callwarden's own server
(`callwarden.extauthz.server.serve`, grpcio's thread pool) answering a prebuilt OK; for HTTP,
callwarden's own HTTP ext_authz server (`callwarden.extauthz.http_authz`, one uvloop thread)
answering a prebuilt allow. Envoy is the gateway's own bootstrap for that transport.
bench/run.py runs this in full mode; `transport.py serve grpc|http` is the checker process it
starts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import Service, taskset  # noqa: E402

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


def _serve_http() -> None:
    """callwarden's own HTTP ext_authz server (`http_authz`, one uvloop thread) answering a
    prebuilt allow: the server's cost without the decision."""
    from callwarden.extauthz.decide import DECISION_HEADER, Answer, RequestView
    from callwarden.extauthz.http_authz import HttpAuthzServer

    answer = Answer(True, 200, b"", {DECISION_HEADER: "01J0000000000000000000000"})

    def allow(request: RequestView) -> Answer:
        return answer

    server = HttpAuthzServer(allow, "127.0.0.1:0")
    print(f"{_PORT_PREFIX}{server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()


def start_checker(kind: str, cpus: set[int] | None) -> Service:
    command = [*taskset(cpus), sys.executable, str(Path(__file__).resolve()), "serve", kind]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith(_PORT_PREFIX):
        process.kill()
        raise RuntimeError(f"trivial {kind} checker did not start: {line!r}")
    return Service(f"trivial-{kind}", [f"127.0.0.1:{int(line.removeprefix(_PORT_PREFIX))}"], [process])


def main() -> None:
    if sys.argv[1:2] != ["serve"] or sys.argv[2:3] not in (["grpc"], ["http"]):
        raise SystemExit("usage: transport.py serve grpc|http")
    if sys.argv[2] == "grpc":
        _serve_grpc()
    else:
        _serve_http()


if __name__ == "__main__":
    main()
