"""The callwarden bench: Envoy alone, Envoy + callwarden, Envoy + OPA's Envoy plugin, in one run.

    .venv/bin/python bench/run.py            # full: ~5-8 minutes, writes bench/REPORT.md + results/
    .venv/bin/python bench/run.py --quick    # shorter runs, fewer concurrencies
    .venv/bin/python bench/run.py --smoke --out-dir /tmp/x   # seconds; Python client, no OPA

See bench/README.md. Everything runs on loopback and stops by itself; runs are bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from harness import (  # noqa: E402
    DIRECT_RESPONSE_BODY,
    EXAMPLE,
    ROOT,
    Service,
    envoy_bootstrap,
    envoy_cpu,
    load_average,
    machine_info,
    start_callwarden,
    start_envoy,
    start_opa,
    write_bodies,
    write_config,
)
from load import LoadResult, Request, have, run_h2load_rate, run_python, run_wrk  # noqa: E402
from transport import start_checker  # noqa: E402

from callwarden.demo.issuers import LocalIssuer, RunningIssuers, start_issuers  # noqa: E402
from callwarden.extauthz.envoy import EnvoyProcess, envoy_binary  # noqa: E402
from callwarden.policy.loader import load_config  # noqa: E402

FINANCE = "board-packet/finance"
FINANCE_HOST = "finance.board.example"
FINANCE_RESOURCE = "https://finance.board.example/mcp"


@dataclass(frozen=True)
class Mode:
    name: str
    duration: float
    fresh_duration: float
    concurrencies: tuple[int, ...]
    generator: str  # "wrk" or "python"
    opa: bool
    extras: bool


MODES = {
    "full": Mode("full", 5.0, 3.0, (1, 16, 64), "wrk", True, True),
    "quick": Mode("quick", 3.0, 2.0, (1, 16, 64), "wrk", True, False),
    "smoke": Mode("smoke", 1.0, 1.0, (2,), "python", False, False),
}


# --- the scenario's inputs ------------------------------------------------------------------


@dataclass
class Inputs:
    config_dir: Path
    bodies: dict[str, Path]
    cached_token: str
    issuers: RunningIssuers
    workdir: Path

    @property
    def finance(self) -> LocalIssuer:
        return self.issuers["finance"]

    def mint(self) -> str:
        token: str = self.finance.mint("alice", FINANCE_RESOURCE, "board-agent", roles=["analyst"], ttl=3600)
        return token


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    body: str
    fresh_tokens: bool = False
    expect_deny: bool = False


SCENARIOS = (
    Scenario("allowed", "allowed"),
    Scenario("denied", "denied", expect_deny=True),
    Scenario("first-seen-token", "allowed", fresh_tokens=True),
    Scenario("batch-5", "batch"),
)
CEILING = (Scenario("allowed", "allowed"),)


def probe(url: str, inputs: Inputs, scenario: Scenario) -> None:
    """One request before the load: the system must answer this scenario the expected way."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Host": FINANCE_HOST, "Content-Type": "application/json"}
    headers["Authorization"] = f"Bearer {inputs.mint() if scenario.fresh_tokens else inputs.cached_token}"
    connection.request("POST", "/mcp", inputs.bodies[scenario.body].read_bytes(), headers)
    answer = connection.getresponse()
    body = answer.read().decode()
    connection.close()
    denied = "-32001" in body
    if (
        answer.status != 200
        or denied != scenario.expect_deny
        or (not denied and body != DIRECT_RESPONSE_BODY)
    ):
        raise RuntimeError(f"{scenario.name}: unexpected answer {answer.status} {body[:300]}")


