"""N ext_authz worker processes per pod sharing the listening ports: `callwarden extauthz --workers N`.

Why processes: a check is CPU-bound Python, so one interpreter (one GIL) uses about one core
however many threads it has. A pod given two cores needs two interpreters.

How the parts are shared (the process the container starts is the supervisor, it never checks):

- **Ports.** The supervisor binds a placeholder socket with SO_REUSEPORT on the gRPC and the
  HTTP ext_authz address (port 0 is resolved there once, so a restarted worker gets the same
  port); each worker listens on the same address with SO_REUSEPORT (gRPC's `grpc.so_reuseport`,
  a reuse-port asyncio server for HTTP), and the kernel spreads new connections across the
  workers' listening sockets. The placeholders never listen, so they never take a connection.
- **Bundle.** Each worker loads (`--config`) or lists and watches (`--kubernetes`) the bundle
  itself. That is the single-process code unchanged, with no protocol between processes to get
  wrong, and a restarted worker starts from the current bundle, not from a copy the supervisor
  held. The cost: N watches per pod (N is its cores) and, for the moment after an edit, two
  workers may serve adjacent revisions, as two replicas already may.
- **Decision log.** Each worker writes its lines to a pipe of its own (an inherited fd); the
  supervisor copies whole lines from every pipe to the one sink (stdout, or `--audit-log`)
  under one lock, so lines of any length never interleave (a pipe write is atomic only up to
  PIPE_BUF, 4096 bytes, and a batch's line can be longer). A slow sink fills the pipe, then the
  worker's queue, and the worker's readiness goes false, so the pod's does.
- **/healthz, /readyz, /metrics** are the supervisor's, on `--http-listen`. Every worker serves
  its own on a loopback port it announces on its stdout (one JSON line). /readyz is ready when
  every worker runs and is ready; /metrics is every worker's metrics with a `worker` label, plus
  `callwarden_worker_restarts_total`. Nothing on the check path changes (prometheus-client's
  multiprocess mode would put an mmap write under a lock into every counter increment).
- **DPoP nonces** are HMACs: every worker must hold the same key. Without
  `--dpop-nonce-key-file` (the chart always mounts one), the supervisor writes a random key to a
  0600 temporary file, passes it to every worker and removes it when it stops.
- **Per-process state** stays per worker, as it is per replica: the token cache, the JWKS cache
  and the DPoP replay cache (a proof replayed to another worker is caught there only by its
  nonce and `iat` window, as on another replica).
- **Failures.** A worker that exits is restarted with backoff (0.5 s doubling to 10 s); until
  its replacement is ready, /readyz names it. SIGTERM (or SIGINT) to the supervisor: every
  worker gets SIGTERM and `grace` seconds to finish (each flushes its own decision log), then
  SIGKILL; the pipes are drained to their end before the supervisor exits. A worker whose
  supervisor died sees its stdin close and shuts down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import httpx2
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from callwarden.extauthz.dpop import MIN_NONCE_KEY_BYTES
from callwarden.extauthz.http_endpoints import HttpEndpoints, split_host_port

log = logging.getLogger(__name__)

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
MAX_WORKERS: Final = 64
START_TIMEOUT: Final = 120.0  # seconds a worker may take to serve (a Kubernetes list, a big bundle)
RESTART_FIRST: Final = 0.5
RESTART_MAX: Final = 10.0
STABLE_SECONDS: Final = 60.0  # a worker that ran this long restarts after RESTART_FIRST again
PROBE_TIMEOUT: Final = 2.0
_RELAY_CHUNK: Final = 1 << 16


# -- how many -------------------------------------------------------------------------------


def cpu_limit(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup's CPU quota
    (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), rounded up; at least 1.
    An unreadable or malformed quota counts as no quota."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        fields = []
    if fields:
        if len(fields) != 2 or fields[0] == "max":
            return None
        return _ratio(fields[0], fields[1])
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    """quota / period for two positive decimal integers (-1, "max", junk: no quota)."""
    if not (quota.isdigit() and period.isdigit() and quota.isascii() and period.isascii()):
        return None
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


# -- the shared ports -----------------------------------------------------------------------


def reserve(listen: str) -> tuple[socket.socket, str]:
    """A bound, never listening SO_REUSEPORT socket on `listen`, and the address with its port."""
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    placeholder = socket.socket(family, socket.SOCK_STREAM)
    try:
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        placeholder.bind((host, port))
    except OSError as error:
        placeholder.close()
        raise OSError(f"cannot listen on {listen}: {error.strerror}") from error
    bound = placeholder.getsockname()[1]
    return placeholder, f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"


# -- the supervisor --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the supervisor runs: `argv` is the `callwarden extauthz ...` command line as given."""

    argv: Sequence[str]
    workers: int
    listen: str
    http_listen: str | None = None
    http_authz_listen: str | None = None
    audit_path: str | None = None
    share_dpop_nonce_key: bool = False  # no --dpop-nonce-key-file given: make one for the workers
    grace: float = 10.0


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    relay: threading.Thread
    http_port: int
    started: float  # time.monotonic()


