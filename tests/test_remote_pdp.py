"""Remote PDP mode: a server whose spec names `pdp.authzen` is decided by a remote AuthZEN PDP.

The remote PDPs here are real loopback HTTP servers: `callwarden pdp`'s own API (`start_pdp`)
over the board-packet policies, and a scripted PDP (tests.support.scripted_pdp) that plays the
failures. The data-path tests go through real Envoy, ext_authz and the demo MCP servers.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest

from callwarden.authzen.api import ApiOptions, start_pdp
from callwarden.authzen.client import RemoteAuthzenPdp, RemotePdpError, RemotePdps
from callwarden.demo.run import NAMESPACE
from callwarden.extauthz import metrics
from callwarden.policy.bundle import Bundle, compile_bundle, compile_server
from callwarden.policy.decide import PDP_FAILURE, Verdict, decide
from callwarden.policy.loader import Config, config_from_objects, load_config
from callwarden.policy.pdp import EmbeddedPdp, compile_pdp
from tests.support.datapath import ALLOW_RULE, ALLOWED_CALLS, DENIED_CALL, DENY_RULE, DataPath, start_datapath
from tests.support.datapath import tools_call as tools_call_body
from tests.support.scripted_pdp import JSON, ScriptedPdp, scripted_pdp

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "board-packet"
CONFIG = load_config([EXAMPLE])
CASES: list[dict[str, Any]] = json.loads((EXAMPLE / "cases.json").read_text())["cases"]
ALLOW = {"subject": {"type": "identity", "id": "alice"}, "action": {"name": "read"}}
REQUEST = {**ALLOW, "resource": {"type": "doc", "id": "1"}, "context": {}}
OTHER = {**ALLOW, "resource": {"type": "doc", "id": "2"}, "context": {}}
POLICY_PDP = compile_pdp(list(CONFIG.policies.values()))


class Clock:
    """A settable monotonic clock for the breaker and the caches."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def server_pdp(name: str) -> EmbeddedPdp:
    """The embedded PDP the board-packet McpServer `name` is decided by."""
    server = CONFIG.servers[f"{NAMESPACE}/{name}"]
    pdp = compile_server(server, CONFIG.policies.values()).pdp
    assert isinstance(pdp, EmbeddedPdp)
    return pdp


def with_remote_pdps(config: Config, urls: Mapping[str, str], **settings: float) -> Config:
    """`config` with `spec.pdp.authzen` set on the servers named in `urls` (server name -> PDP URL)."""
    objects = [
        obj.model_dump(by_alias=True, exclude_none=True)
        for obj in (*config.servers.values(), *config.policies.values())
    ]
    for obj in objects:
        url = urls.get(obj["metadata"]["name"]) if obj["kind"] == "McpServer" else None
        if url is not None:
            authzen = {"url": url, "timeoutSeconds": 0.5}
            authzen.update({key: value for key, value in settings.items()})
            obj["spec"]["pdp"] = {"authzen": authzen}
    return config_from_objects(objects)


def verdict_of(bundle: Bundle, case: Mapping[str, Any]) -> Verdict:
    claims = json.loads((EXAMPLE / case["claims"]).read_text())
    message = json.loads((EXAMPLE / case["request"]).read_text())
    return decide(bundle.servers[case["server"]], message["method"], message.get("params"), claims)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def client(remote: ScriptedPdp, **options: Any) -> RemoteAuthzenPdp:
    return RemoteAuthzenPdp(remote.base_url, options.pop("timeout", 0.5), **options)


@pytest.fixture(name="scripted")
def scripted_fixture() -> Iterator[ScriptedPdp]:
    with scripted_pdp(POLICY_PDP) as remote:
        remote.answer = lambda path, body: (200, b'{"decision": true}', JSON)
        yield remote


# --- the same decisions as embedded mode ----------------------------------------------------