class Runner:
    def __init__(self, mode: Mode, inputs: Inputs, sut_cpus: set[int] | None, load_cpus: set[int] | None):
        self.mode = mode
        self.inputs = inputs
        self.sut_cpus = sut_cpus
        self.load_cpus = load_cpus
        self._fresh_batches = 0

    def load(self, url: str, request: Request, concurrency: int, duration: float) -> LoadResult:
        if self.mode.generator == "python":
            return run_python(url, request, concurrency, duration)
        return run_wrk(url, request, concurrency, duration, self.load_cpus)

    def fresh_tokens(self, count: int) -> Path:
        """`count` tokens never sent before (each is a full signature check, then cached)."""
        self._fresh_batches += 1
        path = self.inputs.workdir / f"tokens-{self._fresh_batches}.txt"
        path.write_text("\n".join(self.inputs.mint() for _ in range(count)) + "\n")
        return path

    def request(self, scenario: Scenario, fresh: int = 0) -> Request:
        body = self.inputs.bodies[scenario.body]
        if scenario.fresh_tokens:
            return Request(FINANCE_HOST, "/mcp", body, tokens_file=self.fresh_tokens(fresh))
        return Request(FINANCE_HOST, "/mcp", body, token=self.inputs.cached_token)

    def measure(
        self,
        system: str,
        url: str,
        scenarios: tuple[Scenario, ...],
        meters: dict[str, Callable[[], float]],
        rps_hint: dict[int, float],
        *,
        concurrencies: tuple[int, ...] | None = None,
    ) -> list[dict[str, Any]]:
        """Each scenario at each concurrency; CPU of every metered process per request."""
        for scenario in scenarios:
            probe(url, self.inputs, scenario)
        warm = Request(FINANCE_HOST, "/mcp", self.inputs.bodies["allowed"], token=self.inputs.cached_token)
        self.load(url, warm, 16, min(1.0, self.mode.duration))
        rows = []
        for scenario in scenarios:
            for concurrency in concurrencies or self.mode.concurrencies:
                duration = self.mode.fresh_duration if scenario.fresh_tokens else self.mode.duration
                # First-seen tokens: as many as the cached-token rate could use (a first-seen
                # check is never faster), capped so minting stays a few seconds.
                fresh = int(min(20_000, max(200, rps_hint.get(concurrency, 2_000) * duration * 1.2)))
                request = self.request(scenario, fresh)
                before = {name: meter() for name, meter in meters.items()}
                load_before = load_average()[0]
                result = self.load(url, request, concurrency, duration)
                cpu = {name: meter() - before[name] for name, meter in meters.items()}
                row: dict[str, Any] = {
                    "system": system,
                    "scenario": scenario.name,
                    **result.to_json(),
                    "cpu_us_per_request": {
                        name: round(seconds * 1e6 / max(1, result.requests), 1)
                        for name, seconds in cpu.items()
                    },
                    "load_average": [round(load_before, 2), round(load_average()[0], 2)],
                }
                if scenario.fresh_tokens:
                    row["tokens_minted"] = fresh
                    row["fresh_fraction"] = round(min(1.0, fresh / max(1, result.requests)), 3)
                if scenario.name == "allowed":
                    rps_hint[concurrency] = max(rps_hint.get(concurrency, 0.0), result.rps)
                print(_summary_line(row), flush=True)
                rows.append(row)
        return rows

    def at_rate(self, system: str, url: str, rate: float) -> list[dict[str, Any]]:
        """Open-loop latency at `rate` requests/s (allowed, cached token): the p99 target's run."""
        if self.mode.generator != "wrk" or not have("h2load"):
            return []
        request = Request(FINANCE_HOST, "/mcp", self.inputs.bodies["allowed"], token=self.inputs.cached_token)
        try:
            result = run_h2load_rate(
                url,
                request,
                rate,
                duration=self.mode.duration,
                cpus=self.load_cpus,
                workdir=self.inputs.workdir,
            )
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"bench: {system} at {rate} req/s failed: {error}", file=sys.stderr)
            return []
        row = {"system": system, "scenario": "allowed-at-rate", **result.to_json()}
        print(_summary_line(row), flush=True)
        return [row]


