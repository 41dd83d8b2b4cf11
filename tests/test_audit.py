"""The decision log: one line per decision, nothing lost to a slow or failing sink, flush on close."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from callwarden.extauthz.audit import BACKLOG_WAIT, DecisionLog, log_time, new_decision_id
from callwarden.extauthz.metrics import REGISTRY

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class GatedSink(io.StringIO):
    """A sink slower than the checks: every write waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.gate.wait(10)
        return super().write(text)


class FailingSink(io.StringIO):
    """A sink that raises while `failing` is set, as a full disk or a closed pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = threading.Event()
        self.failing.set()

    def write(self, text: str) -> int:
        if self.failing.is_set():
            raise OSError(28, "No space left on device")
        return super().write(text)


@pytest.fixture
def make_log() -> Iterator[Callable[..., DecisionLog]]:
    """Builds decision logs and closes them after the test, whatever state their sink is in."""
    created: list[DecisionLog] = []

    def make(*args: Any, **kwargs: Any) -> DecisionLog:
        decision_log = DecisionLog(*args, **kwargs)
        created.append(decision_log)
        return decision_log

    yield make
    for decision_log in created:
        with contextlib.suppress(TimeoutError):  # the test left its sink failing on purpose
            decision_log.close(timeout=0.2)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def lines_of(sink: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in sink.getvalue().splitlines()]


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_every_decision_is_one_line_across_a_multithreaded_burst(
    make_log: Callable[..., DecisionLog],
) -> None:
    sink = io.StringIO()
    decision_log = make_log(sink)
    written_before = metric("callwarden_audit_lines_total")
    recorded: list[list[str]] = [[] for _ in range(16)]

    def burst(worker: int) -> None:
        for n in range(250):
            decision_id = new_decision_id()
            recorded[worker].append(decision_id)
            decision_log.record({"decision_id": decision_id, "worker": worker, "n": n})

    workers = [threading.Thread(target=burst, args=(worker,)) for worker in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    decision_log.close()

    lines = lines_of(sink)
    assert len(lines) == 4000
    assert sorted(line["decision_id"] for line in lines) == sorted(i for ids in recorded for i in ids)
    assert decision_log.lines_written == 4000
    assert metric("callwarden_audit_lines_total") - written_before == 4000


def test_lines_from_one_thread_keep_their_order(make_log: Callable[..., DecisionLog]) -> None:
    sink = io.StringIO()
    decision_log = make_log(sink)
    for n in range(500):
        decision_log.record({"n": n})
    decision_log.flush()
    assert [line["n"] for line in lines_of(sink)] == list(range(500))


def test_slow_sink_backlogs_the_log_and_loses_nothing(make_log: Callable[..., DecisionLog]) -> None:
    sink = GatedSink()
    decision_log = make_log(sink, capacity=2)
    backlog_before = metric("callwarden_audit_backlog_events_total")
    for n in range(6):
        started = time.monotonic()
        decision_log.record({"n": n})
        assert time.monotonic() - started < BACKLOG_WAIT + 0.5  # bounded wait, never stuck
    assert not decision_log.healthy
    assert decision_log.backlog_events >= 1
    assert decision_log.pending == 6
    assert metric("callwarden_audit_backlog_events_total") - backlog_before == decision_log.backlog_events

    sink.gate.set()
    decision_log.flush()
    assert [line["n"] for line in lines_of(sink)] == list(range(6))
    assert decision_log.healthy


def test_failing_sink_counts_errors_keeps_lines_and_writes_them_once_it_recovers(
    make_log: Callable[..., DecisionLog],
) -> None:
    sink = FailingSink()
    decision_log = make_log(sink)
    errors_before = metric("callwarden_audit_sink_errors_total")
    for n in range(3):
        decision_log.record({"n": n})
    wait_until(lambda: decision_log.sink_errors >= 2)  # retried, not given up
    assert not decision_log.healthy
    assert decision_log.pending == 3
    assert sink.getvalue() == ""

    sink.failing.clear()
    decision_log.flush()
    assert [line["n"] for line in lines_of(sink)] == [0, 1, 2]
    assert decision_log.healthy
    assert metric("callwarden_audit_sink_errors_total") - errors_before == decision_log.sink_errors


def test_flush_raises_when_lines_stay_unwritten(make_log: Callable[..., DecisionLog]) -> None:
    decision_log = make_log(FailingSink())
    decision_log.record({"n": 1})
    with pytest.raises(TimeoutError, match="1 decision log line"):
        decision_log.flush(timeout=0.1)


def test_close_waits_for_queued_lines(make_log: Callable[..., DecisionLog]) -> None:
    sink = GatedSink()
    decision_log = make_log(sink)
    for n in range(10):
        decision_log.record({"n": n})
    threading.Timer(0.05, sink.gate.set).start()
    decision_log.close()
    assert [line["n"] for line in lines_of(sink)] == list(range(10))


def test_close_raises_naming_the_lines_it_could_not_write(make_log: Callable[..., DecisionLog]) -> None:
    decision_log = make_log(FailingSink())
    decision_log.record({"n": 1})
    decision_log.record({"n": 2})
    with pytest.raises(TimeoutError, match="2 decision log line"):
        decision_log.close(timeout=0.1)
    assert decision_log.pending == 2


def test_record_after_close_is_refused(make_log: Callable[..., DecisionLog]) -> None:
    decision_log = make_log(io.StringIO())
    decision_log.close()
    with pytest.raises(RuntimeError, match="closed"):
        decision_log.record({"n": 1})


def test_path_sink_appends_to_the_existing_file(tmp_path: Path, make_log: Callable[..., DecisionLog]) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"earlier":true}\n')
    for n in range(2):
        decision_log = make_log(path=str(path))
        decision_log.record({"n": n})
        decision_log.close()
    assert path.read_text().splitlines() == ['{"earlier":true}', '{"n":0}', '{"n":1}']


def test_stdout_is_the_default_sink(
    capsys: pytest.CaptureFixture[str], make_log: Callable[..., DecisionLog]
) -> None:
    decision_log = make_log()
    decision_log.record({"decision": "allow"})
    decision_log.close()
    assert capsys.readouterr().out == '{"decision":"allow"}\n'


def test_line_carries_the_decision_fields(make_log: Callable[..., DecisionLog]) -> None:
    sink = io.StringIO()
    decision_log = make_log(sink)
    decision_id = new_decision_id()
    sarc = {
        "subject": {"type": "identity", "id": "alice"},
        "action": {"name": "query_financials"},
        "resource": {"type": "entity", "id": "acme"},
        "context": {"mcp": {"server": "finance/ledger", "method": "tools/call", "tool": "query_financials"}},
    }
    decision_log.record(
        {
            "time": "2026-11-24T05:33:00.123456Z",
            "decision_id": decision_id,
            "server": "finance/ledger",
            "method": "tools/call",
            "tool": "query_financials",
            "requests": [sarc],
            "decision": "deny",
            "code": -32001,
            "reasons": ("deny-weekend",),
            "message": "denied by rule 'deny-weekend'",
            "revision": "r42",
            "latency_ms": 0.125,
        }
    )
    decision_log.close()
    assert sink.getvalue().count("\n") == 1
    (line,) = lines_of(sink)
    assert line == {
        "time": "2026-11-24T05:33:00.123456Z",
        "decision_id": decision_id,
        "server": "finance/ledger",
        "method": "tools/call",
        "tool": "query_financials",
        "requests": [sarc],
        "decision": "deny",
        "code": -32001,
        "reasons": ["deny-weekend"],
        "message": "denied by rule 'deny-weekend'",
        "revision": "r42",
        "latency_ms": 0.125,
    }


def test_line_is_a_snapshot_taken_when_recorded(make_log: Callable[..., DecisionLog]) -> None:
    sink = GatedSink()
    decision_log = make_log(sink)
    line: dict[str, Any] = {"reasons": ["first"]}
    decision_log.record(line)
    line["reasons"].append("changed later")
    sink.gate.set()
    decision_log.flush()
    assert lines_of(sink) == [{"reasons": ["first"]}]


def test_read_only_mapping_is_recorded(make_log: Callable[..., DecisionLog]) -> None:
    sink = io.StringIO()
    decision_log = make_log(sink)
    decision_log.record(MappingProxyType({"decision": "allow"}))
    decision_log.flush()
    assert lines_of(sink) == [{"decision": "allow"}]


def test_line_that_cannot_be_serialized_fails_the_caller(make_log: Callable[..., DecisionLog]) -> None:
    decision_log = make_log(io.StringIO())
    with pytest.raises(TypeError):
        decision_log.record({"claims": object()})
    assert decision_log.pending == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"stream": io.StringIO(), "path": "/tmp/x"}, "not both", id="stream-and-path"),
        pytest.param({"capacity": 0}, "capacity", id="zero-capacity"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecisionLog(**kwargs)


# -- decision ids ----------------------------------------------------------------------------------


def decode_ulid(text: str) -> int:
    value = 0
    for digit in text:
        value = value * 32 + CROCKFORD.index(digit)
    return value


def test_decision_id_is_a_26_digit_crockford_ulid() -> None:
    decision_id = new_decision_id()
    assert len(decision_id) == 26
    assert set(decision_id) <= set(CROCKFORD)
    assert decision_id[0] <= "7"  # 26 digits carry 130 bits; a ULID's top two are zero


def test_decision_id_starts_with_the_current_time_in_milliseconds() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    stamp = decode_ulid(new_decision_id()) >> 80
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert before - 1 <= stamp <= after + 1


def test_decision_ids_are_unique() -> None:
    assert len({new_decision_id() for _ in range(10_000)}) == 10_000


def test_decision_ids_sort_in_time_order() -> None:
    earlier = new_decision_id()
    time.sleep(0.002)
    assert earlier < new_decision_id()


def test_decision_id_takes_its_time_from_the_given_clock_reading() -> None:
    now_ns = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
    assert decode_ulid(new_decision_id(now_ns)) >> 80 == now_ns // 1_000_000


def test_decision_ids_stay_unique_across_refills_of_the_random_pool() -> None:
    # Several hundred ids per refill: thousands cross many refills, and each draws fresh bits.
    randoms = {decode_ulid(new_decision_id()) & (2**80 - 1) for _ in range(5_000)}
    assert len(randoms) == 5_000


def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    new_decision_id()  # the pool now holds bits the parent has not handed out yet
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's side)
        os.write(writer, str(decode_ulid(new_decision_id()) & (2**80 - 1)).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    theirs = int(os.read(reader, 64))
    os.close(reader)
    assert theirs != decode_ulid(new_decision_id()) & (2**80 - 1)


@pytest.mark.parametrize(
    "now_ns",
    [0, 999, 1_767_225_600_000_000_000, 1_767_225_600_999_999_999, 1_767_225_601_000_001_000],
)
def test_log_time_is_rfc3339_utc_with_microseconds(now_ns: int) -> None:
    expected = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=now_ns // 1000)
    assert log_time(now_ns) == expected.isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_log_time_follows_the_clock_across_a_second_boundary() -> None:
    assert log_time(1_767_225_600_999_999_000) == "2026-01-01T00:00:00.999999Z"
    assert log_time(1_767_225_601_000_000_000) == "2026-01-01T00:00:01.000000Z"
