"""The tools-list hook's response parser against hostile upstream responses.

The server behind the gateway is untrusted: its tools/list response is parsed as strictly as a
request. Every malformed, oversized, truncated, ambiguous or mistyped response is replaced by a
JSON-RPC error naming the reason (fail closed: never the unfiltered list), without a crash, and
writes its decision-log line. The hook runs here in process, on the bytes a server could send;
the end-to-end path through Envoy is in tests/test_datapath_catalog.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from callwarden.extauthz import metrics
from callwarden.extauthz.audit import DecisionLog
from callwarden.extauthz.extproc import Exchange, HookFailure
from callwarden.extauthz.tools_list import ToolsListHook
from callwarden.policy.bundle import CompiledServer, compile_bundle
from callwarden.policy.loader import load_config
from callwarden.policy.remote import OFFLINE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "board-packet"
FINANCE = compile_bundle(load_config([EXAMPLE])).servers["board-packet/finance"]
ANALYST = json.loads((EXAMPLE / "claims" / "analyst.json").read_text())
INTERN = json.loads((EXAMPLE / "claims" / "intern.json").read_text())
LIST_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
TOOL = {"name": "query_financials", "inputSchema": {"type": "object"}}
JSON = "application/json"
SSE = "text/event-stream"


def listing(*tools: Any, cursor: Any = None, id: Any = 1) -> bytes:
    result: dict[str, Any] = {"tools": list(tools)}
    if cursor is not None:
        result["nextCursor"] = cursor
    return json.dumps({"jsonrpc": "2.0", "id": id, "result": result}).encode()


class Run:
    """One hook with its own decision log; `answer` is what the client would get."""

    def __init__(self, max_response_bytes: int = 1 << 20) -> None:
        self.log = io.StringIO()
        self.decision_log = DecisionLog(stream=self.log)
        self.hook = ToolsListHook(self.decision_log, max_response_bytes=max_response_bytes)

    def answer(
        self,
        body: bytes,
        content_type: str = JSON,
        *,
        claims: dict[str, Any] = ANALYST,
        request: bytes = LIST_REQUEST,
        headers: dict[str, str] | None = None,
        status: int = 200,
    ) -> bytes | None:
        exchange = Exchange(self.hook, FINANCE, "rev-1", claims, {}, "check-id", request_body=request)
        exchange.response_status = status
        exchange.response_headers = {"content-type": content_type, **(headers or {})}
        return self.hook.response_body(exchange, body)

    def lines(self) -> list[dict[str, Any]]:
        self.decision_log.flush()
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
def run() -> Any:
    running = Run()
    yield running
    running.decision_log.close()


HOSTILE = [
    ("truncated-json", b'{"jsonrpc":"2.0","id":1,"result":{"tools":[', JSON, "not-json"),
    ("trailing-data", listing(TOOL) + b"{}", JSON, "trailing-data"),
    (
        "duplicate-member",
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"tools":[{"name":"x"}]}}',
        JSON,
        "duplicate-member",
    ),
    (
        "case-folded-duplicate",
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"Tools":[{"name":"x"}]}}',
        JSON,
        "duplicate-member",
    ),
    (
        "duplicate-in-a-tool",
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","name":"query_financials"}]}}',
        JSON,
        "duplicate-member",
    ),
    (
        "lone-surrogate",
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"\\ud800"}]}}',
        JSON,
        "lone-surrogate",
    ),
    ("byte-order-mark", b"\xef\xbb\xbf" + listing(TOOL), JSON, "not-utf8"),
    ("not-utf8", b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"\xff"}]}}', JSON, "not-utf8"),
    (
        "too-deep",
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"x":' + b"[" * 200 + b"]" * 200 + b"}}",
        JSON,
        "too-deep",
    ),
    ("nan", b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"x":NaN}}', JSON, "not-json"),
    ("tools-not-an-array", b'{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"x"}}}', JSON, "bad-result"),
    ("tools-missing", b'{"jsonrpc":"2.0","id":1,"result":{}}', JSON, "bad-result"),
    ("result-not-an-object", b'{"jsonrpc":"2.0","id":1,"result":[]}', JSON, "bad-result"),
    ("tool-not-an-object", listing("query_financials"), JSON, "bad-tool"),
    ("tool-name-not-a-string", listing({"name": 7}), JSON, "bad-tool"),
    ("tool-without-a-name", listing({"title": "x"}), JSON, "bad-tool"),
    ("cursor-not-a-string", listing(TOOL, cursor=2), JSON, "bad-result"),
    ("duplicate-tool", listing(TOOL, TOOL), JSON, "duplicate-tool"),
    (
        "unknown-envelope-member",
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"extra":1}',
        JSON,
        "unknown-member",
    ),
    ("not-jsonrpc", b'{"id":1,"result":{"tools":[]}}', JSON, "not-jsonrpc"),
    ("answers-another-id", listing(TOOL, id=2), JSON, "unexpected-response"),
    ("id-as-a-string", listing(TOOL, id="1"), JSON, "unexpected-response"),
    ("bool-id", b'{"jsonrpc":"2.0","id":true,"result":{"tools":[]}}', JSON, "bad-id"),
    ("answered-twice-in-a-batch", b"[" + listing() + b"," + listing() + b"]", JSON, "duplicate-response"),
    ("no-answer", b'{"jsonrpc":"2.0","method":"notifications/message","params":{}}', JSON, "unanswered"),
    ("other-content-type", listing(TOOL), "text/html", "content-type"),
    ("no-content-type", listing(TOOL), "", "content-type"),
    ("sse-truncated-event", b"event: message\ndata: " + listing(TOOL), SSE, "truncated"),
    ("sse-truncated-line", b"event: message\ndata: {", SSE, "truncated"),
    ("sse-data-not-json", b"data: hello\n\n", SSE, "not-json"),
    ("sse-not-utf8", b"data: \xff\n\n", SSE, "not-utf8"),
    (
        "sse-replayed-response",
        b"data: " + listing(TOOL) + b"\n\ndata: " + listing() + b"\n\n",
        SSE,
        "duplicate-response",
    ),
    ("sse-no-answer", b": keep-alive\n\n", SSE, "unanswered"),
    (
        "sse-split-json",
        b"data: " + listing(TOOL)[:20] + b"\n\ndata: " + listing(TOOL)[20:] + b"\n\n",
        SSE,
        "not-json",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "reason"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_a_hostile_response_becomes_a_json_rpc_error_and_a_log_line(
    run: Run, body: bytes, content_type: str, reason: str
) -> None:
    with pytest.raises(HookFailure) as failure:
        run.answer(body, content_type)
    assert (failure.value.code, failure.value.request_id) == (-32603, 1)
    assert f"({reason})" in failure.value.message
    (line,) = run.lines()
    assert (line["decision"], line["reasons"], line["method"]) == (
        "deny",
        [f"rejected:{reason}"],
        "tools/list",
    )


def test_a_failure_inside_the_hook_refuses_the_list_and_still_logs_it(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mock for a fault the real parts cannot produce on demand: a bug inside the hook.
    def broken(tool: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("callwarden.policy.catalog.Catalog.listing", lambda self, tool: broken(tool))
    with pytest.raises(HookFailure, match=r"\(internal-error\)"):
        run.answer(listing(TOOL))
    assert run.lines()[0]["reasons"] == ["rejected:internal-error"]


def test_a_compressed_response_is_refused_not_guessed_at(run: Run) -> None:
    with pytest.raises(HookFailure, match=r"\(content-encoding\)"):
        run.answer(listing(TOOL), headers={"content-encoding": "gzip"})


def test_an_oversized_response_is_refused_before_it_is_parsed() -> None:
    small = Run(max_response_bytes=64)
    with pytest.raises(HookFailure, match=r"\(too-large\)"):
        small.answer(listing(TOOL, {"name": "x" * 100}))
    small.decision_log.close()


# --- what passes, and how ---------------------------------------------------------------------


def test_a_list_with_nothing_to_remove_passes_as_sent(run: Run) -> None:
    assert run.answer(listing(TOOL, cursor="page-2")) is None
    (line,) = run.lines()
    assert line["catalog"] == {
        "check_decision_id": "check-id",
        "listed": 1,
        "removed_count": 0,
        "removed": [],
        "drift": [],
    }


def test_a_removed_tool_leaves_the_rest_of_the_result_as_sent(run: Run) -> None:
    answer = run.answer(
        listing(TOOL, {"name": "wire_money", "annotations": {"x": 1}}, cursor="c\u00e9"), claims=ANALYST
    )
    assert answer is not None
    assert json.loads(answer) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"tools": [TOOL], "nextCursor": "c\u00e9"},
    }
    assert run.lines()[0]["catalog"]["removed"] == [{"tool": "wire_money", "reason": "no-rule"}]


def test_an_intern_s_list_loses_the_tool_it_could_never_call(run: Run) -> None:
    answer = run.answer(listing(TOOL), claims=INTERN)
    assert answer is not None and json.loads(answer)["result"] == {"tools": []}


def test_a_look_alike_tool_name_is_removed(run: Run) -> None:
    answer = run.answer(listing(TOOL, {"name": "query_financi\u0430ls"}))
    assert answer is not None and [t["name"] for t in json.loads(answer)["result"]["tools"]] == [
        "query_financials"
    ]


@pytest.mark.parametrize("status", [202, 204])
def test_an_empty_no_content_answer_passes_as_sent(run: Run, status: int) -> None:
    assert run.answer(b"", "", status=status) is None


def test_an_empty_200_answer_is_refused(run: Run) -> None:
    with pytest.raises(HookFailure, match=r"\(content-type\)"):
        run.answer(b"", "")


def test_an_error_response_passes_as_sent(run: Run) -> None:
    assert run.answer(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}') is None


def test_a_stream_keeps_every_other_event_byte_for_byte(run: Run) -> None:
    priming = b"id: 0\nretry: 1000\n\n"
    progress = (
        b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\r\n\r\n'
    )
    response = b"event: message\nid: 7\ndata: " + listing(TOOL, {"name": "wire_money"}) + b"\n\n"
    answer = run.answer(priming + progress + response, SSE)
    assert answer is not None and answer.startswith(priming + progress)
    rewritten = answer[len(priming + progress) :]
    assert rewritten.startswith(b"event: message\nid: 7\ndata: ") and rewritten.endswith(b"\n\n")
    assert json.loads(rewritten.split(b"data: ", 1)[1])["result"]["tools"] == [TOOL]


def test_a_rewritten_stream_keeps_the_blank_lines_between_its_events(run: Run) -> None:
    body = b"\n\ndata: " + listing(TOOL, {"name": "wire_money"}) + b"\n\n\n\n: bye\n\n\n"
    answer = run.answer(body, SSE)
    assert answer is not None
    assert answer.startswith(b"\n\ndata: ") and answer.endswith(b"\n\n\n\n: bye\n\n\n")


def test_a_stream_with_nothing_to_remove_passes_as_sent(run: Run) -> None:
    assert run.answer(b"data: " + listing(TOOL) + b"\n\n", SSE) is None


def test_a_batch_filters_the_tools_list_answer_and_passes_the_others() -> None:
    running = Run()
    request = b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]'
    ping = {"jsonrpc": "2.0", "id": 2, "result": {}}
    body = b"[" + listing(TOOL, {"name": "wire_money"}) + b"," + json.dumps(ping).encode() + b"]"
    answer = running.answer(body, request=request)
    running.decision_log.close()
    assert answer is not None
    assert json.loads(answer) == [{"jsonrpc": "2.0", "id": 1, "result": {"tools": [TOOL]}}, ping]


def test_a_server_decided_by_a_remote_pdp_lists_unfiltered_and_says_so() -> None:
    remote = CompiledServer(FINANCE.server, FINANCE.mapping, OFFLINE, ())
    running = Run()
    exchange = Exchange(running.hook, remote, "rev-1", INTERN, {}, "check-id", request_body=LIST_REQUEST)
    exchange.response_status = 200
    exchange.response_headers = {"content-type": JSON}
    counted = metrics.CATALOG_RESPONSES.labels(server=FINANCE.key, outcome="unfiltered")
    before = counted._value.get()
    assert running.hook.response_body(exchange, listing(TOOL)) is None  # the intern's list, as sent
    assert counted._value.get() == before + 1
    assert running.lines()[0]["reasons"] == ["catalog:unfiltered"]
    running.decision_log.close()