def _summary_line(row: dict[str, Any]) -> str:
    cpu = " ".join(f"{k}={v}us" for k, v in row.get("cpu_us_per_request", {}).items())
    return (
        f"  {row['system']:<22} {row['scenario']:<17} c={row['concurrency']:<3} "
        f"{row['rps']:>9.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {cpu}"
        + (f"  errors {row['errors']}" if row["errors"] else "")
    )


@contextmanager
def envoy_for(
    ext_authz: list[str], workdir: Path, sut_cpus: set[int] | None, transport: str = "grpc"
) -> Iterator[EnvoyProcess]:
    servers = list(load_config([EXAMPLE]).servers.values())
    envoy = start_envoy(envoy_bootstrap(servers, ext_authz, transport), workdir, sut_cpus)
    try:
        yield envoy
    finally:
        envoy.stop()


@contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


# --- the whole run ----------------------------------------------------------------------------


def wait_for_quiet(threshold: float, max_wait: float) -> dict[str, Any]:
    """Poll the 1-minute load average until it is below `threshold` or `max_wait` passes."""
    started = time.monotonic()
    while load_average()[0] >= threshold and time.monotonic() - started < max_wait:
        print(f"bench: load average {load_average()[0]:.2f} >= {threshold}; waiting", flush=True)
        time.sleep(min(15.0, max(1.0, max_wait - (time.monotonic() - started))))
    return {
        "threshold": threshold,
        "waited_s": round(time.monotonic() - started, 1),
        "quiet": load_average()[0] < threshold,
        "load_average": [round(x, 2) for x in load_average()],
    }