@pytest.fixture(scope="module", name="remote_bundle")
def remote_bundle_fixture() -> Iterator[Bundle]:
    """The board-packet bundle with each server decided by `callwarden pdp` serving its policies."""
    with ExitStack() as stack:
        urls = {}
        for name in ("finance", "documents", "workflow"):
            options = ApiOptions(explain=True)
            running = stack.enter_context(start_pdp(server_pdp(name), listen="127.0.0.1:0", options=options))
            urls[name] = running.base_url
        factory = stack.enter_context(RemotePdps())
        yield compile_bundle(with_remote_pdps(CONFIG, urls), remote_pdp=factory)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_a_board_packet_case_is_decided_through_a_remote_pdp_as_embedded(
    remote_bundle: Bundle, case: dict[str, Any]
) -> None:
    embedded = verdict_of(compile_bundle(CONFIG), case)
    remote = verdict_of(remote_bundle, case)
    assert (remote.allowed, remote.code, remote.reasons) == (
        embedded.allowed,
        embedded.code,
        embedded.reasons,
    )
    assert remote.error == embedded.error
    assert ("allow" if remote.allowed else "deny") == case["decision"]


def test_a_remote_pdp_server_fails_every_call_offline() -> None:
    bundle = compile_bundle(with_remote_pdps(CONFIG, {"finance": "http://127.0.0.1:1"}))
    verdict = verdict_of(bundle, CASES[0])
    assert verdict.error is not None and verdict.error.code == PDP_FAILURE
    assert "remote AuthZEN PDP not available offline" in verdict.error.message


# --- the client: requests sent ---------------------------------------------------------------


def test_one_request_is_one_access_evaluation(scripted: ScriptedPdp) -> None:
    pdp = client(scripted)
    assert pdp.evaluate_mapped([REQUEST])[0].allowed
    assert scripted.evaluation_calls() == [("/access/v1/evaluation", REQUEST)]


def test_several_requests_are_one_access_evaluations_with_deny_on_first_deny(scripted: ScriptedPdp) -> None:
    scripted.answer = lambda path, body: (
        200,
        b'{"evaluations": [{"decision": true}, {"decision": true}]}',
        JSON,
    )
    assert [d.allowed for d in client(scripted).evaluate_mapped([REQUEST, OTHER])] == [True, True]
    ((path, body),) = scripted.evaluation_calls()
    assert path == "/access/v1/evaluations"
    assert body == {
        "evaluations": [REQUEST, OTHER],
        "options": {"evaluations_semantic": "deny_on_first_deny"},
    }


def test_a_pdp_without_an_evaluations_endpoint_is_asked_one_evaluation_at_a_time(
    scripted: ScriptedPdp,
) -> None:
    assert scripted.metadata is not None
    del scripted.metadata["access_evaluations_endpoint"]
    assert [d.allowed for d in client(scripted).evaluate_mapped([REQUEST, OTHER])] == [True, True]
    assert scripted.evaluation_calls() == [
        ("/access/v1/evaluation", REQUEST),
        ("/access/v1/evaluation", OTHER),
    ]


def test_a_fan_out_stops_at_the_first_deny(scripted: ScriptedPdp) -> None:
    assert scripted.metadata is not None
    del scripted.metadata["access_evaluations_endpoint"]
    scripted.answer = lambda path, body: (200, b'{"decision": false}', JSON)
    assert [d.allowed for d in client(scripted).evaluate_mapped([REQUEST, OTHER])] == [False]
    assert len(scripted.evaluation_calls()) == 1


def test_a_pdp_without_metadata_is_asked_at_the_default_evaluation_path(scripted: ScriptedPdp) -> None:
    scripted.metadata = None
    client(scripted).evaluate_mapped([REQUEST, OTHER])
    assert [path for path, _ in scripted.evaluation_calls()] == ["/access/v1/evaluation"] * 2


def test_endpoints_come_from_the_metadata(scripted: ScriptedPdp) -> None:
    assert scripted.metadata is not None
    scripted.metadata["access_evaluation_endpoint"] = scripted.base_url + "/v9/decide"
    client(scripted).evaluate_mapped([REQUEST])
    assert [path for path, _ in scripted.evaluation_calls()] == ["/v9/decide"]


