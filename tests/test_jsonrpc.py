"""Strict MCP JSON-RPC parsing: hostile bodies are rejected with stable reasons, valid ones parse."""

from __future__ import annotations

import json

import pytest

from callwarden.extauthz.jsonrpc import (
    INVALID_REQUEST,
    MAX_DEPTH_LIMIT,
    PARSE_ERROR,
    BodyRejected,
    JsonRpcMessage,
    parse_body,
)

MAX_BYTES = 65536
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all","arguments":{}}}'


def parse(raw: bytes, **limits: int) -> tuple[JsonRpcMessage, ...]:
    return parse_body(raw, max_bytes=limits.pop("max_bytes", MAX_BYTES), **limits).messages


def nested(depth: int, *, opener: str = "[", closer: str = "]") -> bytes:
    """A request whose whole body nests `depth` containers deep (the message object is 1)."""
    inner = opener * (depth - 2) + closer * (depth - 2)
    return f'{{"jsonrpc":"2.0","id":1,"method":"x","params":[{inner}]}}'.encode()


def deep_objects(depth: int) -> bytes:
    inner = '{"a":' * (depth - 1) + "1" + "}" * (depth - 1)
    return f'{{"jsonrpc":"2.0","id":1,"method":"x","params":{inner}}}'.encode()


def request(**members: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **members}).encode()


