"""Load generators: wrk (closed loop, fixed concurrency), h2load (open loop, fixed rate), and a
small Python client for the smoke mode (no generator installed, timings meaningless).

Every generator returns a `LoadResult`; latencies are in milliseconds.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import taskset

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "mcp.lua"


@dataclass(frozen=True)
class Request:
    """What every request of a run sends: Host, body, and one token or a file of tokens."""

    host: str
    path: str
    body_file: Path
    token: str = ""
    tokens_file: Path | None = None


@dataclass
class LoadResult:
    generator: str
    concurrency: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    target_rps: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run_wrk(
    url: str, request: Request, concurrency: int, duration: float, cpus: set[int] | None
) -> LoadResult:
    """Closed loop: `concurrency` connections, each sending its next request on the last answer."""
    threads = 1 if concurrency < 32 else 2
    env = {
        **os.environ,
        "BENCH_WRK_BODY": str(request.body_file),
        "BENCH_WRK_HOST": request.host,
        "BENCH_WRK_TOKEN": request.token,
        "BENCH_WRK_THREADS": str(threads),
    }
    if request.tokens_file is not None:
        env["BENCH_WRK_TOKENS"] = str(request.tokens_file)
    command = [*taskset(cpus), "wrk", "-t", str(threads), "-c", str(concurrency)]
    command += ["-d", f"{duration:g}s", "--timeout", "5s", "-s", str(WRK_SCRIPT), url + request.path]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=duration + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}{done.stdout[-2000:]}")
    summary = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = summary["duration_us"] / 1e6
    latency = summary["latency_us"]
    return LoadResult(
        generator="wrk",
        concurrency=concurrency,
        requests=summary["requests"],
        duration_s=round(seconds, 3),
        rps=round(summary["requests"] / seconds, 1),
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        errors={k: v for k, v in summary["errors"].items() if v},
    )


def run_h2load_rate(
    url: str,
    request: Request,
    rate: float,
    *,
    duration: float,
    cpus: set[int] | None,
    workdir: Path,
    clients: int = 16,
) -> LoadResult:
    """Open loop at `rate` requests/s from `clients` independent clients, latency from each
    client's per-request log.

    One h2load process per client (`-c 1`), started one after another: h2load's `--rps` timer
    fires for all the clients of one process at the same instant, so `-c 8` in one process
    sent bursts of 8 simultaneous requests (seen in strace: 7-8 requests per epoll wake-up,
    then nothing for 1/rate-per-client), which measures a single-threaded checker's queue
    behind its own burst, not its latency at that rate. Separate processes start at
    independent phases, as independent agents do. Each client has one request in flight
    (HTTP/1.1): at 16 clients and a few thousand requests/s, each waits several milliseconds
    between sends, far longer than the latencies measured, so sends are not held back.
    """
    per_client = rate / clients
    common = [*taskset(cpus), "h2load", "--h1", "-c", "1", "-t", "1", "--rps", f"{per_client:.2f}"]
    common += ["-D", f"{duration:g}", "--warm-up-time", "1", "-d", str(request.body_file)]
    # `:authority`, not `host`: h2load adds its own Host for HTTP/1.1 and Envoy refuses two.
    common += ["-H", f":authority: {request.host}", "-H", "content-type: application/json"]
    common += ["-N", "5"]  # a connection silent for 5 s is an error, not a hang
    if request.token:
        common += ["-H", f"authorization: Bearer {request.token}"]
    logs = [workdir / f"h2load-{int(rate)}-{index}.tsv" for index in range(clients)]
    processes = []
    for log_file in logs:
        command = [*common, "--log-file", str(log_file), url + request.path]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(1 / rate)  # spread the first sends; spawning adds its own jitter
    failures = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if process.returncode != 0:
            failures.append(f"h2load failed ({process.returncode}): {err[-1000:]}{out[-1000:]}")
    rows = []
    for log_file in logs:
        if log_file.exists():
            rows += [line.split("\t") for line in log_file.read_text().splitlines() if line.strip()]
            log_file.unlink()
    if failures:
        raise RuntimeError("; ".join(failures))
    statuses = [int(row[1]) for row in rows]
    latencies = sorted(int(row[2]) / 1000 for row in rows)
    started = [int(row[0]) for row in rows]
    seconds = (max(started) - min(started)) / 1e6 if len(started) > 1 else duration
    failed = sum(1 for status in statuses if status != 200)
    errors = {"status": failed} if failed else {}
    return _result("h2load", clients, latencies, seconds, errors=errors, target=rate)


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _result(
    generator: str,
    concurrency: int,
    latencies: list[float],
    seconds: float,
    *,
    errors: dict[str, int],
    target: float | None = None,
) -> LoadResult:
    ordered = sorted(latencies)
    return LoadResult(
        generator=generator,
        concurrency=concurrency,
        requests=len(ordered),
        duration_s=round(seconds, 3),
        rps=round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=round(_percentile(ordered, 0.50), 3),
        p90_ms=round(_percentile(ordered, 0.90), 3),
        p99_ms=round(_percentile(ordered, 0.99), 3),
        max_ms=round(ordered[-1], 3) if ordered else 0.0,
        errors=errors,
        target_rps=target,
    )


def run_python(url: str, request: Request, concurrency: int, duration: float) -> LoadResult:
    """Closed loop from Python threads (the smoke mode): proves the wiring, not the speed."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = request.body_file.read_bytes()
    tokens = request.tokens_file.read_text().split() if request.tokens_file is not None else []
    latencies: list[float] = []
    errors = {"status": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    counter = iter(range(10**9))

    def client() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < deadline:
            token = tokens[next(counter) % len(tokens)] if tokens else request.token
            headers = {"Host": request.host, "Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            started = time.perf_counter()
            connection.request("POST", request.path, body, headers)
            answer = connection.getresponse()
            answer.read()
            mine.append((time.perf_counter() - started) * 1000)
            failed += answer.status >= 400
        connection.close()
        with lock:
            latencies.extend(mine)
            errors["status"] += failed

    started = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.monotonic() - started
    return _result("python", concurrency, latencies, seconds, errors={k: v for k, v in errors.items() if v})
