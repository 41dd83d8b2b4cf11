"""`callwarden extauthz --workers N`: N worker processes behind one pair of ports, one decision log.

The real command in its own process (the supervisor and its workers), the board-packet example
with the demo MCP servers and issuers, and a real Envoy in front. Which worker answered is read
from the supervisor's /metrics (every sample carries a `worker` label).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import yaml

from callwarden.demo.issuers import DEFAULT_ISSUERS, RunningIssuers, start_issuers
from callwarden.demo.run import EXAMPLE, localize
from callwarden.demo.servers import DEFAULT_PORTS, RunningServers, start_servers
from callwarden.extauthz.decide import DECISION_HEADER
from callwarden.extauthz.envoy import render_bootstrap
from callwarden.extauthz.workers import (
    ANNOUNCEMENT,
    MAX_LINE,
    WorkerFailed,
    cpu_limit,
    read_announcement,
    relay_lines,
)
from callwarden.policy.loader import Config, load_config
from tests.support.datapath import ALLOWED_CALLS, tools_call
from tests.support.envoy import start_envoy

ROOT = Path(__file__).resolve().parents[1]
_READY_LINE = re.compile(
    r"supervising (\d+) workers .*\(port (\d+)\), HTTP ext_authz on port (\d+), "
    r"/metrics /healthz /readyz on port (\d+)"
)


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_authz_port: int
    http_port: int
    stderr: Path

    def get(self, path: str) -> httpx2.Response:
        return httpx2.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=5, trust_env=False)

    def workers(self) -> list[int]:
        """Pids of the running workers (the supervisor's children, whichever thread started them)."""
        pids = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except FileNotFoundError:  # a thread that just ended
                continue
        return sorted(pids)

    def decisions_by_worker(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("callwarden_decisions_total{"):
                worker = re.search(r'worker="(\d+)"', line)
                assert worker is not None, line
                counts[worker.group(1)] = counts.get(worker.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
        return counts


def _write_config(config: Config, target: Path) -> Path:
    objects = [
        obj.model_dump(mode="json", by_alias=True, exclude_none=True)
        for obj in (*config.servers.values(), *config.policies.values())
    ]
    for obj in objects:  # the example's finance server requires DPoP; these tests send Bearer tokens
        if obj["kind"] == "McpServer":
            obj["spec"].pop("dpop", None)
    target.mkdir()
    (target / "board-packet.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return target


@contextmanager
def supervised(config_dir: Path, workdir: Path, *flags: str) -> Iterator[Supervised]:
    command = [sys.executable, "-m", "callwarden.cli", "extauthz", "--config", str(config_dir)]
    command += [
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--http-authz-listen",
        "127.0.0.1:0",
    ]
    stderr = workdir / "extauthz.log"
    with stderr.open("wb") as sink:
        process = subprocess.Popen([*command, *flags], stderr=sink, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while not (match := _READY_LINE.search(stderr.read_text())):
            assert process.poll() is None, stderr.read_text()[-4000:]
            assert time.monotonic() < deadline, stderr.read_text()[-4000:]
            time.sleep(0.05)
        _, grpc, http_authz, http = (int(group) for group in match.groups())
        yield Supervised(process, grpc, http_authz, http, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


@dataclass
class Scenario:
    config_dir: Path
    issuers: RunningIssuers
    servers: RunningServers
    config: Config

    def token(self) -> str:
        resource = self.config.servers["board-packet/finance"].spec.resource
        token: str = self.issuers["finance"].mint("alice", resource, "board-agent", roles=["analyst"])
        return token


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    with (
        start_servers(dict.fromkeys(DEFAULT_PORTS, 0)) as servers,
        start_issuers(dict.fromkeys(DEFAULT_ISSUERS, 0)) as issuers,
    ):
        config = localize(load_config([EXAMPLE]), servers, issuers)
        config_dir = _write_config(config, tmp_path_factory.mktemp("workers") / "config")
        yield Scenario(config_dir, issuers, servers, config)


def _post(client: httpx2.Client, url: str, scenario: Scenario, body: bytes) -> httpx2.Response:
    host = scenario.config.servers["board-packet/finance"].spec.route.hosts[0]
    headers = {
        "host": host,
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "authorization": f"Bearer {scenario.token()}",
    }
    return client.post(f"{url}/mcp", content=body, headers=headers)


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_two_workers_serve_through_envoy_and_log_every_decision_once_in_whole_lines(
    scenario: Scenario, tmp_path: Path, transport: str
) -> None:
    audit = tmp_path / "decisions.jsonl"
    ledger = scenario.servers.ledgers["finance"]
    executed_before = len(ledger.calls())
    tool, arguments = ALLOWED_CALLS["finance"]
    # A denied call naming a long entity: its decision line (which carries the mapped request)
    # is longer than PIPE_BUF (4096 bytes), and must still reach the log whole.
    denied = tools_call(tool, {**arguments, "entity": "x" * 5000})
    denial_ids = []
    with supervised(scenario.config_dir, tmp_path, "--workers", "2", "--audit-log", str(audit)) as running:
        port = running.http_authz_port if transport == "http" else running.grpc_port
        servers = list(scenario.config.servers.values())
        bootstrap = render_bootstrap(servers, ext_authz=f"127.0.0.1:{port}", transport=transport)
        with start_envoy(bootstrap, tmp_path / f"envoy-{transport}") as envoy:
            for round_number in range(30):  # a new connection each round: the kernel spreads them
                with httpx2.Client(timeout=10, trust_env=False) as client:
                    if round_number % 2:
                        response = _post(client, envoy.url, scenario, denied)
                        assert response.json()["error"]["code"] == -32001
                        denial_ids.append(response.headers[DECISION_HEADER])
                    else:
                        response = _post(client, envoy.url, scenario, tools_call(tool, arguments))
                assert response.status_code == 200, response.text
            by_worker = running.decisions_by_worker()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    allow_ids = [call.decision_id for call in ledger.calls()[executed_before:]]
    assert sorted(line["decision_id"] for line in lines) == sorted(allow_ids + denial_ids)
    assert len(lines) == 30 and len(set(allow_ids + denial_ids)) == 30
    assert any(len(json.dumps(line)) > 4096 for line in lines)
    assert sum(by_worker.values()) == 30


@pytest.mark.integration
def test_new_connections_to_the_shared_port_are_spread_over_the_workers(
    scenario: Scenario, tmp_path: Path
) -> None:
    with supervised(scenario.config_dir, tmp_path, "--workers", "2") as running:
        for _ in range(32):  # each a connection of its own: all on one worker has odds 2**-31
            with httpx2.Client(timeout=10, trust_env=False) as client:
                allowed = tools_call(*ALLOWED_CALLS["finance"])
                answer = _post(client, f"http://127.0.0.1:{running.http_authz_port}", scenario, allowed)
            assert answer.status_code == 200 and DECISION_HEADER in answer.headers
        by_worker = running.decisions_by_worker()
    assert set(by_worker) == {"0", "1"} and sum(by_worker.values()) == 32


@pytest.mark.integration
def test_sigterm_to_the_supervisor_stops_every_worker(scenario: Scenario, tmp_path: Path) -> None:
    with supervised(scenario.config_dir, tmp_path, "--workers", "2") as running:
        workers = running.workers()
        assert len(workers) == 2
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.integration
def test_a_killed_worker_fails_readiness_until_it_is_restarted(scenario: Scenario, tmp_path: Path) -> None:
    with supervised(scenario.config_dir, tmp_path, "--workers", "2") as running:
        assert running.get("/readyz").status_code == 200
        victim = running.workers()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (answer := running.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readiness never noticed the dead worker"
            time.sleep(0.02)
        # Either the supervisor saw it exit, or it probed the dead worker's port first.
        assert answer.status_code == 503 and re.search(
            r"worker \d (is not running|does not answer)", answer.text
        )
        deadline = time.monotonic() + 60
        while running.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, running.stderr.read_text()[-3000:]
            time.sleep(0.1)
        assert victim not in running.workers() and len(running.workers()) == 2
        assert "callwarden_worker_restarts_total 1.0" in running.get("/metrics").text


@pytest.mark.integration
def test_workers_share_one_dpop_nonce_key_the_supervisor_made_and_removes(
    scenario: Scenario, tmp_path: Path
) -> None:
    with supervised(scenario.config_dir, tmp_path, "--workers", "2") as running:
        flags = {
            arg
            for pid in running.workers()
            for arg in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if arg.startswith("--dpop-nonce-key-file=")
        }
        assert len(flags) == 1, flags  # one key file, the same for both
        key_file = Path(flags.pop().split("=", 1)[1])
        assert key_file.stat().st_mode & 0o777 == 0o600
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0
    assert not key_file.exists()


@pytest.mark.integration
def test_a_worker_whose_supervisor_died_stops_by_itself(scenario: Scenario, tmp_path: Path) -> None:
    with supervised(scenario.config_dir, tmp_path, "--workers", "2") as running:
        workers = running.workers()
        running.process.kill()
        running.process.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived its supervisor"
            time.sleep(0.1)


@pytest.mark.parametrize("workers", ["0", "-1", "65"])
def test_a_worker_count_out_of_range_is_an_input_error(
    workers: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callwarden.cli import main

    config = tmp_path / "empty.yaml"
    config.write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["extauthz", "--config", str(config), "--workers", workers])
    assert exited.value.code == 2
    assert "--workers must be between 1 and 64" in capsys.readouterr().err


def test_a_configuration_that_does_not_load_fails_before_any_worker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callwarden.cli import main

    config = tmp_path / "broken.yaml"
    config.write_text("kind: McpServer\n")
    with pytest.raises(SystemExit) as exited:
        main(["extauthz", "--config", str(config), "--workers", "2", "--listen", "127.0.0.1:0"])
    assert exited.value.code == 2
    assert "invalid configuration" in capsys.readouterr().err


# --- the default worker count: the CPU limit -------------------------------------------------

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, AFFINITY),
        ({"cpu.max": "max 100000\n"}, AFFINITY),
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "150000 100000\n"}, min(2, AFFINITY)),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "6400000 100000\n"}, AFFINITY),
        ({"cpu.max": "0 100000\n"}, AFFINITY),
        ({"cpu.max": "100000 0\n"}, AFFINITY),
        ({"cpu.max": "100000\n"}, AFFINITY),
        ({"cpu.max": "1e5 100000\n"}, AFFINITY),
        ({"cpu.max": "-100000 100000\n"}, AFFINITY),
        ({"cpu.max": "\uff11\uff10\uff10 100\n"}, AFFINITY),  # fullwidth digits: isdigit, not ASCII
        ({"cpu.max": "100000 100000 100000\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "100000\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "junk\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
    ],
    ids=[
        "no-cgroup",
        "v2-unlimited",
        "v2-one-core",
        "v2-one-and-a-half-rounds-up",
        "v2-half-a-core-is-one",
        "v2-more-than-the-affinity",
        "v2-zero-quota",
        "v2-zero-period",
        "v2-one-field",
        "v2-not-decimal",
        "v2-negative",
        "v2-unicode-digits",
        "v2-three-fields",
        "v1-one-core",
        "v1-unlimited",
        "v1-no-period",
        "v1-junk",
    ],
)
def test_the_default_worker_count_is_the_cpu_limit(
    files: dict[str, str], expected: int, tmp_path: Path
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit(tmp_path) == expected


# --- between supervisor and worker: the announcement and the decision lines ----------------


def _pipe_with(data: bytes, *, close: bool = True) -> int:
    """The read end of a pipe holding `data` (closed for writing unless `close` is False)."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    if close:
        os.close(write_end)
    return read_end


def test_the_announcement_gives_the_workers_port_after_any_stray_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    read_end = _pipe_with(b"a library printed this\n" + ANNOUNCEMENT + b'{"http_port": 40123}\n')
    try:
        assert read_announcement(read_end, 5) == 40123
    finally:
        os.close(read_end)
    assert "a library printed this" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "ended before it announced"),
        (b"serving\n", "ended before it announced"),
        (ANNOUNCEMENT + b'{"http_port": 40123}', "ended before it announced"),  # truncated
        (ANNOUNCEMENT + b"{not json}\n", "malformed announcement"),
        (ANNOUNCEMENT + b'{"http_port": 1}{"http_port": 2}\n', "malformed announcement"),
        (ANNOUNCEMENT + b'{"http_port": "40123"}\n', "without a valid port"),
        (ANNOUNCEMENT + b'{"http_port": true}\n', "without a valid port"),
        (ANNOUNCEMENT + b'{"http_port": 0}\n', "without a valid port"),
        (ANNOUNCEMENT + b'{"http_port": 65536}\n', "without a valid port"),
        (ANNOUNCEMENT + b'{"http_port": 4.5e4}\n', "without a valid port"),
        (ANNOUNCEMENT + b'{"port": 40123}\n', "without a valid port"),
        (ANNOUNCEMENT + b"[40123]\n", "without a valid port"),
        (ANNOUNCEMENT + b"null\n", "without a valid port"),
        (ANNOUNCEMENT + '{"http_port": \uff14\uff10}\n'.encode(), "malformed announcement"),
        (b"x" * (MAX_LINE + 10), "a line of over"),
    ],
    ids=[
        "nothing",
        "no-announcement",
        "truncated",
        "not-json",
        "two-objects",
        "port-as-string",
        "port-as-bool",
        "port-zero",
        "port-too-large",
        "port-as-float",
        "wrong-key",
        "not-an-object",
        "null",
        "fullwidth-digits",
        "endless-line",
    ],
)
def test_a_bad_announcement_fails_the_worker_with_the_reason(data: bytes, why: str) -> None:
    read_end = _pipe_with(data)
    try:
        with pytest.raises(WorkerFailed, match=why):
            read_announcement(read_end, 5)
    finally:
        os.close(read_end)


def test_a_worker_that_never_announces_fails_after_the_timeout() -> None:
    read_end = _pipe_with(b"", close=False)  # the write end stays open: silence, not an end
    started = time.monotonic()
    try:
        with pytest.raises(WorkerFailed, match="no announcement within"):
            read_announcement(read_end, 0.2)
    finally:
        os.close(read_end)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("chunks", "lines", "truncated"),
    [
        ([b'{"a":1}\n{"b":2}\n'], [b'{"a":1}\n{"b":2}\n'], False),
        ([b'{"a":', b'1}\n{"b"', b":2}\n"], [b'{"a":1}\n', b'{"b":2}\n'], False),
        ([b"x" * 100_000 + b"\n"], [b"x" * 100_000 + b"\n"], False),
        ([b'{"a":1}\n{"b":'], [b'{"a":1}\n', b'{"b":\n'], True),
        ([b""], [], False),
        (['{"\u00e9\u2028":1}\n'.encode()], ['{"\u00e9\u2028":1}\n'.encode()], False),
    ],
    ids=["whole-lines", "split-mid-line", "over-the-pipe-buffer", "ends-mid-line", "empty", "unicode"],
)
def test_the_relay_passes_only_whole_lines(chunks: list[bytes], lines: list[bytes], truncated: bool) -> None:
    read_end, write_end = os.pipe()
    written: list[bytes] = []

    def writer() -> None:
        for chunk in chunks:
            os.write(write_end, chunk)
            time.sleep(0.01)  # separate reads
        os.close(write_end)

    thread = threading.Thread(target=writer)
    thread.start()
    assert relay_lines(read_end, written.append) is truncated
    thread.join()
    assert all(part.endswith(b"\n") for part in written)
    assert b"".join(written) == b"".join(lines)