HOSTILE = [
    # -- malformed and truncated ------------------------------------------------------------
    pytest.param(b"", "not-json", id="empty"),
    pytest.param(b" \r\n\t", "not-json", id="whitespace-only"),
    pytest.param(PING[:-1], "not-json", id="truncated-object"),
    pytest.param(PING[:20], "not-json", id="truncated-in-string"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping\\u00', "not-json", id="truncated-escape"),
    pytest.param(b"{'jsonrpc':'2.0','id':1,'method':'ping'}", "not-json", id="single-quotes"),
    pytest.param(b'{jsonrpc:"2.0",id:1,method:"ping"}', "not-json", id="unquoted-names"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping",}', "not-json", id="trailing-comma"),
    pytest.param(b'{/* c */"jsonrpc":"2.0","id":1,"method":"ping"}', "not-json", id="comment"),
    pytest.param(b'{"jsonrpc":"2.0","id":01,"method":"ping"}', "not-json", id="leading-zero"),
    pytest.param(b'{"jsonrpc":"2.0","id":0x10,"method":"ping"}', "not-json", id="hex-number"),
    pytest.param(b'{"jsonrpc":"2.0","id":+1,"method":"ping"}', "not-json", id="plus-sign"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"x","params":[NaN]}', "not-json", id="nan"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"x","params":[Infinity]}', "not-json", id="infinity"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":[-Infinity]}', "not-json", id="minus-infinity"
    ),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"pi\nng"}', "not-json", id="raw-newline-in-string"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"pi\x00ng"}', "not-json", id="raw-nul-in-string"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"\\x41"}', "not-json", id="invalid-escape"),
    pytest.param(b"\x0c" + PING, "not-json", id="form-feed-is-not-json-whitespace"),
    pytest.param("\u00a0".encode() + PING, "not-json", id="nbsp-is-not-json-whitespace"),
    pytest.param(PING.decode().encode("utf-16-le"), "not-json", id="utf16-without-bom"),
    pytest.param(PING + PING, "trailing-data", id="two-values"),
    pytest.param(PING + b" x", "trailing-data", id="trailing-garbage"),
    pytest.param(PING + b"\x00", "trailing-data", id="trailing-nul"),
    pytest.param(PING + b" // comment", "trailing-data", id="trailing-comment"),
    pytest.param(b"[" + PING + b"]]", "trailing-data", id="extra-closing-bracket"),
    # -- duplicate members, at the top and nested, plain, escaped and case-folded -------------
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}', "duplicate-member", id="dup-method"
    ),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', "duplicate-member", id="dup-id"),
    pytest.param(
        b'{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}', "duplicate-member", id="dup-jsonrpc"
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"ping","m\\u0065thod":"tools/call"}',
        "duplicate-member",
        id="dup-method-escaped",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","name":"delete_all"}}',
        "duplicate-member",
        id="dup-params-name",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":{"b":{"c":1,"c":2}}}}}',
        "duplicate-member",
        id="dup-deep",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":[{"k":1},{"k":1,"k":1}]}',
        "duplicate-member",
        id="dup-in-array-element",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call"}',
        "duplicate-member",
        id="case-dup-method",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","Name":"delete_all"}}',
        "duplicate-member",
        id="case-dup-params-name",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{},"param\\u017f":{}}',
        "duplicate-member",
        id="long-s-folds-to-s",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"kind":1,"\\u212aind":2}}',
        "duplicate-member",
        id="kelvin-sign-folds-to-k",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"a":2}} trailing',
        "duplicate-member",
        id="dup-then-malformed",
    ),
    # -- the envelope: wrong types for every member -------------------------------------------
    pytest.param(b'"tools/call"', "not-jsonrpc", id="top-level-string"),
    pytest.param(b"42", "not-jsonrpc", id="top-level-number"),
    pytest.param(b"null", "not-jsonrpc", id="top-level-null"),
    pytest.param(b"true", "not-jsonrpc", id="top-level-bool"),
    pytest.param(b'{"id":1,"method":"ping"}', "not-jsonrpc", id="jsonrpc-missing"),
    pytest.param(request(jsonrpc="1.0", id=1, method="ping"), "not-jsonrpc", id="jsonrpc-1.0"),
    pytest.param(request(jsonrpc=2.0, id=1, method="ping"), "not-jsonrpc", id="jsonrpc-number"),
    pytest.param(request(jsonrpc="2.0 ", id=1, method="ping"), "not-jsonrpc", id="jsonrpc-padded"),
    pytest.param(request(jsonrpc=None, id=1, method="ping"), "not-jsonrpc", id="jsonrpc-null"),
    pytest.param(request(id=1, method=7), "bad-method", id="method-number"),
    pytest.param(request(id=1, method=None), "bad-method", id="method-null"),
    pytest.param(request(id=1, method=["tools/call"]), "bad-method", id="method-array"),
    pytest.param(request(id=1, method={"name": "tools/call"}), "bad-method", id="method-object"),
    pytest.param(request(id=1, method=True), "bad-method", id="method-bool"),
    pytest.param(request(id=1, method=""), "bad-method", id="method-empty"),
    pytest.param(request(id=1.0, method="ping"), "bad-id", id="id-float-integral"),
    pytest.param(request(id=1.5, method="ping"), "bad-id", id="id-float"),
    pytest.param(b'{"jsonrpc":"2.0","id":1e3,"method":"ping"}', "bad-id", id="id-exponent"),
    pytest.param(request(id=True, method="ping"), "bad-id", id="id-true"),
    pytest.param(request(id=False, method="ping"), "bad-id", id="id-false"),
    pytest.param(request(id=None, method="ping"), "bad-id", id="id-null"),
    pytest.param(request(id=[1], method="ping"), "bad-id", id="id-array"),
    pytest.param(request(id={"n": 1}, method="ping"), "bad-id", id="id-object"),
    pytest.param(request(id=2**53, method="ping"), "bad-id", id="id-beyond-2-53"),
    pytest.param(request(id=-(2**53), method="ping"), "bad-id", id="id-below-minus-2-53"),
    pytest.param(request(id=10**30, method="ping"), "bad-id", id="id-huge"),
    pytest.param(request(id=1, method="x", params="a"), "bad-params", id="params-string"),
    pytest.param(request(id=1, method="x", params=3), "bad-params", id="params-number"),
    pytest.param(request(id=1, method="x", params=None), "bad-params", id="params-null"),
    pytest.param(request(id=1, method="x", params=True), "bad-params", id="params-bool"),
    pytest.param(request(id=1, method="ping", result={}), "not-jsonrpc", id="request-with-result"),
    pytest.param(
        request(method="ping", error={"code": 1, "message": "m"}), "not-jsonrpc", id="notif-with-error"
    ),
    pytest.param(
        request(id=1, result={}, error={"code": 1, "message": "m"}), "not-jsonrpc", id="result-and-error"
    ),
    pytest.param(request(id=1), "not-jsonrpc", id="no-method-result-or-error"),
    pytest.param(request(id=1, method="ping", extra=1), "unknown-member", id="request-extra-member"),
    pytest.param(request(id=1, Method="tools/call"), "unknown-member", id="case-variant-method-alone"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","param\\u017f":{}}', "unknown-member", id="long-s-params-alone"
    ),
    pytest.param(request(id=1, result={}, params={}), "unknown-member", id="response-extra-member"),
    pytest.param(request(result={}), "bad-id", id="result-without-id"),
    pytest.param(request(id=1.5, result={}), "bad-id", id="result-float-id"),
    pytest.param(request(id=1, result=[]), "bad-result", id="result-array"),
    pytest.param(request(id=1, result=None), "bad-result", id="result-null"),
    pytest.param(request(id=1, error="boom"), "bad-error", id="error-string"),
    pytest.param(request(id=1, error={"message": "m"}), "bad-error", id="error-without-code"),
    pytest.param(request(id=1, error={"code": 1.0, "message": "m"}), "bad-error", id="error-float-code"),
    pytest.param(request(id=1, error={"code": True, "message": "m"}), "bad-error", id="error-bool-code"),
    pytest.param(request(id=1, error={"code": 1}), "bad-error", id="error-without-message"),
    # -- unicode tricks -----------------------------------------------------------------------
    pytest.param(b"\xef\xbb\xbf" + PING, "not-utf8", id="utf8-bom"),
    pytest.param(b"\xff\xfe" + PING.decode().encode("utf-16-le"), "not-utf8", id="utf16-with-bom"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"tools\xc0\xafcall"}', "not-utf8", id="overlong-slash"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping\xc0\x80"}', "not-utf8", id="overlong-nul"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"\xed\xa0\x80"}', "not-utf8", id="encoded-surrogate"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"\xf4\x90\x80\x80"}', "not-utf8", id="beyond-u10ffff"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"\xff"}', "not-utf8", id="invalid-byte"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"\xe2\x82"}', "not-utf8", id="truncated-sequence"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call\\ud800"}', "lone-surrogate", id="lone-high-in-method"
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"\\udc00"}}',
        "lone-surrogate",
        id="lone-low-in-value",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"\\ud83d":1}}',
        "lone-surrogate",
        id="lone-high-in-name",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":["\\udc00\\ud83d"]}',
        "lone-surrogate",
        id="reversed-pair",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":["\\ud83d\\u0041"]}',
        "lone-surrogate",
        id="high-then-letter",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":"\\uDFFF","method":"x"}', "lone-surrogate", id="lone-upper-hex-in-id"
    ),
    # -- size and depth -----------------------------------------------------------------------
    pytest.param(b" " * (MAX_BYTES - len(PING) + 1) + PING, "too-large", id="one-byte-over"),
    pytest.param(nested(65), "too-deep", id="depth-65-arrays"),
    pytest.param(deep_objects(65), "too-deep", id="depth-65-objects"),
    pytest.param(b"[" * 60000, "too-deep", id="unclosed-brackets"),
    pytest.param(nested(40_000), "too-large", id="deep-and-large"),
    # -- numbers ------------------------------------------------------------------------------
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":[' + b"9" * 5000 + b"]}",
        "bad-number",
        id="5000-digits",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1e400]}', "bad-number", id="float-overflow"
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":[-1e400]}', "bad-number", id="negative-overflow"
    ),
    # -- batches -------------------------------------------------------------------------------
    pytest.param(b"[]", "empty-batch", id="empty-batch"),
    pytest.param(b" [ ] ", "empty-batch", id="empty-batch-spaced"),
    pytest.param(b"[[" + PING + b"]]", "nested-batch", id="nested-batch"),
    pytest.param(b"[" + PING + b",[" + CALL + b"]]", "nested-batch", id="nested-batch-second"),
    pytest.param(b"[" + b",".join([PING] * 101) + b"]", "batch-too-large", id="batch-101"),
    pytest.param(b"[" + PING + b",1]", "not-jsonrpc", id="batch-number-element"),
    pytest.param(b"[" + PING + b',{"jsonrpc":"2.0","id":1,"result":{}}]', "mixed-batch", id="mixed-batch"),
    pytest.param(
        b"[" + PING + b',{"jsonrpc":"2.0","id":2,"method":"tools/call","method":"ping"}]',
        "duplicate-member",
        id="batch-element-dup",
    ),
    pytest.param(
        b"[" + PING + b',{"jsonrpc":"2.0","id":2.5,"method":"ping"}]', "bad-id", id="batch-element-bad-id"
    ),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_hostile_body_is_rejected_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BodyRejected) as rejected:
        parse_body(raw, max_bytes=MAX_BYTES)
    assert rejected.value.reason == reason, rejected.value.message


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}',
            "$ has member 'method'",
            id="top",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"arguments":{"a b":[{"c":1,"c":2}]}}}',
            "$.params.arguments[\"a b\"][0] has member 'c'",
            id="nested",
        ),
        pytest.param(
            b"[" + PING + b',{"jsonrpc":"2.0","id":2,"id":3,"method":"x"}]',
            "$[1] has member 'id'",
            id="batch",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":"a","Name":"b"}}',
            "$.params has members 'name' and 'Name', equal under case folding",
            id="case",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"a":2},}',
            "an object has member 'a'",
            id="no-path",
        ),
    ],
)
def test_duplicate_member_message_names_the_path(raw: bytes, where: str) -> None:
    with pytest.raises(BodyRejected, match="duplicate-member") as rejected:
        parse_body(raw, max_bytes=MAX_BYTES)
    assert where in rejected.value.message


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        pytest.param(request(id=1, method="x", params=7), "$.params", id="params"),
        pytest.param(b"[" + PING + b',{"jsonrpc":"2.0","id":true,"method":"x"}]', "$[1].id", id="batch-id"),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"k":["\\ud800"]}}',
            "$.params.k[0]",
            id="surrogate",
        ),
        pytest.param(request(id=1, method="x", Extra=1), "'Extra'", id="unknown-member"),
        pytest.param(b"\xef\xbb\xbf{}", "byte order mark", id="bom"),
        pytest.param(b'{"a":"\xc0\xaf"}', "invalid UTF-8 at byte 6", id="utf8-offset"),
    ],
)
def test_rejection_message_names_the_member(raw: bytes, where: str) -> None:
    with pytest.raises(BodyRejected) as rejected:
        parse_body(raw, max_bytes=MAX_BYTES)
    assert where in rejected.value.message


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("not-utf8", PARSE_ERROR),
        ("not-json", PARSE_ERROR),
        ("trailing-data", PARSE_ERROR),
        ("duplicate-member", PARSE_ERROR),
        ("too-deep", PARSE_ERROR),
        ("lone-surrogate", PARSE_ERROR),
        ("bad-number", PARSE_ERROR),
        ("too-large", INVALID_REQUEST),
        ("not-jsonrpc", INVALID_REQUEST),
        ("bad-id", INVALID_REQUEST),
        ("empty-batch", INVALID_REQUEST),
    ],
)
def test_rejection_code_is_parse_error_for_json_faults_and_invalid_request_otherwise(
    reason: str, code: int
) -> None:
    assert BodyRejected(reason, "m").code == code


