"""The ext_proc service against the streams a broken or hostile client could send.

Only Envoy talks to this service, and only for requests ext_authz marked, but the gRPC port is
reachable by whatever reaches ext_authz. Driven here over real gRPC (the ext_authz + ext_proc
server of a running board-packet data path): every stream that is not a well-formed, marked,
authenticated exchange ends in an immediate JSON-RPC error (or a refusal), never in a hook run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import grpc
import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub

from callwarden.extauthz.extproc import HOOK_HEADER, ExternalProcessor, Hooks
from callwarden.extauthz.server import serve
from callwarden.extauthz.tools_list import ToolsListHook
from tests.support.datapath import DataPath, running_datapath

pytestmark = pytest.mark.integration

datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)
FINANCE = "board-packet/finance"


def headers(values: Mapping[str, str]) -> ProcessingRequest:
    request = ProcessingRequest()
    for name, value in values.items():
        request.request_headers.headers.headers.append(HeaderValue(key=name, raw_value=value.encode()))
    return request


def body(data: bytes) -> ProcessingRequest:
    request = ProcessingRequest()
    request.request_body.body = data
    request.request_body.end_of_stream = True
    return request


@pytest.fixture(scope="module")
def stub(datapath: DataPath) -> Iterator[ExternalProcessorStub]:
    with grpc.insecure_channel(datapath.gateway.ext_authz.address) as channel:
        yield ExternalProcessorStub(channel)


def exchange(stub: ExternalProcessorStub, *messages: ProcessingRequest) -> list[ProcessingResponse]:
    return list(stub.Process(iter(messages), timeout=5))


def refusal(answers: list[ProcessingResponse]) -> str:
    """The JSON-RPC error message of the one immediate response the stream ended with."""
    assert len(answers) == 1 and answers[0].WhichOneof("response") == "immediate_response"
    sent = orjson.loads(answers[0].immediate_response.body)
    assert sent["error"]["code"] == -32603
    return str(sent["error"]["message"])


def marked(datapath: DataPath, mark: str, presented: str | None = "valid") -> dict[str, str]:
    """Request headers with `mark`; `presented` is "valid" (a fresh token), None or a raw value."""
    values = {":authority": datapath.host("finance"), ":path": "/mcp", ":method": "POST", HOOK_HEADER: mark}
    if presented is not None:
        values["authorization"] = f"Bearer {datapath.token('finance') if presented == 'valid' else presented}"
    return values


def test_a_body_before_any_headers_is_refused(stub: ExternalProcessorStub) -> None:
    assert "no request headers" in refusal(exchange(stub, body(b'{"jsonrpc":"2.0"}')))


def test_an_unmarked_request_is_let_through_with_nothing_more_asked(stub: ExternalProcessorStub) -> None:
    (answer,) = exchange(stub, headers({":authority": "x", ":path": "/mcp"}))
    assert answer.WhichOneof("response") == "request_headers"
    assert answer.mode_override.response_body_mode == ProcessingMode.NONE


@pytest.mark.parametrize(
    ("mark", "presented", "reason"),
    [
        ("no-such-hook " + FINANCE, "valid", "no known callwarden hook"),
        ("tools-list", "valid", "no longer configured"),
        ("tools-list board-packet/nowhere", "valid", "no longer configured"),
        ("tools-list " + FINANCE, None, "token rejected"),
        ("tools-list " + FINANCE, "not.a.jwt", "token rejected"),
        ("TOOLS-LIST " + FINANCE, "valid", "no known callwarden hook"),
        ("tools-list\u00a0" + FINANCE, "valid", "no known callwarden hook"),
    ],
    ids=["unknown-hook", "no-server", "unknown-server", "no-token", "bad-token", "case-changed", "nbsp"],
)
def test_a_forged_or_stale_mark_is_refused_before_any_hook_runs(
    datapath: DataPath, stub: ExternalProcessorStub, mark: str, presented: str | None, reason: str
) -> None:
    assert reason in refusal(exchange(stub, headers(marked(datapath, mark, presented))))


def test_a_marked_authenticated_request_asks_for_exactly_the_hook_s_bodies(
    datapath: DataPath, stub: ExternalProcessorStub
) -> None:
    (answer,) = exchange(stub, headers(marked(datapath, "tools-list " + FINANCE)))
    assert answer.WhichOneof("response") == "request_headers"
    removed = set(answer.request_headers.response.header_mutation.remove_headers)
    assert removed == {HOOK_HEADER, "content-length", "accept-encoding"}
    mode = answer.mode_override
    assert (mode.request_body_mode, mode.response_body_mode) == (
        ProcessingMode.BUFFERED,
        ProcessingMode.BUFFERED,
    )


def test_a_stream_beyond_the_cap_is_refused(datapath: DataPath) -> None:
    enforcer = datapath.gateway.ext_authz.enforcer
    processor = ExternalProcessor(
        enforcer, Hooks([ToolsListHook(datapath.gateway.ext_authz.decision_log)]), max_streams=1
    )
    release = threading.Event()

    def held() -> Iterator[ProcessingRequest]:
        yield headers(marked(datapath, "tools-list " + FINANCE))
        release.wait(10)

    with (
        serve(enforcer, "127.0.0.1:0", workers=2, processor=processor) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        first = ExternalProcessorStub(channel).Process(held(), timeout=10)
        next(first)  # the first stream is open and holds its slot
        with pytest.raises(grpc.RpcError) as refused:
            list(ExternalProcessorStub(channel).Process(iter([headers({})]), timeout=5))
        release.set()
        list(first)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