def test_the_metadata_is_found_under_the_pdp_path_and_cached() -> None:
    with scripted_pdp(POLICY_PDP, path="/tenant1") as remote:
        remote.answer = lambda path, body: (200, b'{"decision": true}', JSON)
        pdp = client(remote)
        pdp.evaluate_mapped([REQUEST])
        pdp.evaluate_mapped([OTHER])
    gets = [path for method, path, _ in remote.calls if method == "GET"]
    assert gets == ["/.well-known/authzen-configuration/tenant1"]


def test_metadata_naming_another_pdp_is_refused(scripted: ScriptedPdp) -> None:
    assert scripted.metadata is not None
    scripted.metadata["policy_decision_point"] = "http://pdp.attacker.example"
    with pytest.raises(RemotePdpError, match="names another policy_decision_point"):
        client(scripted).evaluate_mapped([REQUEST])
    assert scripted.evaluation_calls() == []


# --- the client: answers that are not a decision ---------------------------------------------

FAILING_ANSWERS = [
    pytest.param((500, b"internal error", "text/plain"), "status", id="http-500"),
    pytest.param((403, b'{"decision": false}', JSON), "status", id="http-403"),
    pytest.param((200, b"not json", JSON), "malformed", id="not-json"),
    pytest.param((200, b'{"decision": "true"}', JSON), "malformed", id="decision-as-string"),
    pytest.param((200, b'{"decision": 1}', JSON), "malformed", id="decision-as-number"),
    pytest.param((200, b"{}", JSON), "malformed", id="no-decision"),
    pytest.param((200, b'{"decision": true, "decision": false}', JSON), "malformed", id="duplicate-member"),
    pytest.param((200, b'{"decision": true, "context": []}', JSON), "malformed", id="context-not-object"),
    pytest.param((200, b"[true]", JSON), "malformed", id="array"),
    pytest.param((200, b'{"decision": true}', "text/html"), "malformed", id="not-json-content-type"),
]


@pytest.mark.parametrize(("answer", "reason"), FAILING_ANSWERS)
def test_an_answer_that_is_not_a_decision_raises(
    scripted: ScriptedPdp, answer: tuple[int, bytes, str], reason: str
) -> None:
    scripted.answer = lambda path, body: answer
    with pytest.raises(RemotePdpError) as raised:
        client(scripted).evaluate_mapped([REQUEST])
    assert raised.value.reason == reason


BOXCAR_ANSWERS = [
    pytest.param(b'{"evaluations": [{"decision": true}]}', id="truncated-after-a-permit"),
    pytest.param(
        b'{"evaluations": [{"decision": true}, {"decision": true}, {"decision": true}]}', id="too-long"
    ),
    pytest.param(b'{"evaluations": []}', id="empty"),
    pytest.param(b'{"decision": true}', id="single-decision"),
    pytest.param(b'{"evaluations": [{"decision": true}, {"decision": "false"}]}', id="item-decision-string"),
]


@pytest.mark.parametrize("body", BOXCAR_ANSWERS)
def test_an_evaluations_answer_that_is_not_complete_raises(scripted: ScriptedPdp, body: bytes) -> None:
    scripted.answer = lambda path, _: (200, body, JSON)
    with pytest.raises(RemotePdpError, match="malformed"):
        client(scripted).evaluate_mapped([REQUEST, OTHER])


def test_an_evaluations_answer_cut_short_at_a_deny_is_a_deny(scripted: ScriptedPdp) -> None:
    scripted.answer = lambda path, _: (200, b'{"evaluations": [{"decision": false}]}', JSON)
    assert [d.allowed for d in client(scripted).evaluate_mapped([REQUEST, OTHER])] == [False]


def test_a_pdp_slower_than_the_timeout_raises(scripted: ScriptedPdp) -> None:
    scripted.delay = 0.5
    with pytest.raises(RemotePdpError) as raised:
        client(scripted, timeout=0.1).evaluate_mapped([REQUEST])
    assert raised.value.reason == "timeout"


def test_a_pdp_that_is_down_raises() -> None:
    pdp = RemoteAuthzenPdp(f"http://127.0.0.1:{closed_port()}", 0.5)
    with pytest.raises(RemotePdpError) as raised:
        pdp.evaluate_mapped([REQUEST])
    assert raised.value.reason == "transport"