def test_rejection_str_carries_reason_and_message() -> None:
    assert str(BodyRejected("bad-id", "$.id must be ...")) == "bad-id: $.id must be ..."


# -- what is accepted, and how it reads -----------------------------------------------------------


def test_request_parses_to_its_members() -> None:
    body = parse_body(CALL, max_bytes=MAX_BYTES)
    assert body.messages == (
        JsonRpcMessage("request", 2, "tools/call", {"name": "delete_all", "arguments": {}}),
    )
    assert not body.is_batch
    assert body.first_id == 2


def test_unicode_escaped_method_is_recognized_as_the_method_it_decodes_to() -> None:
    (message,) = parse(
        b'{"jsonrpc":"2.0","id":1,"method":"tools\\u002fcall","params":{"name":"\\u0064elete_all"}}'
    )
    assert message.method == "tools/call"
    assert message.params == {"name": "delete_all"}


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call\\u0000"}', "tools/call\x00", id="escaped-nul"
        ),
        pytest.param(
            '{"jsonrpc":"2.0","id":1,"method":"tools\u2215call"}'.encode(),
            "tools\u2215call",
            id="division-slash",
        ),
        pytest.param(
            '{"jsonrpc":"2.0","id":1,"method":"tools/c\u0430ll"}'.encode(), "tools/c\u0430ll", id="cyrillic-a"
        ),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"Tools/Call"}', "Tools/Call", id="case"),
    ],
)
def test_look_alike_method_is_kept_verbatim_for_the_mapping_to_refuse(raw: bytes, method: str) -> None:
    (message,) = parse(raw)
    assert message.method == method
    assert message.method != "tools/call"


