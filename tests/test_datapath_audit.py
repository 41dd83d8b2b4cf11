"""The decision log under load: one line per decision, every field, never the token.

A burst of concurrent requests through real Envoy (allowed calls that run on the server, policy
denials, bad tokens and refused bodies) must leave exactly one line per request in the log file,
each tied to its response by the decision id.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import pytest

from callwarden.extauthz.decide import DECISION_HEADER
from tests.support.datapath import (
    ALLOWED_CALLS,
    DENIED_CALL,
    MCP_PATH,
    DataPath,
    running_datapath,
    tools_call,
)

pytestmark = pytest.mark.integration

datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)

REQUESTS: Final = 2000
THREADS: Final = 16
FIELDS: Final = ("time", "decision_id", "server", "method", "tool", "requests", "decision", "reasons")
FIELDS_MORE: Final = ("revision", "latency_ms")


@dataclass(frozen=True)
class Burst:
    tokens: tuple[str, ...]  # every token sent
    decision_ids: list[str]  # from every response, in no particular order
    statuses: list[int]
    lines: list[dict[str, Any]]  # the log lines the burst added
    log_text: str
    executed: int  # tool calls the finance server ran during the burst
    allowed_sent: int


# One in nine runs on the server (the slow part); the rest are decided at the gateway. Nine is
# coprime with THREADS, so every thread gets its share of each kind (with eight, two threads would
# make every allowed call one after another).
MIX: Final = ("allow", "deny", "expired", "bad-body", "deny", "expired", "deny", "bad-body", "deny")


def _kind(i: int) -> str:
    return MIX[i % len(MIX)]


@pytest.fixture(scope="module")
def burst(datapath: DataPath) -> Iterator[Burst]:
    valid, expired = datapath.token("finance"), datapath.token("finance", ttl=-120)
    bodies = {
        "allow": tools_call(*ALLOWED_CALLS["finance"]),
        "deny": tools_call(*DENIED_CALL),
        "expired": tools_call(*ALLOWED_CALLS["finance"]),
        "bad-body": b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}',
    }
    host = datapath.host("finance")
    lines_before, executed_before = len(datapath.decisions()), datapath.executed("finance")
    ids: list[str] = []
    statuses: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        # http.client, not httpx2: the client threads share this process (and its GIL) with
        # ext_authz and the MCP servers, and it costs less than half the CPU per request.
        connection = http.client.HTTPConnection(
            datapath.gateway.envoy.listener_host, datapath.gateway.envoy.listener_port, timeout=30
        )
        try:
            for i in range(offset, REQUESTS, THREADS):
                kind = _kind(i)
                token = expired if kind == "expired" else valid
                headers = {
                    "host": host,
                    "authorization": f"Bearer {token}",
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                }
                connection.request("POST", MCP_PATH, body=bodies[kind], headers=headers)
                response = connection.getresponse()
                response.read()
                with lock:
                    ids.append(response.getheader(DECISION_HEADER) or "missing")
                    statuses.append(response.status)
        except BaseException as error:  # surfaced below: a thread must not fail silently
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    lines = datapath.decisions()[lines_before:]
    yield Burst(
        tokens=(valid, expired),
        decision_ids=ids,
        statuses=statuses,
        lines=lines,
        log_text=datapath.audit_path.read_text(),
        executed=datapath.executed("finance") - executed_before,
        allowed_sent=sum(1 for i in range(REQUESTS) if _kind(i) == "allow"),
    )


def test_every_request_of_the_burst_was_answered_with_a_decision_id(burst: Burst) -> None:
    assert len(burst.decision_ids) == REQUESTS
    assert "missing" not in burst.decision_ids
    assert len(set(burst.decision_ids)) == REQUESTS


def test_the_burst_left_exactly_one_log_line_per_request(burst: Burst) -> None:
    assert len(burst.lines) == REQUESTS


def test_each_log_line_belongs_to_one_response(burst: Burst) -> None:
    assert sorted(line["decision_id"] for line in burst.lines) == sorted(burst.decision_ids)


def test_the_log_agrees_with_what_the_server_ran(burst: Burst) -> None:
    allowed = [line for line in burst.lines if line["decision"] == "allow"]
    assert len(allowed) == burst.allowed_sent == burst.executed


def test_the_burst_mixed_allows_denials_and_401s(burst: Burst) -> None:
    decided = {(line["decision"], str(line["code"])) for line in burst.lines}
    assert decided == {("allow", "200"), ("deny", "-32001"), ("deny", "401"), ("deny", "-32700")}


@pytest.mark.parametrize("field", FIELDS + FIELDS_MORE)
def test_every_line_has_the_field(burst: Burst, field: str) -> None:
    assert all(field in line for line in burst.lines)


def test_every_line_has_an_rfc3339_utc_time_and_a_latency(burst: Burst) -> None:
    for line in burst.lines:
        assert line["time"].endswith("Z")
        datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert isinstance(line["latency_ms"], float | int) and line["latency_ms"] >= 0


def test_every_line_names_the_server_and_the_bundle_revision(datapath: DataPath, burst: Burst) -> None:
    assert {line["server"] for line in burst.lines} == {"board-packet/finance"}
    assert {line["revision"] for line in burst.lines} == {datapath.bundle.revision}


def test_tools_call_lines_carry_the_sarc_requests(burst: Burst) -> None:
    decided = [line for line in burst.lines if line["code"] in (200, -32001)]
    assert all(line["method"] == "tools/call" and line["tool"] == "query_financials" for line in decided)
    assert all(line["requests"][0]["subject"]["id"] == "alice" for line in decided)


def test_no_token_text_is_ever_logged(burst: Burst) -> None:
    for token in burst.tokens:
        signature = token.rsplit(".", 1)[1]
        assert token not in burst.log_text
        assert signature not in burst.log_text
