"""The decision log: one JSON line per decision, written off the hot path (DESIGN.md §3 step 8).

The log is the audit trail, so it never drops a line. `record` serializes the line on the
caller's thread (a snapshot: the caller may reuse its objects; a line that cannot be
serialized fails the caller loudly) and queues it; one writer thread appends lines to the
sink in batches. The writer looks at the queue every LINGER seconds and `record` wakes it
early only when WAKE_LINES are queued: waking a thread per line cost the check ~15 µs of
CPU (a futex wake and a GIL hand-off per decision), batching costs a line at most LINGER
of delay before it reaches the sink. `flush` and `close` wake the writer at once.
When the sink is slow the queue grows to `capacity`; past that, `record` waits up to 50 ms
for room, then keeps the line anyway and reports the backlog (metric, `healthy` False)
instead of stalling checks. When the sink fails, the writer keeps the lines, counts the
error, marks the log unhealthy and retries with backoff until the sink recovers. Only
`close` on a sink that never recovers leaves lines unwritten, and it says so by raising.

A failed write may have written part of a batch before failing; the retry writes the whole
batch again, so a sink that fails mid-write can see a line twice, never zero times.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

from callwarden.extauthz import metrics

log = logging.getLogger(__name__)

BACKLOG_WAIT: Final = 0.05  # seconds `record` may wait for room before keeping the line anyway
LINGER: Final = 0.02  # seconds a line may wait in the queue before the writer looks
WAKE_LINES: Final = 256  # queued lines that wake the writer before LINGER is up
_BATCH_LINES: Final = 4096
_RETRY_FIRST: Final = 0.01
_RETRY_MAX: Final = 0.5


class DecisionLog:
    """Decision lines to `stream`, to the file at `path` (append mode), or to stdout."""

    def __init__(
        self, stream: IO[str] | None = None, path: str | None = None, *, capacity: int = 65536
    ) -> None:
        if stream is not None and path is not None:
            raise ValueError("a decision log writes to a stream or to a path, not both")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._wake_lines = min(WAKE_LINES, capacity)
        self._owned_file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self._sink: IO[str] = self._owned_file or stream or sys.stdout
        self._pending: deque[str] = deque()  # appended by `record` without a lock (atomic)
        self._in_flight: list[str] = []  # taken by the writer, not yet written
        self._progress = threading.Condition()  # guards the writer's moves and the counters below
        self._written = 0
        self._sink_errors = 0
        self._backlog_events = 0
        self._sink_failing = False
        self._backlogged = False
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="callwarden-decision-log", daemon=True)
        self._writer.start()

    # -- the hot path -------------------------------------------------------------------

    def record(self, line: Mapping[str, Any]) -> None:
        """Queue one decision line; waits at most BACKLOG_WAIT, never drops the line."""
        if self._closed:
            raise RuntimeError("the decision log is closed")
        text = orjson.dumps(line if isinstance(line, dict) else dict(line), option=orjson.OPT_APPEND_NEWLINE)
        if len(self._pending) >= self._capacity:
            self._wait_for_room()
        self._pending.append(text.decode())
        if len(self._pending) >= self._wake_lines and not self._wake.is_set():
            self._wake.set()  # the writer clears the event before it drains

    def _wait_for_room(self) -> None:
        self._wake.set()
        with self._progress:
            if self._progress.wait_for(lambda: len(self._pending) < self._capacity, BACKLOG_WAIT):
                return
            self._backlogged = True
            self._backlog_events += 1
        metrics.AUDIT_BACKLOG_EVENTS.inc()

    # -- state ----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while the queue is over capacity or the sink is failing (for /readyz)."""
        return not (self._sink_failing or self._backlogged)

    @property
    def pending(self) -> int:
        """Lines recorded but not yet written."""
        with self._progress:
            return len(self._pending) + len(self._in_flight)

    @property
    def lines_written(self) -> int:
        return self._written

    @property
    def sink_errors(self) -> int:
        return self._sink_errors

    @property
    def backlog_events(self) -> int:
        return self._backlog_events

    # -- flush and close ------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every line recorded before this call is written; TimeoutError if not."""
        self._wake.set()
        with self._progress:
            target = self._written + len(self._in_flight) + len(self._pending)
            if not self._progress.wait_for(lambda: self._written >= target, timeout):
                unwritten = target - self._written
                cause = "is failing" if self._sink_failing else "is slow"
                raise TimeoutError(
                    f"{unwritten} decision log line(s) unwritten after {timeout}s: the sink {cause}"
                )

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new lines, write the queued ones, stop the writer, close a file we opened.

        Raises TimeoutError, naming the count, if lines remain unwritten.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._stop.set()
            self._wake.set()
            self._writer.join(timeout)
            if self._owned_file is not None:
                self._owned_file.close()

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(LINGER)
            self._wake.clear()
            if not self._drain() or (self._stop.is_set() and not self._pending):
                return

    def _drain(self) -> bool:
        """Write until nothing is queued. False: told to stop while the sink still fails."""
        delay = _RETRY_FIRST
        while True:
            with self._progress:
                if not self._in_flight:
                    count = min(len(self._pending), _BATCH_LINES)
                    self._in_flight = [self._pending.popleft() for _ in range(count)]
                lines = self._in_flight
            if not lines:
                return True
            try:
                self._sink.write("".join(lines))
                self._sink.flush()
            except Exception as error:  # whatever the sink raises: keep the lines and retry
                self._sink_failed(error, len(lines))
                if self._stop.wait(delay):
                    return False
                delay = min(2 * delay, _RETRY_MAX)
                continue
            delay = _RETRY_FIRST
            with self._progress:
                self._in_flight = []
                self._written += len(lines)
                self._sink_failing = False
                if len(self._pending) < self._capacity:
                    self._backlogged = False
                self._progress.notify_all()
            metrics.AUDIT_LINES.inc(len(lines))

    def _sink_failed(self, error: Exception, lines: int) -> None:
        with self._progress:
            first = not self._sink_failing
            self._sink_failing = True
            self._sink_errors += 1
        metrics.AUDIT_SINK_ERRORS.inc()
        if first:
            log.error("decision log sink failed (%s); keeping %d line(s) and retrying", error, lines)