def test_notification_has_no_id() -> None:
    body = parse_body(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', max_bytes=MAX_BYTES)
    assert body.messages == (JsonRpcMessage("notification", None, "notifications/initialized", None),)
    assert body.first_id is None


@pytest.mark.parametrize(
    ("raw", "response_id"),
    [
        pytest.param(request(id=7, result={}), 7, id="result"),
        pytest.param(request(id="a", error={"code": -1, "message": "no", "data": [1]}), "a", id="error"),
        pytest.param(request(id=None, error={"code": -32700, "message": "parse"}), None, id="error-null-id"),
        pytest.param(request(error={"code": -32700, "message": "parse"}), None, id="error-without-id"),
    ],
)
def test_response_parses_with_its_id(raw: bytes, response_id: str | int | None) -> None:
    body = parse_body(raw, max_bytes=MAX_BYTES)
    assert body.messages == (JsonRpcMessage("response", response_id, None, None),)
    assert body.first_id is None


@pytest.mark.parametrize(
    "request_id",
    [0, -1, 2**53 - 1, -(2**53 - 1), "", "1", "req-\u00e9"],
    ids=["zero", "negative", "max-safe", "min-safe", "empty-string", "numeric-string", "unicode-string"],
)
def test_string_and_safe_integer_ids_are_accepted(request_id: str | int) -> None:
    (message,) = parse(request(id=request_id, method="ping"))
    assert message.id == request_id
    assert type(message.id) is type(request_id)


def test_params_may_be_an_array() -> None:
    (message,) = parse(request(id=1, method="x", params=[1, "a"]))
    assert message.params == [1, "a"]


def test_huge_integer_in_params_stays_exact() -> None:
    (message,) = parse(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":123456789012345678901234567890}}')
    assert message.params == {"n": 123456789012345678901234567890}


def test_surrounding_json_whitespace_is_accepted() -> None:
    assert parse(b" \t\r\n" + PING + b"\n\n")[0].method == "ping"


def test_escaped_backslash_before_u_is_not_a_surrogate_escape() -> None:
    (message,) = parse(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"p":"C:\\\\ud800"}}')
    assert message.params == {"p": "C:\\ud800"}


def test_escaped_surrogate_pair_decodes_to_one_character() -> None:
    (message,) = parse(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"e":"\\ud83d\\ude00"}}')
    assert message.params == {"e": "\U0001f600"}


