"""What the ext_proc hooks cost: on a plain tools/call (must be nothing) and on tools/list.

    .venv/bin/python bench/extproc.py [--json bench/results/extproc.json] [--smoke] [--seconds 3]

One callwarden ext_authz + ext_proc server in this process (the board-packet configuration),
real Envoy 1.40 (`--concurrency 1`) with direct responses, wrk at one connection. For the plain
allowed `tools/call` three bootstraps take turns, `--rounds` times, so that the shared machine's
drift hits all of them alike (the order rotates each round):

- `no-ext-proc`: the gateway bootstrap without the ext_proc filter (the baseline);
- `ext-proc-matcher`: the ext_proc filter inside `ExtensionWithMatcher`, engaged only for requests
  ext_authz marked (what `render_bootstrap` renders): a tools/call opens no stream;
- `ext-proc-every-request`: the bare ext_proc filter, sending the request headers of every
  request; the processor answers unmarked requests with "skip the rest" (the processing-mode
  override design without a matcher).

Reported per variant: requests/s, p50/p99 latency, and CPU µs per request of Envoy and of this
process (the checker and processor). The smoke mode runs each for a fraction of a second with the
Python client and proves the wiring only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import envoy_bootstrap, envoy_cpu, start_envoy, write_bodies, write_config  # noqa: E402
from load import LoadResult, Request, have, run_python, run_wrk  # noqa: E402

from callwarden.demo.issuers import start_issuers  # noqa: E402
from callwarden.extauthz.envoy import (  # noqa: E402
    EXT_PROC_CLUSTER,
    EXT_PROC_FILTER,
    ext_proc_filter,
    grpc_cluster,
)
from callwarden.extauthz.service import start_extauthz  # noqa: E402
from callwarden.policy.bundle import Bundle, compile_bundle  # noqa: E402
from callwarden.policy.loader import load_config  # noqa: E402

FINANCE_HOST = "finance.board.example"
FINANCE_AUDIENCE = "https://finance.board.example/mcp"
VARIANTS = ("no-ext-proc", "ext-proc-matcher", "ext-proc-every-request")


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def bootstrap_for(variant: str, bundle: Bundle, address: str) -> dict[str, Any]:
    """The bench's direct-response gateway bootstrap with the variant's ext_proc wiring."""
    bootstrap = envoy_bootstrap([s.server for s in bundle.servers.values()], [address])
    if variant == "no-ext-proc":
        return bootstrap
    matched = ext_proc_filter()
    wired = matched if variant == "ext-proc-matcher" else matched["typed_config"]["extension_config"]
    filters = _hcm(bootstrap)["http_filters"]
    filters.insert(len(filters) - 1, {**wired, "name": EXT_PROC_FILTER})
    bootstrap["static_resources"]["clusters"].append(grpc_cluster(EXT_PROC_CLUSTER, address))
    return bootstrap


def load_once(url: str, request: Request, seconds: float, use_wrk: bool, connections: int) -> LoadResult:
    if use_wrk:
        return run_wrk(url, request, connections, seconds, None)
    return run_python(url, request, connections, seconds)


def run_variant(
    bootstrap: dict[str, Any],
    workdir: Path,
    request: Request,
    seconds: float,
    use_wrk: bool,
    *,
    connections: int,
) -> dict[str, Any]:
    """One closed-loop run against a fresh Envoy; CPU per request of Envoy and of this process."""
    envoy = start_envoy(bootstrap, workdir, None)
    try:
        own, envoy_before = os.times(), envoy_cpu(envoy)
        result = load_once(envoy.url, request, seconds, use_wrk, connections)
        after, envoy_after = os.times(), envoy_cpu(envoy)
    finally:
        envoy.stop()
    per_request = max(result.requests, 1)
    checker_s = (after.user + after.system) - (own.user + own.system)
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "envoy_cpu_us": round((envoy_after - envoy_before) / per_request * 1e6, 1),
        "checker_cpu_us": round(checker_s / per_request * 1e6, 1),
        "requests": result.requests,
        "errors": result.errors,
    }


def measure(
    smoke: bool, seconds: float, rounds: int, connections: int = 1, variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    use_wrk = have("wrk") and not smoke
    with (
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
        tempfile.TemporaryDirectory() as tmp,
    ):
        workdir = Path(tmp)
        bundle = compile_bundle(load_config([write_config(issuers, workdir / "config")]))
        bodies = write_bodies(workdir)
        token = issuers["finance"].mint("alice", FINANCE_AUDIENCE, "board-agent", roles=["analyst"], ttl=3600)
        request = Request(FINANCE_HOST, "/mcp", bodies["allowed"], token=token)
        samples: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
        with start_extauthz(bundle, audit_path=str(workdir / "decisions.jsonl")) as ext_authz:
            for round_number in range(rounds):
                # Rotated each round: no variant always runs first on a machine that warms up.
                turn = round_number % len(variants)
                for variant in variants[turn:] + variants[:turn]:
                    bootstrap = bootstrap_for(variant, bundle, ext_authz.address)
                    where = workdir / f"envoy-{variant}-{round_number}"
                    samples[variant].append(
                        run_variant(bootstrap, where, request, seconds, use_wrk, connections=connections)
                    )
    return {
        "generator": "wrk" if use_wrk else "python",
        "seconds_per_run": seconds,
        "rounds": rounds,
        "connections": connections,
        "load_average": os.getloadavg(),
        "tools_call": {variant: _summary(runs) for variant, runs in samples.items()},
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, and every round as measured."""
    keys = ("rps", "p50_ms", "p99_ms", "envoy_cpu_us", "checker_cpu_us")
    return {**{key: round(statistics.median(run[key] for run in runs), 3) for key in keys}, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="a fraction of a second per run; no timings")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    seconds, rounds = (0.3, 1) if args.smoke else (args.seconds, args.rounds)
    results = measure(args.smoke, seconds, rounds, args.connections, tuple(args.variants))
    text = json.dumps(results, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    for variant, summary in results["tools_call"].items():
        shown = {k: v for k, v in summary.items() if k != "runs"}
        print(f"tools/call {variant:24} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