class WorkerFailed(Exception):
    """A worker did not come up (its own error went to the shared stderr)."""


WORKER_RESTARTS: Final = Counter(
    "callwarden_worker_restarts_total",
    "ext_authz worker processes restarted after they exited.",
    registry=None,
)


class Supervisor:
    """Runs `plan.workers` workers until `stop()`; see the module docstring for the shape."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._placeholders: list[socket.socket] = []
        self._overrides: list[str] = ["--workers=1", "--supervised", "--http-listen=127.0.0.1:0"]
        self._workers: list[_Worker | None] = [None] * plan.workers
        self._lock = threading.Lock()  # guards _workers
        self._sink_lock = threading.Lock()
        self._owned_sink = open(plan.audit_path, "ab") if plan.audit_path else None  # noqa: SIM115
        self._sink: IO[bytes] = self._owned_sink or sys.stdout.buffer
        self._stopping = threading.Event()
        self._client = httpx2.Client(timeout=PROBE_TIMEOUT, trust_env=False)
        # httpx2 logs every request at INFO: here, one per worker on every probe and scrape.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(WORKER_RESTARTS)
        self._registry.register(_WorkerMetrics(self))
        self._endpoints: HttpEndpoints | None = None
        self._monitor = threading.Thread(target=self._watch, name="callwarden-supervisor", daemon=True)
        self._nonce_key = _nonce_key_file() if plan.share_dpop_nonce_key else None
        if self._nonce_key is not None:
            self._overrides.append(f"--dpop-nonce-key-file={self._nonce_key}")
        self.grpc_address = self._share("--listen", plan.listen)
        self.http_authz_address = (
            self._share("--http-authz-listen", plan.http_authz_listen) if plan.http_authz_listen else None
        )

    def _share(self, flag: str, listen: str) -> str:
        placeholder, address = reserve(listen)
        self._placeholders.append(placeholder)
        self._overrides.append(f"{flag}={address}")
        return address

    @property
    def http_port(self) -> int | None:
        return self._endpoints.port if self._endpoints is not None else None

    def start(self) -> Supervisor:
        """Start every worker and wait until each serves; WorkerFailed (all stopped) if one does not."""
        try:
            for index in range(self.plan.workers):
                process, relay = self._spawn(index)
                self._workers[index] = _Worker(index, process, relay, 0, time.monotonic())
            for worker in self._workers:
                assert worker is not None
                worker.http_port = self._announced(worker.index, worker.process)
            if self.plan.http_listen is not None:
                self._endpoints = HttpEndpoints(
                    self.plan.http_listen, ready=self.readiness, registry=self._registry
                )
        except BaseException:
            self.stop()
            raise
        self._monitor.start()
        return self

    def _spawn(self, index: int) -> tuple[subprocess.Popen[bytes], threading.Thread]:
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "callwarden.cli", *self.plan.argv, *self._overrides]
        command.append(f"--decision-log-fd={write_end}")
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(write_end,)
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the worker holds it now: the pipe ends when the worker does
        relay = threading.Thread(
            target=self._relay, args=(index, read_end), name=f"callwarden-relay-{index}", daemon=True
        )
        relay.start()
        return process, relay

    def _announced(self, index: int, process: subprocess.Popen[bytes]) -> int:
        """The worker's private endpoints port, from the line it prints when it serves."""
        assert process.stdout is not None
        try:
            return read_announcement(process.stdout.fileno(), START_TIMEOUT)
        except WorkerFailed as error:
            if process.poll() is not None:
                raise WorkerFailed(f"worker {index} exited with code {process.returncode}: {error}") from None
            raise WorkerFailed(f"worker {index}: {error}") from None

    def _relay(self, index: int, read_end: int) -> None:
        if relay_lines(read_end, self._write):
            log.error("worker %d ended in the middle of a decision line; it was written truncated", index)

    def _write(self, lines: bytes) -> None:
        delay = RESTART_FIRST
        while True:
            try:
                with self._sink_lock:
                    self._sink.write(lines)
                    self._sink.flush()
                return
            except OSError as error:  # keep the lines: the pipes fill and the workers go unready
                log.error("decision log sink failed (%s); retrying in %.1fs", error, delay)
                time.sleep(delay)
                delay = min(2 * delay, RESTART_MAX)

    # -- health --

    def readiness(self) -> tuple[bool, str]:
        """Ready when every worker runs and says it is ready; what they say, once if they agree."""
        with self._lock:
            workers = list(self._workers)
        said: list[str] = []
        for index, worker in enumerate(workers):
            if worker is None or worker.process.poll() is not None:
                return False, f"worker {index} is not running (restarting)"
            try:
                answer = self._client.get(f"http://127.0.0.1:{worker.http_port}/readyz")
            except httpx2.HTTPError as error:
                return False, f"worker {index} does not answer /readyz: {error}"
            if answer.status_code != 200:
                return False, f"worker {index}: {answer.text.strip()}"
            said.append(answer.text.strip())
        agreed = said[0] if len(set(said)) == 1 else "; ".join(f"worker {i}: {t}" for i, t in enumerate(said))
        return True, f"{agreed} ({len(workers)} workers)"

    def worker_metrics(self) -> Iterator[tuple[int, str]]:
        """(index, exposition text) of every running worker that answers /metrics."""
        with self._lock:
            workers = [w for w in self._workers if w is not None and w.process.poll() is None]
        for worker in workers:
            try:
                answer = self._client.get(f"http://127.0.0.1:{worker.http_port}/metrics")
            except httpx2.HTTPError as error:
                log.warning("worker %d does not answer /metrics: %s", worker.index, error)
                continue
            yield worker.index, answer.text

    # -- restarts and shutdown --

    def _watch(self) -> None:
        delays = [RESTART_FIRST] * self.plan.workers
        while not self._stopping.wait(0.2):
            for index in range(self.plan.workers):
                worker = self._workers[index]
                if worker is not None and worker.process.poll() is None:
                    continue
                if worker is not None:
                    log.error("worker %d exited with code %s; restarting", index, worker.process.returncode)
                    WORKER_RESTARTS.inc()
                    if time.monotonic() - worker.started > STABLE_SECONDS:
                        delays[index] = RESTART_FIRST  # it ran for a while: not a crash loop
                    with self._lock:
                        self._workers[index] = None
                if self._stopping.wait(delays[index]):
                    return
                delays[index] = min(2 * delays[index], RESTART_MAX)
                replacement = self._replacement(index)
                with self._lock:
                    if not self._stopping.is_set():
                        self._workers[index] = replacement
                if replacement is not None and self._stopping.is_set():
                    _terminate([replacement.process], self.plan.grace)

    def _replacement(self, index: int) -> _Worker | None:
        try:
            process, relay = self._spawn(index)
        except OSError as error:
            log.error("worker %d did not restart: %s", index, error)
            return None
        try:
            return _Worker(index, process, relay, self._announced(index, process), time.monotonic())
        except WorkerFailed as error:
            log.error("worker %d did not restart: %s", index, error)
            _terminate([process], 0.0)
            relay.join(5)
            return None

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL after `grace`, drain the pipes; idempotent."""
        self._stopping.set()
        if self._monitor.is_alive():
            self._monitor.join()
        with self._lock:
            workers = [w for w in self._workers if w is not None]
            self._workers = [None] * self.plan.workers
        _terminate([w.process for w in workers], self.plan.grace)
        for worker in workers:
            worker.relay.join(5)
        if self._endpoints is not None:
            self._endpoints.stop()
            self._endpoints = None
        for placeholder in self._placeholders:
            placeholder.close()
        self._client.close()
        if self._owned_sink is not None and not self._owned_sink.closed:
            self._owned_sink.close()
        if self._nonce_key is not None:
            self._nonce_key.unlink(missing_ok=True)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w is not None]


def _nonce_key_file() -> Path:
    """A random DPoP nonce key in a file only this user reads, for every worker of this pod.

    Without one, each worker would make its own key and refuse the nonces the others issue (a
    client would be asked for a fresh nonce again and again). Hex: the file holds one key a line.
    """
    descriptor, name = tempfile.mkstemp(prefix="callwarden-dpop-nonce-", suffix=".key")  # mode 0600
    with os.fdopen(descriptor, "w") as key_file:
        key_file.write(secrets.token_hex(MIN_NONCE_KEY_BYTES) + "\n")
    return Path(name)


def _terminate(processes: Iterable[subprocess.Popen[bytes]], grace: float) -> None:
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker pid %d did not stop in %.0fs; killing it", process.pid, grace)
            process.kill()
            process.wait()
    for process in processes:
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


class _WorkerMetrics(Collector):
    """Every worker's /metrics, one family per name, each sample labelled with its worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for index, text in self._supervisor.worker_metrics():
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, family)
                samples = [s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples]
                if merged is family:
                    family.samples = samples
                else:
                    merged.samples.extend(samples)
        return list(families.values())