def test_surrogate_pair_beside_an_integer_beyond_64_bits_is_accepted() -> None:
    (message,) = parse(
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":1180591620717411303424,"e":"\\ud83d\\ude00"}}'
    )
    assert message.params == {"n": 2**70, "e": "\U0001f600"}


def test_lone_surrogate_beside_an_integer_beyond_64_bits_is_rejected() -> None:
    with pytest.raises(BodyRejected, match="lone-surrogate"):
        parse(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":1180591620717411303424,"e":"\\ud800"}}')


def test_distinct_names_that_merely_look_alike_are_not_duplicates() -> None:
    (message,) = parse('{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":1,"n\u0430me":2}}'.encode())
    assert message.params == {"name": 1, "n\u0430me": 2}


def test_brackets_inside_strings_do_not_count_toward_depth() -> None:
    raw = request(id=1, method="x", params={"text": "[" * 500 + "{" * 500})
    assert parse(raw)[0].params == {"text": "[" * 500 + "{" * 500}


def test_nesting_at_the_depth_limit_is_accepted() -> None:
    assert parse(nested(64))[0].method == "x"
    assert parse(deep_objects(64))[0].method == "x"


@pytest.mark.timeout(3)  # the scan used to restart at every quote: ~12 s for this body
@pytest.mark.parametrize("tail", [b"", b"\\"], ids=["unterminated", "trailing-backslash"])
def test_depth_scan_of_hostile_quoting_takes_linear_time(tail: bytes) -> None:
    raw = b"[" * 70 + b'"' + b'\\"' * 30_000 + tail
    with pytest.raises(BodyRejected, match="too-deep"):
        parse_body(raw, max_bytes=MAX_BYTES)


def test_depth_limit_is_configurable() -> None:
    assert parse(nested(3), max_depth=3)[0].method == "x"
    with pytest.raises(BodyRejected, match="too-deep"):
        parse(nested(4), max_depth=3)


@pytest.mark.parametrize("max_depth", [0, MAX_DEPTH_LIMIT + 1], ids=["zero", "beyond-limit"])
def test_depth_limit_outside_the_supported_range_is_a_programming_error(max_depth: int) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        parse_body(PING, max_bytes=MAX_BYTES, max_depth=max_depth)


def test_body_of_exactly_max_bytes_is_accepted() -> None:
    assert parse(PING, max_bytes=len(PING))[0].method == "ping"


def test_size_is_checked_before_anything_else() -> None:
    with pytest.raises(BodyRejected, match="too-large"):
        parse_body(b"\xff" * 11, max_bytes=10)


# -- batches ------------------------------------------------------------------------------------


def test_tools_call_smuggled_among_pings_is_visible_for_authorization() -> None:
    body = parse_body(b"[" + PING + b"," + CALL + b"," + PING + b"]", max_bytes=MAX_BYTES)
    assert body.is_batch
    assert [m.method for m in body.messages] == ["ping", "tools/call", "ping"]
    assert body.messages[1].params == {"name": "delete_all", "arguments": {}}


def test_batch_first_id_is_the_first_request_id_after_notifications() -> None:
    body = parse_body(
        b'[{"jsonrpc":"2.0","method":"notifications/progress"},{"jsonrpc":"2.0","id":"r2","method":"ping"}]',
        max_bytes=MAX_BYTES,
    )
    assert [m.kind for m in body.messages] == ["notification", "request"]
    assert body.first_id == "r2"


def test_batch_of_responses_is_accepted() -> None:
    body = parse_body(
        b'[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"result":{}}]', max_bytes=MAX_BYTES
    )
    assert [m.id for m in body.messages] == [1, 2]
    assert body.first_id is None


def test_batch_bound_is_configurable() -> None:
    three = b"[" + b",".join([PING] * 3) + b"]"
    assert len(parse(three, max_batch=3)) == 3
    with pytest.raises(BodyRejected, match="batch-too-large"):
        parse(three, max_batch=2)


def test_batch_of_one_hundred_is_accepted() -> None:
    assert len(parse(b"[" + b",".join([CALL] * 100) + b"]")) == 100