# Crockford's base32 digits sort in ASCII order like the values they encode. Ten bits per
# table entry: a ULID's 130 bits are 13 lookups (base64.b32encode is pure Python, 2.4 µs).
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DIGIT_PAIRS: Final = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_PAIR_SHIFTS: Final = tuple(range(120, -1, -10))
# One getrandom(2) call per this many ids: a system call per id was ~40% of the id's cost.
_RANDOM_PER_REFILL: Final = 256
_RANDOM_BYTES: Final = 10  # a ULID's 80 random bits
_random_pool: list[int] = []  # popped by any thread: list.pop is atomic, no id is handed out twice
# A forked child must not hand out the ids its parent still holds (workers are spawned, not
# forked, but a library that forks must not turn the audit trail's ids into duplicates).
os.register_at_fork(after_in_child=_random_pool.clear)


def _random_80_bits() -> int:
    try:
        return _random_pool.pop()
    except IndexError:
        block = os.urandom(_RANDOM_BYTES * _RANDOM_PER_REFILL)
        _random_pool.extend(
            int.from_bytes(block[at : at + _RANDOM_BYTES], "big")
            for at in range(_RANDOM_BYTES, len(block), _RANDOM_BYTES)
        )
        return int.from_bytes(block[:_RANDOM_BYTES], "big")


def new_decision_id(now_ns: int | None = None) -> str:
    """A ULID: 48 bits of Unix time in ms, then 80 random bits, as 26 Crockford base32 digits.

    Ids sort by time across replicas (to the millisecond) and are unique without coordination.
    `now_ns` (time.time_ns()) lets the caller stamp its log line with the same clock reading.
    """
    stamp = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    value = stamp << 80 | _random_80_bits()
    return "".join([_DIGIT_PAIRS[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


_second_stamp: tuple[int, str] = (-1, "")  # (Unix second, its RFC 3339 text): one strftime a second


def log_time(now_ns: int) -> str:
    """`now_ns` as the log line's RFC 3339 UTC time with microseconds (`...T12:00:00.123456Z`)."""
    global _second_stamp  # noqa: PLW0603 (a one-entry cache; a racing thread rewrites the same value)
    second, micros = divmod(now_ns // 1000, 1_000_000)
    cached = _second_stamp
    if cached[0] != second:
        cached = _second_stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{micros:06d}Z"