# -- between the two: the announcement and the decision lines ------------------------------

ANNOUNCEMENT: Final = b"callwarden-worker-serving "
MAX_LINE: Final = 4096  # of the worker's stdout before it announces


def read_announcement(fd: int, timeout: float) -> int:
    """The port in the worker's announcement line (`ANNOUNCEMENT` + `{"http_port": N}`) on `fd`.

    Other lines before it (a library that prints) are passed on to stderr. WorkerFailed when the
    stream ends first, `timeout` seconds pass, a line is longer than MAX_LINE, or the
    announcement is not exactly one JSON object with a port in 1..65535.
    """
    deadline = time.monotonic() + timeout
    buffered = b""
    while True:
        line, newline, rest = buffered.partition(b"\n")
        if newline:
            buffered = rest
            if line.startswith(ANNOUNCEMENT):
                return _port_of(line.removeprefix(ANNOUNCEMENT))
            sys.stderr.buffer.write(line + b"\n")
            continue
        if len(buffered) > MAX_LINE:
            raise WorkerFailed(f"a line of over {MAX_LINE} bytes before the announcement")
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise WorkerFailed(f"no announcement within {timeout:.0f}s")
        chunk = os.read(fd, MAX_LINE)
        if not chunk:
            raise WorkerFailed("its output ended before it announced that it serves")
        buffered += chunk