def test_a_failure_is_counted_by_reason(scripted: ScriptedPdp) -> None:
    scripted.answer = lambda path, body: (500, b"", "text/plain")
    counter = metrics.PDP_ERRORS.labels(reason="status")
    before = counter._value.get()
    with pytest.raises(RemotePdpError):
        client(scripted, observer=metrics.PdpMetrics()).evaluate_mapped([REQUEST])
    assert counter._value.get() == before + 1


def test_the_deciding_rules_and_reason_come_from_the_decision_context(scripted: ScriptedPdp) -> None:
    answer = {"decision": False, "context": {"reasons": ["ns/p/r"], "reason": "denied by rule 'ns/p/r'"}}
    scripted.answer = lambda path, body: (200, json.dumps(answer).encode(), JSON)
    (decision,) = client(scripted).evaluate_mapped([REQUEST])
    assert (decision.allowed, decision.reasons, decision.message) == (
        False,
        ("ns/p/r",),
        "denied by rule 'ns/p/r'",
    )


# --- circuit breaker and decision cache ------------------------------------------------------


def test_the_circuit_opens_after_consecutive_failures_and_fails_fast(scripted: ScriptedPdp) -> None:
    scripted.answer = lambda path, body: (500, b"", "text/plain")
    pdp = client(scripted, failure_threshold=2, cool_down=30, clock=Clock())
    for _ in range(2):
        with pytest.raises(RemotePdpError, match="HTTP 500"):
            pdp.evaluate_mapped([REQUEST])
    asked = len(scripted.evaluation_calls())
    with pytest.raises(RemotePdpError) as raised:
        pdp.evaluate_mapped([REQUEST])
    assert raised.value.reason == "circuit-open"
    assert len(scripted.evaluation_calls()) == asked


def test_the_circuit_closes_when_a_probe_after_the_cool_down_succeeds(scripted: ScriptedPdp) -> None:
    clock = Clock()
    scripted.answer = lambda path, body: (500, b"", "text/plain")
    pdp = client(scripted, failure_threshold=1, cool_down=30, clock=clock)
    with pytest.raises(RemotePdpError):
        pdp.evaluate_mapped([REQUEST])
    scripted.answer = lambda path, body: (200, b'{"decision": true}', JSON)
    clock.now += 31
    assert pdp.evaluate_mapped([REQUEST])[0].allowed
    assert not pdp.circuit_open


def test_a_failed_probe_reopens_the_circuit(scripted: ScriptedPdp) -> None:
    clock = Clock()
    scripted.answer = lambda path, body: (500, b"", "text/plain")
    pdp = client(scripted, failure_threshold=3, cool_down=30, clock=clock)
    for _ in range(3):
        with pytest.raises(RemotePdpError, match="HTTP 500"):
            pdp.evaluate_mapped([REQUEST])
    clock.now += 31
    with pytest.raises(RemotePdpError, match="HTTP 500"):  # the probe
        pdp.evaluate_mapped([REQUEST])
    with pytest.raises(RemotePdpError) as raised:
        pdp.evaluate_mapped([REQUEST])
    assert raised.value.reason == "circuit-open"


def test_a_cached_decision_is_reused_within_its_ttl(scripted: ScriptedPdp) -> None:
    clock = Clock()
    pdp = client(scripted, decision_cache_seconds=5, clock=clock)
    pdp.evaluate_mapped([REQUEST])
    clock.now += 4.9
    assert pdp.evaluate_mapped([REQUEST])[0].allowed
    assert len(scripted.evaluation_calls()) == 1


def test_a_cached_decision_expires_after_its_ttl(scripted: ScriptedPdp) -> None:
    clock = Clock()
    pdp = client(scripted, decision_cache_seconds=5, clock=clock, metadata_seconds=3600)
    pdp.evaluate_mapped([REQUEST])
    clock.now += 5
    pdp.evaluate_mapped([REQUEST])
    assert len(scripted.evaluation_calls()) == 2


