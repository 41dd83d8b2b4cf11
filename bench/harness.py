"""The pieces the end-to-end bench starts and measures: processes, Envoy variants, load, CPU.

Everything listens on loopback ports the kernel picks. The system under test (Envoy and the
ext_authz process, or Envoy and OPA) can be pinned to some cores and the load generator to
others, so that the generator does not steal the CPU it is measuring.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from callwarden.demo.issuers import RunningIssuers  # noqa: E402
from callwarden.extauthz.envoy import (  # noqa: E402
    EXT_AUTHZ_CLUSTER,
    EXT_AUTHZ_FILTER,
    EnvoyProcess,
    render_bootstrap,
)
from callwarden.policy.model import McpServer  # noqa: E402

EXAMPLE = ROOT / "examples" / "board-packet"
BATCH_SIZE = 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DIRECT_RESPONSE_BODY = '{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'
_BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the scenario's configuration ---------------------------------------------------------------


def write_config(issuers: RunningIssuers, target: Path) -> Path:
    """The board-packet example, with the JWKS of issuers started here on free ports, without DPoP."""
    documents: list[dict[str, Any]] = []
    for file in sorted(EXAMPLE.glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(file.read_text()) if doc)
    for doc in documents:
        if doc["kind"] == "McpServer":
            # The benchmarks measure the default path, a bearer token; DPoP's per-request cost
            # (one more signature check) is its own line in stages.py.
            doc["spec"].pop("dpop", None)
            for issuer in doc["spec"]["issuers"]:
                name = next(n for n in issuers if issuers[n].issuer == issuer["issuer"])
                issuer["jwksUri"] = issuers[name].jwks_uri
    target.mkdir(parents=True, exist_ok=True)
    (target / "board-packet.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return target


def write_bodies(target: Path) -> dict[str, Path]:
    allowed = json.loads((EXAMPLE / "requests" / "query-q3-example-corp.json").read_text())
    denied = json.loads((EXAMPLE / "requests" / "query-q3-other-corp.json").read_text())
    batch = [{**allowed, "id": index} for index in range(1, BATCH_SIZE + 1)]
    bodies = {}
    for name, body in (("allowed", allowed), ("denied", denied), ("batch", batch)):
        path = target / f"{name}.json"
        path.write_bytes(json.dumps(body, separators=(",", ":")).encode())
        bodies[name] = path
    return bodies


# --- the machine ------------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_info(envoy_binary: str) -> dict[str, Any]:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    envoy_version = subprocess.run(
        [envoy_binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    match = re.search(r"version: \S+/(\d+\.\d+\.\d+)", envoy_version)
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": match.group(1) if match else envoy_version,
        "load_average_at_start": [round(x, 2) for x in load_average()],
    }


def cpu_us_per_call(operation: Callable[[], Any], loops: int = 20_000, repeats: int = 5) -> float:
    """CPU µs per call (every thread of this process), median of `repeats` timed loops.

    CPU time, not wall time: on a shared machine wall time also counts the neighbours' work,
    and CPU time of the whole process counts what the call leaves to background threads (the
    decision log's writer)."""
    for _ in range(max(1, loops // 10)):
        operation()
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(loops):
            operation()
        samples.append((time.process_time() - started) / loops * 1e6)
    return round(statistics.median(samples), 2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc/<pid>/stat (no psutil)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of `pid` (as `taskset -a -p`); threads started later inherit it."""
    if not cpus:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that just exited
            continue


def taskset(cpus: set[int] | None) -> list[str]:
    if not cpus or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_http(url: str, deadline: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with _NO_PROXY.open(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready at {url} in time")
        time.sleep(0.05)


# --- processes --------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a supervisor's workers), from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:  # it exited
            continue
        for task in tasks:
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


@dataclass
class Service:
    """A started subprocess with its log; its CPU is that of every process it started too."""

    name: str
    addresses: list[str]
    processes: list[subprocess.Popen[bytes]]
    logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [pid for p in self.processes for pid in descendants(p.pid)]

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                total += cpu_seconds(pid)
            except FileNotFoundError:  # exited between the listing and the read
                continue
        return total

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


_PORT_LINE = re.compile(rb"\(port (\d+)\)")
_HTTP_AUTHZ_PORT_LINE = re.compile(rb"HTTP ext_authz on port (\d+)")
_SUPERVISOR_LINE = re.compile(rb"supervising \d+ workers")


def start_callwarden(
    config_dir: Path,
    workdir: Path,
    *,
    cpus: set[int] | None,
    threads: int = 4,
    workers: int = 1,
    timeout: float = 60.0,
    transport: str = "grpc",
    switch_interval: float | None = None,
) -> Service:
    """`callwarden extauthz --workers N` in its own process, so its CPU can be read from /proc.

    `threads` is `--grpc-threads`; with `workers` > 1 the process is the supervisor and its
    workers share the ports (SO_REUSEPORT); the CPU counted is the supervisor's and theirs.
    `transport="http"` also serves Envoy's HTTP ext_authz, and the address is that server's.
    `switch_interval` sets the interpreter's `sys.setswitchinterval` before the CLI starts.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    command = [*taskset(cpus), sys.executable, *_cli(switch_interval), "extauthz"]
    command += ["--config", str(config_dir), "--listen", "127.0.0.1:0", "--workers", str(workers)]
    command += ["--grpc-threads", str(threads), "--audit-log", str(workdir / "decisions.log")]
    if transport == "http":
        command += ["--http-authz-listen", "127.0.0.1:0"]
    log_path = workdir / "extauthz.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT
    )
    service = Service("callwarden", [], [process], [log])
    try:
        ready = _SUPERVISOR_LINE if workers > 1 else _PORT_LINE
        _wait_port_line(process, log_path, time.monotonic() + timeout, ready)
        pattern = _HTTP_AUTHZ_PORT_LINE if transport == "http" else _PORT_LINE
        service.addresses.append(f"127.0.0.1:{_wait_port_line(process, log_path, time.monotonic(), pattern)}")
    except BaseException:
        service.stop()
        raise
    return service


def _cli(switch_interval: float | None) -> list[str]:
    if switch_interval is None:
        return ["-m", "callwarden.cli"]
    code = "import runpy, sys; sys.setswitchinterval(float(sys.argv.pop(1)))"
    code += "; runpy.run_module('callwarden.cli', run_name='__main__')"
    return ["-c", code, str(switch_interval)]


def _wait_port_line(
    process: subprocess.Popen[bytes], log_path: Path, deadline: float, pattern: re.Pattern[bytes]
) -> int:
    while True:
        match = pattern.search(log_path.read_bytes())
        if match:
            return int(match.group(1)) if match.groups() else 0
        if process.poll() is not None:
            raise RuntimeError(f"callwarden extauthz exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"callwarden extauthz not serving in time:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def start_opa(
    binary: str, policy: Path, data_file: Path, workdir: Path, *, cpus: set[int] | None, decision_logs: bool
) -> Service:
    """OPA's Envoy plugin serving ext_authz gRPC with the bench policy and the issuers' JWKS."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    config = {
        "plugins": {
            "envoy_ext_authz_grpc": {
                "addr": f"127.0.0.1:{grpc_port}",
                "path": "callwarden/bench/authz/result",
            }
        },
        # The equivalent of callwarden's validated-token cache (OPA's is off by default).
        "caching": {"inter_query_builtin_value_cache": {"named": {"io_jwt": {"max_num_entries": 10_000}}}},
        "decision_logs": {"console": decision_logs},
    }
    config_path = workdir / "opa-config.json"
    config_path.write_text(json.dumps(config))
    command = [*taskset(cpus), binary, "run", "--server", "--addr", f"127.0.0.1:{http_port}"]
    command += ["--config-file", str(config_path), "--log-level", "error", str(policy), str(data_file)]
    # Decision logs go to stdout, as a file: the counterpart of callwarden's decision log file.
    log = (workdir / "opa.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    service = Service("opa", [f"127.0.0.1:{grpc_port}"], [process], [log])
    try:
        wait_http(f"http://127.0.0.1:{http_port}/health?plugins", time.monotonic() + 30, "opa", process)
    except BaseException:
        service.stop()
        raise
    return service


# --- Envoy ------------------------------------------------------------------------------------


def _direct_response_routes(bootstrap: dict[str, Any], keep_ext_authz: bool) -> None:
    """Answer from Envoy itself: the upstream is out of the picture for every variant."""
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    # No access log: at tens of thousands of requests/s it would only measure the disk.
    hcm.pop("access_log", None)
    for virtual_host in hcm["route_config"]["virtual_hosts"]:
        for route in virtual_host["routes"]:
            if "direct_response" in route:  # a metadata document, answered by Envoy already
                continue
            route.pop("route")
            route["direct_response"] = {"status": 200, "body": {"inline_string": DIRECT_RESPONSE_BODY}}
            if not keep_ext_authz:
                route.pop("typed_per_filter_config")
    if not keep_ext_authz:
        max_bytes = 1_048_576
        hcm["http_filters"] = [
            # The ceiling buffers the body like ext_authz's with_request_body does.
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": _BUFFER_TYPE, "max_request_bytes": max_bytes},
            },
            *[f for f in hcm["http_filters"] if f["name"] != EXT_AUTHZ_FILTER],
        ]


def envoy_bootstrap(
    servers: Sequence[McpServer], ext_authz: Sequence[str], transport: str = "grpc"
) -> dict[str, Any]:
    """The gateway's bootstrap with direct responses, checking with every `ext_authz` address
    (round robin) over `transport`; with none, the ceiling: the same listener without ext_authz."""
    address = ext_authz[0] if ext_authz else "127.0.0.1:9"
    bootstrap = render_bootstrap(servers, ext_authz=address, transport=transport)
    _direct_response_routes(bootstrap, keep_ext_authz=bool(ext_authz))
    clusters = bootstrap["static_resources"]["clusters"]
    checker = next(c for c in clusters if c["name"] == EXT_AUTHZ_CLUSTER)
    if not ext_authz:
        clusters.remove(checker)
        return bootstrap
    endpoints = checker["load_assignment"]["endpoints"][0]["lb_endpoints"]
    for address in ext_authz[1:]:
        host, port = address.rsplit(":", 1)
        endpoints.append(
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}
        )
    return bootstrap


def start_envoy(bootstrap: Mapping[str, Any], workdir: Path, cpus: set[int] | None) -> EnvoyProcess:
    envoy = EnvoyProcess(bootstrap, workdir, concurrency=1, log_level="warning").start()
    pin(_envoy_pid(envoy), cpus)
    return envoy


def _envoy_pid(envoy: EnvoyProcess) -> int:
    process = envoy._process  # the managed Popen; EnvoyProcess has no public pid
    assert process is not None
    return process.pid


def envoy_cpu(envoy: EnvoyProcess) -> float:
    return cpu_seconds(_envoy_pid(envoy))
