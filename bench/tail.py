"""Where the added p99 comes from: the served path at a fixed open-loop rate, variant by variant.

    .venv/bin/python bench/tail.py [--rate 1000] [--seconds 6] [--rounds 2] [--json FILE] [--smoke]

Every variant (Envoy alone, Envoy + callwarden over gRPC or HTTP ext_authz, with one knob
changed) is started once and kept running; then the rounds send allowed calls with a cached
token at `--rate` requests/s (h2load, open loop), variant after variant, so that a neighbour's
burst on this shared machine hits every variant alike. Per variant and round: latency
percentiles, the checker's CPU per request, and its context switches per request (voluntary:
a thread blocked, e.g. on the GIL or a condition; involuntary: the scheduler took the core
away), summed over its threads, with the busiest threads by name. Read the ratios within one
run, never the absolute numbers of two runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import (  # noqa: E402
    CLOCK_TICKS,
    envoy_bootstrap,
    envoy_cpu,
    load_average,
    start_callwarden,
    start_envoy,
    write_bodies,
    write_config,
)
from load import Request, run_h2load_rate, run_python  # noqa: E402
from run import FINANCE_HOST, FINANCE_RESOURCE  # noqa: E402

from callwarden.demo.issuers import start_issuers  # noqa: E402
from callwarden.extauthz.envoy import EnvoyProcess  # noqa: E402
from callwarden.policy.loader import load_config  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    transport: str | None  # None: Envoy alone
    threads: int = 4
    switch_interval: float | None = None  # sys.setswitchinterval in the checker (default 5 ms)
    checker_cpus: frozenset[int] | None = frozenset({0})
    envoy_cpus: frozenset[int] | None = frozenset({0})


VARIANTS = (
    Variant("envoy-alone", None),
    Variant("grpc 4 threads (default)", "grpc"),
    Variant("grpc 1 thread", "grpc", threads=1),
    Variant("grpc 2 threads", "grpc", threads=2),
    Variant("grpc 4 threads, switch interval 0.5 ms", "grpc", switch_interval=0.0005),
    Variant("grpc 4 threads, Envoy on core 1", "grpc", envoy_cpus=frozenset({1})),
    Variant("http", "http"),
    Variant("http, Envoy on core 1", "http", envoy_cpus=frozenset({1})),
)


def thread_counters(pid: int) -> dict[str, tuple[float, int, int]]:
    """Per thread name: CPU seconds, voluntary and involuntary context switches (summed)."""
    totals: dict[str, tuple[float, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):  # a thread that just exited
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        switches = {
            k: int(v) for k, _, v in (line.partition(":\t") for line in status.splitlines()) if "ctxt" in k
        }
        old = totals.get(name, (0.0, 0, 0))
        totals[name] = (
            old[0] + cpu,
            old[1] + switches["voluntary_ctxt_switches"],
            old[2] + switches["nonvoluntary_ctxt_switches"],
        )
    return totals


@dataclass
class Running:
    variant: Variant
    envoy: EnvoyProcess
    checker_pids: list[int]


def _cpus(cpus: frozenset[int] | None) -> set[int] | None:
    return set(cpus) if cpus is not None else None


@contextmanager
def start_variant(variant: Variant, config: Path, workdir: Path) -> Iterator[Running]:
    servers = list(load_config([config]).servers.values())
    with ExitStack() as stack:
        addresses: list[str] = []
        pids: list[int] = []
        if variant.transport is not None:
            service = start_callwarden(
                config,
                workdir / "cw",
                cpus=_cpus(variant.checker_cpus),
                threads=variant.threads,
                transport=variant.transport,
                switch_interval=variant.switch_interval,
            )
            stack.callback(service.stop)
            addresses, pids = service.addresses, service.pids
        bootstrap = envoy_bootstrap(servers, addresses, variant.transport or "grpc")
        envoy = start_envoy(bootstrap, workdir / "envoy", _cpus(variant.envoy_cpus))
        stack.callback(envoy.stop)
        yield Running(variant, envoy, pids)


def measure(running: Running, load: Callable[[], Any]) -> dict[str, Any]:
    before = {pid: thread_counters(pid) for pid in running.checker_pids}
    envoy_before = envoy_cpu(running.envoy)
    load_before = load_average()[0]
    result = load()
    requests = max(1, result.requests)
    row: dict[str, Any] = {
        "variant": running.variant.name,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "errors": result.errors,
        "envoy_cpu_us": round((envoy_cpu(running.envoy) - envoy_before) * 1e6 / requests, 1),
        "load_average": [round(load_before, 2), round(load_average()[0], 2)],
    }
    if running.checker_pids:
        threads: dict[str, list[float]] = {}
        for pid in running.checker_pids:
            for name, (cpu, vol, invol) in thread_counters(pid).items():
                old = before[pid].get(name, (0.0, 0, 0))
                entry = threads.setdefault(name, [0.0, 0.0, 0.0])
                entry[0] += (cpu - old[0]) * 1e6 / requests
                entry[1] += (vol - old[1]) / requests
                entry[2] += (invol - old[2]) / requests
        row["checker_cpu_us"] = round(sum(t[0] for t in threads.values()), 1)
        row["voluntary_switches_per_request"] = round(sum(t[1] for t in threads.values()), 2)
        row["involuntary_switches_per_request"] = round(sum(t[2] for t in threads.values()), 3)
        busiest = sorted(threads.items(), key=lambda item: -item[1][0] - item[1][1])[:5]
        row["threads"] = {
            name: {"cpu_us": round(t[0], 1), "voluntary": round(t[1], 2), "involuntary": round(t[2], 3)}
            for name, t in busiest
        }
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds per variant; added latency against Envoy alone of the same round."""
    ceiling = {r["round"]: r for r in rows if r["variant"] == "envoy-alone"}
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    summary = []
    for name, runs in by_variant.items():
        entry: dict[str, Any] = {"variant": name, "rounds": len(runs)}
        for key in ("p50_ms", "p99_ms", "checker_cpu_us", "envoy_cpu_us", "voluntary_switches_per_request"):
            values = [r[key] for r in runs if key in r]
            if values:
                entry[key] = round(statistics.median(values), 3)
        added = [r["p99_ms"] - ceiling[r["round"]]["p99_ms"] for r in runs if r["round"] in ceiling]
        entry["added_p99_ms"] = round(statistics.median(added), 3) if added else None
        summary.append(entry)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s (half of the max)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", action="append", help="variant names to run (with envoy-alone)")
    parser.add_argument("--json", help="write rows and summary here")
    parser.add_argument("--smoke", action="store_true", help="two variants, Python client, one second")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if not args.only or v.name in args.only or v.transport is None]
    if args.smoke:
        variants = [VARIANTS[0], VARIANTS[1]]
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="callwarden-tail-") as tmp,
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
        ExitStack() as stack,
    ):
        workdir = Path(tmp)
        config = write_config(issuers, workdir / "config")
        bodies = write_bodies(workdir)
        token = issuers["finance"].mint("alice", FINANCE_RESOURCE, "board-agent", roles=["analyst"], ttl=3600)
        request = Request(FINANCE_HOST, "/mcp", bodies["allowed"], token=token)
        systems = [
            stack.enter_context(start_variant(v, config, workdir / f"v{i}")) for i, v in enumerate(variants)
        ]
        for running in systems:  # warm every system up (token cache, connections)
            run_python(running.envoy.url, request, 2, 0.5)
        for round_number in range(1 if args.smoke else args.rounds):
            for running in systems:
                url = running.envoy.url

                def load(url: str = url) -> Any:
                    if args.smoke:
                        return run_python(url, request, 2, 1.0)
                    return run_h2load_rate(
                        url, request, args.rate, duration=args.seconds, cpus={1}, workdir=workdir
                    )

                row = measure(running, load)
                row["round"] = round_number
                rows.append(row)
                print(json.dumps(row), flush=True)
                time.sleep(0.5)
    results = {"rate": args.rate, "seconds": args.seconds, "rows": rows, "summary": summarise(rows)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
