"""Where the ext_authz process's CPU goes under load: py-spy (with native frames) on a live
`callwarden extauthz` behind Envoy while wrk sends allowed calls with a cached token.

    .venv/bin/python -m pip install --target /tmp/pyspy py-spy     # py-spy is not a dependency
    PATH=/tmp/pyspy/bin:$PATH .venv/bin/python bench/profile_live.py [--json FILE] [--seconds 8]

Reports the share of samples (of the thread holding the GIL) inside `Enforcer.check` against the rest (the
gRPC server: C-core polling, request/response (de)serialisation, thread hand-offs), and the leaf
functions with the most samples. Complements profile_check.py, which sees only the check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import envoy_bootstrap, start_callwarden, start_envoy, write_bodies, write_config  # noqa: E402
from load import Request, run_h2load_rate, run_wrk  # noqa: E402
from run import FINANCE_HOST, FINANCE_RESOURCE  # noqa: E402

from callwarden.demo.issuers import start_issuers  # noqa: E402
from callwarden.policy.loader import load_config  # noqa: E402

# Enforcer.check (the gRPC adapter) and Enforcer.decide (what the HTTP server calls).
CHECK_FRAMES = ("check (callwarden/extauthz/decide.py", "decide (callwarden/extauthz/decide.py")


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def _category(frames: list[str]) -> str:
    if any(mark in frame for frame in frames for mark in CHECK_FRAMES):
        return "Enforcer.check (the decision)"
    if any("decision-log" in frame or "audit.py" in frame for frame in frames):
        return "decision log writer thread"
    if any("http_authz.py" in frame for frame in frames):
        return "HTTP ext_authz server (parsing, answering; Python, outside check)"
    if any("_AuthorizationService" in frame or "server.py" in frame for frame in frames):
        return "gRPC servicer glue (Python, outside check)"
    if any("grpc" in frame.lower() for frame in frames):
        return "grpcio (C-core, Python server loop, (de)serialisation)"
    return "other"


def profile(
    seconds: float, rate: int, load_rate: float | None = None, transport: str = "grpc"
) -> dict[str, Any]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not on PATH (see this file's docstring)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
    ):
        workdir = Path(tmp)
        config = write_config(issuers, workdir / "config")
        bodies = write_bodies(workdir)
        token = issuers["finance"].mint("alice", FINANCE_RESOURCE, "board-agent", roles=["analyst"], ttl=3600)
        service = start_callwarden(config, workdir / "cw", cpus=None, transport=transport)
        try:
            servers = list(load_config([config]).servers.values())
            bootstrap = envoy_bootstrap(servers, service.addresses, transport)
            envoy = start_envoy(bootstrap, workdir / "envoy", None)
            try:
                request = Request(FINANCE_HOST, "/mcp", bodies["allowed"], token=token)
                run_wrk(envoy.url, request, 16, 1.0, None)  # warm up
                raw = workdir / "stacks.txt"
                # --gil: only the thread holding the GIL, i.e. the Python work of the process (the
                # other worker threads mostly wait for the GIL, which is not work).
                command = [spy, "record", "--native", "--gil", "--rate", str(rate), "--format", "raw"]
                command += [
                    "--duration",
                    str(int(seconds)),
                    "--output",
                    str(raw),
                    "--pid",
                    str(service.pids[0]),
                ]
                if load_rate is None:  # closed loop, 16 connections
                    load = threading.Thread(target=run_wrk, args=(envoy.url, request, 16, seconds + 1, None))
                else:  # open loop at a fixed rate (e.g. half of the maximum: the latency target's load)
                    options = {"duration": seconds + 1, "cpus": None, "workdir": workdir}
                    load = threading.Thread(
                        target=run_h2load_rate, args=(envoy.url, request, load_rate), kwargs=options
                    )
                load.start()
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                load.join()
                if done.returncode != 0:
                    raise SystemExit(f"py-spy failed: {done.stderr[-2000:]}")
                stacks: Counter[str] = Counter()
                for line in raw.read_text().splitlines():
                    stack, _, samples = line.rpartition(" ")
                    stacks[stack] += int(samples)
            finally:
                envoy.stop()
        finally:
            service.stop()
    total = sum(stacks.values()) or 1
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = _frames(stack)
        categories[_category(frames)] += count
        leaves[frames[-1]] += count
    return {
        "samples": total,
        "by_category": {name: round(count / total, 3) for name, count in categories.most_common()},
        "top_stacks": [
            {"stack": " <- ".join(reversed(_frames(stack)[-8:])), "share": round(count / total, 3)}
            for stack, count in stacks.most_common(8)
        ],
        "top_leaf_frames": [
            {"frame": frame, "share": round(count / total, 3)} for frame, count in leaves.most_common(20)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--load-rate", type=float, help="open-loop requests/s (h2load) instead of wrk c=16")
    parser.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    args = parser.parse_args()
    results = profile(args.seconds, args.rate, args.load_rate, args.transport)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