def _port_of(text: bytes) -> int:
    try:
        announced = json.loads(text)
    except ValueError as error:
        raise WorkerFailed(f"a malformed announcement {text[:200]!r}") from error
    port = announced.get("http_port") if isinstance(announced, dict) else None
    # bool is an int to isinstance: {"http_port": true} is not a port.
    if type(port) is not int or not 1 <= port <= 65535:
        raise WorkerFailed(f"an announcement without a valid port: {text[:200]!r}")
    return port


def relay_lines(read_end: int, write: Callable[[bytes], None]) -> bool:
    """Pass whole lines from the pipe `read_end` to `write` until the pipe ends, then close it.

    True if the stream ended inside a line (a worker killed mid-write): that last part is
    written too, ended with a newline, rather than lost.
    """
    partial = bytearray()
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(_RELAY_CHUNK):
            partial += chunk
            end = partial.rfind(b"\n") + 1
            if end:
                write(bytes(partial[:end]))
                del partial[:end]
    if partial:
        write(bytes(partial) + b"\n")
    return bool(partial)


# -- the worker's side -----------------------------------------------------------------------


def announce(http_port: int | None) -> None:
    """Tell the supervisor this worker serves, and where its own endpoints are (one line).

    Then stdout points at stderr: nobody reads the pipe after this line, and a stray print
    into a full pipe would block the worker."""
    sys.stdout.buffer.write(ANNOUNCEMENT + json.dumps({"http_port": http_port}).encode() + b"\n")
    sys.stdout.buffer.flush()
    os.dup2(2, 1)


def watch_lifeline(stop: threading.Event) -> None:
    """Set `stop` when stdin closes: the supervisor is gone (a pipe end closes with its process)."""

    def wait() -> None:
        # The raw fd, not sys.stdin: a daemon thread blocked in a buffered read would hold its
        # lock when the interpreter shuts down (a fatal error).
        while os.read(0, 4096):
            pass
        stop.set()

    threading.Thread(target=wait, name="callwarden-lifeline", daemon=True).start()


def decision_stream(fd: int) -> IO[str]:
    """The worker's decision-log pipe, as the text stream DecisionLog writes to."""
    return os.fdopen(fd, "w", encoding="utf-8")


def run_supervisor(plan: Plan, wait: threading.Event) -> None:
    """Start the workers, report where they serve, block until `wait` is set, stop them."""
    supervisor = Supervisor(plan).start()
    try:
        also = ""
        if supervisor.http_authz_address is not None:
            also = f", HTTP ext_authz on port {split_host_port(supervisor.http_authz_address)[1]}"
        if supervisor.http_port is not None:
            also += f", /metrics /healthz /readyz on port {supervisor.http_port}"
        port = split_host_port(supervisor.grpc_address)[1]
        print(
            f"callwarden: ext_authz supervising {plan.workers} workers on {plan.listen} (port {port}){also}",
            file=sys.stderr,
            flush=True,
        )
        wait.wait()
    finally:
        supervisor.stop()