def build_opa() -> tuple[str | None, str]:
    """The opa-envoy-plugin binary (built and cached by bench/build-opa.sh), or why not."""
    if shutil.which("go") is None:
        return None, "no Go toolchain on PATH (bench/build-opa.sh builds OPA's Envoy plugin with go)"
    done = subprocess.run(["bash", str(BENCH / "build-opa.sh")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None, f"bench/build-opa.sh failed: {done.stderr.strip()[-1500:]}"
    binary = done.stdout.strip().splitlines()[-1]
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout
    return binary, version.splitlines()[0].removeprefix("Version: ").strip() if version else "unknown"


def in_process(script: str, out: Path, cpus: set[int] | None, extra: list[str]) -> dict[str, Any] | None:
    """Run one of the in-process measurements (stages, scale, profile) in its own interpreter."""
    from harness import taskset

    command = [*taskset(cpus), sys.executable, str(BENCH / script), "--json", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        print(f"bench: {script} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def parse_cpus(text: str) -> set[int] | None:
    return {int(c) for c in text.split(",")} if text else None


def default_cpus() -> tuple[str, str]:
    """System under test on every core but the last, the load generator on the last one."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return "", ""
    return ",".join(str(c) for c in cores[:-1]), str(cores[-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    sut_default, load_default = default_cpus()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="shorter runs, no extras (~3 minutes)")
    speed.add_argument("--smoke", action="store_true", help="seconds; Python client, no OPA, no timings")
    parser.add_argument("--out-dir", default=str(BENCH), help="where REPORT.md and results/ go (bench/)")
    parser.add_argument("--no-opa", action="store_true", help="skip OPA's Envoy plugin")
    parser.add_argument(
        "--sut-cpus", default=sut_default, help=f"cores for Envoy + checker ({sut_default!r})"
    )
    parser.add_argument("--load-cpus", default=load_default, help=f"cores for load ({load_default!r})")
    parser.add_argument("--quiet-load", type=float, default=1.0, help="quiet: 1-min load average below this")
    parser.add_argument("--max-wait", type=float, default=0.0, help="seconds to wait for a quiet machine")
    args = parser.parse_args(argv)
    args.mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.mode.generator == "wrk" and not have("wrk"):
        parser.error("wrk is not installed: run bench/setup.sh (or use --smoke)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode: Mode = args.mode
    sut_cpus, load_cpus = parse_cpus(args.sut_cpus), parse_cpus(args.load_cpus)
    results_dir = Path(args.out_dir) / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    quiet = wait_for_quiet(args.quiet_load, args.max_wait) if args.max_wait > 0 else None
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode.name,
        "machine": machine_info(envoy_binary()),
        "wait_for_quiet": quiet,
        "pinning": {"system_under_test": args.sut_cpus or "none", "load_generator": args.load_cpus or "none"},
        "durations_s": {"per_run": mode.duration, "first_seen_token_run": mode.fresh_duration},
        "generator": mode.generator,
        "runs": [],
    }
    opa_binary, opa_note = (None, "skipped (--smoke or --no-opa)")
    if mode.opa and not args.no_opa:
        opa_binary, opa_note = build_opa()
    results["opa"] = {"built": opa_binary is not None, "version_or_reason": opa_note}

    with (
        tempfile.TemporaryDirectory(prefix="callwarden-bench-") as tmp,
        start_issuers({"finance": 0, "documents": 0, "workflow": 0}) as issuers,
    ):
        workdir = Path(tmp)
        inputs = Inputs(
            write_config(issuers, workdir / "config"), write_bodies(workdir), "", issuers, workdir
        )
        inputs.cached_token = inputs.mint()
        runner = Runner(mode, inputs, sut_cpus, load_cpus)
        measure_systems(runner, results, opa_binary)
        print("bench: the latency target's placement: the checker on a core of its own", flush=True)
        own_core(runner, results)
        print("bench: workers per pod", flush=True)
        results["per_pod"] = per_pod(runner, inputs, workdir)
        if mode.extras:
            results["extras"] = extras(runner, inputs, workdir)

    print("bench: in-process stages, scale and profile", flush=True)
    smoke = ["--smoke"] if args.smoke else []
    for name, script in (("stages", "stages.py"), ("scale", "scale.py"), ("profile", "profile_check.py")):
        results[name] = in_process(script, results_dir / f"{name}.json", sut_cpus, smoke)
    if mode.extras and shutil.which("py-spy"):  # optional: py-spy is not a dependency
        results["profile_live"] = in_process("profile_live.py", results_dir / "profile_live.json", None, [])
    results["load_average_at_end"] = [round(x, 2) for x in load_average()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["summary"] = report.summarise(results)
    (results_dir / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    (results_dir.parent / "REPORT.md").write_text(report.render(results))
    print(f"bench: wrote {results_dir.parent / 'REPORT.md'} and report.json in {results['elapsed_s']} s")
    return 0


def measure_systems(runner: Runner, results: dict[str, Any], opa_binary: str | None) -> None:
    """Envoy + callwarden, Envoy alone, Envoy + OPA: closed-loop runs, then the at-rate run."""
    inputs, workdir, sut_cpus = runner.inputs, runner.inputs.workdir, runner.sut_cpus
    runs: list[dict[str, Any]] = results["runs"]
    rps_hint: dict[int, float] = {}

    # Each transport's own half-maximum rate: the latency target is "at half of its own max".
    rates: dict[str, float] = {}
    for system, transport in ((report.CALLWARDEN_HTTP, "http"), (report.CALLWARDEN, "grpc")):
        print(f"bench: Envoy + callwarden over {transport} ext_authz", flush=True)
        service = start_callwarden(
            inputs.config_dir, workdir / f"cw-{transport}", cpus=sut_cpus, transport=transport
        )
        with (
            running(service) as cw,
            envoy_for(cw.addresses, workdir / f"envoy-cw-{transport}", sut_cpus, transport) as envoy,
        ):
            meters: dict[str, Callable[[], float]] = {"ext_authz": cw.cpu, "envoy": partial(envoy_cpu, envoy)}
            mine = runner.measure(system, envoy.url, SCENARIOS, meters, rps_hint)
            rates[system] = round(0.5 * max(r["rps"] for r in mine if r["scenario"] == "allowed"))
            runs += mine + runner.at_rate(system, envoy.url, rates[system])
    results["rate_for_latency_target"] = rates
    rate = rates[report.CALLWARDEN_HTTP]

    print("bench: Envoy alone (ceiling)", flush=True)
    with envoy_for([], workdir / "envoy-ceiling", sut_cpus) as envoy:
        meters = {"envoy": partial(envoy_cpu, envoy)}
        runs += runner.measure("envoy-alone", envoy.url, CEILING, meters, {})
        for each in sorted(set(rates.values())):
            runs += runner.at_rate("envoy-alone", envoy.url, each)

    if opa_binary is None:
        return
    print("bench: Envoy + OPA (opa-envoy-plugin)", flush=True)
    data = workdir / "opa-data.json"
    issuers = inputs.issuers
    jwks = {issuers[name].issuer: json.dumps(issuers[name].jwks()) for name in issuers}
    data.write_text(json.dumps({"bench": {"jwks": jwks}}))
    policy = BENCH / "opa" / "policy.rego"
    opa = start_opa(opa_binary, policy, data, workdir / "opa", cpus=sut_cpus, decision_logs=True)
    with running(opa), envoy_for(opa.addresses, workdir / "envoy-opa", sut_cpus) as envoy:
        meters = {"opa": opa.cpu, "envoy": partial(envoy_cpu, envoy)}
        runs += runner.measure("envoy+opa", envoy.url, SCENARIOS, meters, dict(rps_hint))
        runs += runner.at_rate("envoy+opa", envoy.url, rate)
    # OPA's console decision log carries the whole input (headers, raw body): show what it costs.
    quiet_opa = start_opa(opa_binary, policy, data, workdir / "opa-quiet", cpus=sut_cpus, decision_logs=False)
    with running(quiet_opa), envoy_for(quiet_opa.addresses, workdir / "envoy-opa-quiet", sut_cpus) as envoy:
        meters = {"opa": quiet_opa.cpu, "envoy": partial(envoy_cpu, envoy)}
        system = "envoy+opa (no decision log)"
        runs += runner.measure(system, envoy.url, SCENARIOS[:1], meters, {}, concurrencies=(16, 64))


def own_core(runner: Runner, results: dict[str, Any]) -> None:
    """The deployment's placement: the checker alone on the system-under-test cores, Envoy with
    the load generator on theirs (also for Envoy alone). The chart runs Envoy (the gateway
    Deployment) and ext_authz (its own Deployment) as separate pods, so a check crosses from
    one process's core to another's; in the main runs both share one core and every check
    also waits for the scheduler to switch between them.

    Per transport the closed-loop maximum here, then open loop at half of it, beside Envoy alone
    and two floors at the default transport's rate (`floors`): every system is started first,
    then `ROUNDS` rounds run each of them in turn, so that a slow minute of a shared machine
    hits them all alike; the rows kept are each system's medians over the rounds."""
    inputs, workdir = runner.inputs, runner.inputs.workdir
    checker_cpus, envoy_cpus = runner.sut_cpus, runner.load_cpus
    runs: list[dict[str, Any]] = results["runs"]
    targets: list[tuple[str, str, float]] = []  # (system, url, rate) of each open-loop run
    with ExitStack() as stack:
        for system, transport in ((report.CALLWARDEN_HTTP, "http"), (report.CALLWARDEN, "grpc")):
            name = system + report.OWN_CORE
            service = start_callwarden(
                inputs.config_dir, workdir / f"own-{transport}", cpus=checker_cpus, transport=transport
            )
            cw = stack.enter_context(running(service))
            envoy_dir = workdir / f"envoy-own-{transport}"
            envoy = stack.enter_context(envoy_for(cw.addresses, envoy_dir, envoy_cpus, transport))
            meters: dict[str, Callable[[], float]] = {"ext_authz": cw.cpu, "envoy": partial(envoy_cpu, envoy)}
            concurrencies = tuple(c for c in runner.mode.concurrencies if c > 1)
            mine = runner.measure(name, envoy.url, CEILING, meters, {}, concurrencies=concurrencies)
            runs += mine
            targets.append((name, envoy.url, round(0.5 * max(r["rps"] for r in mine))))
        rates = {name: rate for name, _, rate in targets}
        results["rate_for_latency_target"] |= rates
        ceiling = stack.enter_context(envoy_for([], workdir / "envoy-own-ceiling", envoy_cpus))
        targets += [
            (report.CEILING + report.OWN_CORE, ceiling.url, rate) for rate in sorted(set(rates.values()))
        ]
        floor_rate = rates[report.CALLWARDEN_HTTP + report.OWN_CORE]
        targets += [(name, url, floor_rate) for name, url in floors(stack, workdir, checker_cpus, envoy_cpus)]
        rounds: list[dict[str, Any]] = []
        for number in range(ROUNDS[runner.mode.name]):
            for system, url, rate in targets:
                for row in runner.at_rate(system, url, rate):
                    rounds.append({**row, "round": number})
    results["own_core_rounds"] = rounds
    runs += medians(rounds)


# Rounds of the own-core open-loop runs, per mode (smoke runs none: it has no open-loop generator).
ROUNDS = {"full": 3, "quick": 2, "smoke": 1}


def floors(
    stack: ExitStack, workdir: Path, checker_cpus: set[int] | None, envoy_cpus: set[int] | None
) -> list[tuple[str, str]]:
    """Two HTTP ext_authz checkers that decide nothing, each behind the gateway's Envoy (HTTP
    ext_authz bootstrap) in the own-core placement: callwarden's HTTP server answering a
    prebuilt allow (bench/transport.py), and a second Envoy answering 200 from a direct
    response (C++, no Python at all). What they add is what any ext_authz round trip adds
    here, whatever the checker decides. (system, url) of each."""
    servers = list(load_config([EXAMPLE]).servers.values())
    checker = stack.enter_context(running(start_checker("http", checker_cpus)))
    python_floor = start_envoy(
        envoy_bootstrap(servers, checker.addresses, "http"), workdir / "floor-py", envoy_cpus
    )
    stack.callback(python_floor.stop)
    # The ceiling's bootstrap answers the check request itself: Envoy's HTTP ext_authz keeps the
    # original Host and path, which its route answers with a 200 direct response.
    answering = start_envoy(envoy_bootstrap(servers, []), workdir / "floor-envoy-checker", checker_cpus)
    stack.callback(answering.stop)
    address = answering.url.removeprefix("http://")
    envoy_floor = start_envoy(
        envoy_bootstrap(servers, [address], "http"), workdir / "floor-envoy", envoy_cpus
    )
    stack.callback(envoy_floor.stop)
    return [
        (report.TRIVIAL_HTTP + report.OWN_CORE, python_floor.url),
        (report.ENVOY_AS_CHECKER + report.OWN_CORE, envoy_floor.url),
    ]


def medians(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (system, rate): the median of each latency percentile and of the rate over
    the rounds, with the rounds' p99s for the record."""
    grouped: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for row in rounds:
        grouped.setdefault((row["system"], row.get("target_rps")), []).append(row)
    rows = []
    for same in grouped.values():
        row = {key: value for key, value in same[0].items() if key != "round"}
        for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
            row[key] = statistics.median(r[key] for r in same)
        row["requests"] = sum(r["requests"] for r in same)
        row["errors"] = {}
        for each in same:
            for kind, count in each["errors"].items():
                row["errors"][kind] = row["errors"].get(kind, 0) + count
        row["rounds"] = len(same)
        row["p99_ms_by_round"] = [r["p99_ms"] for r in same]
        rows.append(row)
    return rows


def extras(runner: Runner, inputs: Inputs, workdir: Path) -> dict[str, Any]:
    """gRPC handler threads of one ext_authz process (pinned like the main runs; 4 is the
    default), allowed calls with a cached token at concurrency 64; the per-pod runs; the
    transports' own cost."""
    thread_rows: list[dict[str, Any]] = []
    for threads in (1, 2, 8):
        name = f"cw-t{threads}-pinned"
        service = start_callwarden(inputs.config_dir, workdir / name, cpus=runner.sut_cpus, threads=threads)
        with (
            running(service) as cw,
            envoy_for(cw.addresses, workdir / f"envoy-{name}", runner.sut_cpus) as envoy,
        ):
            meters: dict[str, Callable[[], float]] = {"ext_authz": cw.cpu, "envoy": partial(envoy_cpu, envoy)}
            system = f"envoy+callwarden grpc, {threads} threads (pinned)"
            for row in runner.measure(system, envoy.url, SCENARIOS[:1], meters, {}, concurrencies=(64,)):
                row["threads"] = threads
                thread_rows.append(row)
    return {
        "threads": thread_rows,
        "transport": transport_comparison(runner, workdir),
    }


def per_pod(runner: Runner, inputs: Inputs, workdir: Path) -> list[dict[str, Any]]:
    """`--workers 1` against `--workers 2` (SO_REUSEPORT, one pod), each transport, unpinned:
    the pod may use both cores (the load generator shares them), allowed calls with a cached
    token at the highest concurrency. Compare these rows with each other only."""
    rows: list[dict[str, Any]] = []
    concurrency = max(runner.mode.concurrencies)
    for transport in ("http", "grpc"):
        for workers in (1, 2):
            name = f"cw-{transport}-workers{workers}"
            service = start_callwarden(
                inputs.config_dir, workdir / name, cpus=None, workers=workers, transport=transport
            )
            with (
                running(service) as cw,
                envoy_for(cw.addresses, workdir / f"envoy-{name}", None, transport) as envoy,
            ):
                meters: dict[str, Callable[[], float]] = {
                    "ext_authz": cw.cpu,
                    "envoy": partial(envoy_cpu, envoy),
                }
                system = f"envoy+callwarden {transport}, {workers} worker(s) per pod"
                measured = runner.measure(
                    system, envoy.url, SCENARIOS[:1], meters, {}, concurrencies=(concurrency,)
                )
            for row in measured:  # the supervisor has stopped: every line is in the log now
                row["workers"], row["transport"] = workers, transport
                row["decisions_logged"] = _lines(workdir / name / "decisions.log")
            rows += measured
    return rows


def _lines(path: Path) -> int:
    with path.open("rb") as log:
        return sum(1 for _ in log)


def transport_comparison(runner: Runner, workdir: Path) -> list[dict[str, Any]]:
    """gRPC vs HTTP ext_authz, trivial checkers (bench/transport.py): the transport's own cost."""
    servers = list(load_config([EXAMPLE]).servers.values())
    rows = []
    for kind in ("grpc", "http"):
        checker = start_checker(kind, runner.sut_cpus)
        with running(checker):
            bootstrap = envoy_bootstrap(servers, checker.addresses, kind)
            envoy = start_envoy(bootstrap, workdir / f"envoy-transport-{kind}", runner.sut_cpus)
            try:
                meters: dict[str, Callable[[], float]] = {
                    "ext_authz": checker.cpu,
                    "envoy": partial(envoy_cpu, envoy),
                }
                system = f"envoy+trivial {kind} ext_authz"
                rows += runner.measure(system, envoy.url, SCENARIOS[:1], meters, {}, concurrencies=(16, 64))
            finally:
                envoy.stop()
    return rows


if __name__ == "__main__":
    sys.exit(main())