def test_the_decision_cache_tells_requests_apart(scripted: ScriptedPdp) -> None:
    pdp = client(scripted, decision_cache_seconds=5)
    pdp.evaluate_mapped([REQUEST])
    pdp.evaluate_mapped([OTHER])
    assert len(scripted.evaluation_calls()) == 2


def test_the_factory_shares_one_client_per_pdp_setting() -> None:
    config = with_remote_pdps(CONFIG, dict.fromkeys(("finance", "documents"), "http://127.0.0.1:1"))
    with RemotePdps() as factory:
        bundle = compile_bundle(config, remote_pdp=factory)
        assert bundle.servers[f"{NAMESPACE}/finance"].pdp is bundle.servers[f"{NAMESPACE}/documents"].pdp


# --- through Envoy ---------------------------------------------------------------------------


@pytest.fixture(scope="module", name="datapath")
def datapath_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DataPath, RemotePdps]]:
    """The board-packet data path; each test points servers at the PDPs it wants (bundle swap)."""
    with (
        RemotePdps(failure_threshold=1000) as factory,
        start_datapath(tmp_path_factory.mktemp("remote-pdp"), remote_pdp=factory) as running,
    ):
        yield running, factory


def enforce_remote(datapath: tuple[DataPath, RemotePdps], urls: Mapping[str, str]) -> DataPath:
    running, factory = datapath
    assert running.config is not None
    bundle = compile_bundle(with_remote_pdps(running.config, urls), remote_pdp=factory)
    running.gateway.ext_authz.swap(bundle)
    running.bundle = bundle
    return running


def call(running: DataPath, name: str, tool: str, arguments: dict[str, Any]) -> httpx2.Response:
    response = running.post(name, tools_call_body(tool, arguments), token=running.token(name))
    assert response.status_code == 200
    return response


@pytest.mark.integration
def test_calls_through_envoy_are_decided_by_the_remote_pdp(datapath: tuple[DataPath, RemotePdps]) -> None:
    with scripted_pdp(server_pdp("finance")) as remote:
        running = enforce_remote(datapath, {"finance": remote.base_url})
        before = running.executed("finance")
        call(running, "finance", *ALLOWED_CALLS["finance"])
        denied = call(running, "finance", *DENIED_CALL).json()
    assert running.executed("finance") == before + 1
    assert running.decisions()[-2]["reasons"] == [ALLOW_RULE]
    assert denied["error"]["code"] == -32001 and DENY_RULE in denied["error"]["message"]
    assert len(remote.evaluation_calls()) == 2


FAILING_PDPS = [
    pytest.param({"answer": (500, b"boom", "text/plain")}, id="http-500"),
    pytest.param({"answer": (200, b"<html>", JSON)}, id="not-json"),
    pytest.param({"answer": (200, b'{"decision": "true"}', JSON)}, id="decision-as-string"),
    pytest.param({"delay": 0.8}, id="slower-than-the-timeout"),
    pytest.param({"metadata": "http://pdp.elsewhere.example"}, id="metadata-names-another-pdp"),
    pytest.param({"down": True}, id="connection-refused"),
]


@pytest.mark.integration
@pytest.mark.parametrize("failure", FAILING_PDPS)
def test_a_failing_remote_pdp_answers_32603_and_the_tool_never_runs(
    datapath: tuple[DataPath, RemotePdps], failure: dict[str, Any]
) -> None:
    with scripted_pdp(server_pdp("documents")) as remote:
        if "answer" in failure:
            remote.answer = lambda path, body: failure["answer"]
        remote.delay = failure.get("delay", 0.0)
        if "metadata" in failure:
            assert remote.metadata is not None
            remote.metadata["policy_decision_point"] = failure["metadata"]
        url = f"http://127.0.0.1:{closed_port()}" if failure.get("down") else remote.base_url
        running = enforce_remote(datapath, {"documents": url})
        before = running.executed("documents")
        answer = call(running, "documents", *ALLOWED_CALLS["documents"]).json()
    assert answer["error"]["code"] == PDP_FAILURE
    assert answer["error"]["message"].startswith("Authorization service unavailable")
    assert running.executed("documents") == before
