"""CheckResponse builders: what Envoy is told to do on allow and deny."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from hypothesis import given
from hypothesis import strategies as st

from callwarden.extauthz.responses import DECISION_ID_HEADER, allow_response, deny_response

OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def test_allow_sets_the_decision_id_overwriting_any_client_value() -> None:
    response = allow_response({DECISION_ID_HEADER: "01J"})
    assert response.status.code == 0
    [option] = response.ok_response.headers
    assert (option.header.key, option.header.value) == (DECISION_ID_HEADER, "01J")
    assert option.append_action == OVERWRITE


def test_allow_removes_the_client_sent_reserved_headers() -> None:
    response = allow_response({DECISION_ID_HEADER: "01J"}, ["x-callwarden-role", "x-callwarden-forged"])
    assert list(response.ok_response.headers_to_remove) == ["x-callwarden-forged", "x-callwarden-role"]


@pytest.mark.parametrize(
    "removed",
    [[DECISION_ID_HEADER], [DECISION_ID_HEADER.upper()], ["X-Callwarden-Decision-Id", "x-callwarden-other"]],
    ids=["same", "upper", "mixed-case-plus-other"],
)
def test_allow_never_removes_a_header_it_sets(removed: list[str]) -> None:
    response = allow_response({DECISION_ID_HEADER: "01J"}, removed)
    assert DECISION_ID_HEADER not in response.ok_response.headers_to_remove


@pytest.mark.parametrize(
    "headers", [{}, {"x-other": "1"}, {"x-callwarden-decision": "1"}], ids=["empty", "other", "near-miss"]
)
def test_allow_without_a_decision_id_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=DECISION_ID_HEADER):
        allow_response(headers)


def test_allow_accepts_the_decision_id_in_any_case() -> None:
    [option] = allow_response({"X-Callwarden-Decision-Id": "01J"}).ok_response.headers
    assert option.header.key == DECISION_ID_HEADER


@pytest.mark.parametrize(("status", "rpc_code"), [(200, 7), (401, 16), (403, 7), (429, 7), (599, 7)], ids=str)
def test_deny_carries_status_body_and_json_content_type(status: int, rpc_code: int) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"denied"}}'
    response = deny_response(status, body, {"x-callwarden-decision-id": "01J"})
    assert response.status.code == rpc_code
    denied = response.denied_response
    assert denied.status.code == status
    assert denied.body == body.decode()
    headers = {option.header.key: option.header.value for option in denied.headers}
    assert headers == {"content-type": "application/json", "x-callwarden-decision-id": "01J"}
    assert all(option.append_action == OVERWRITE for option in denied.headers)


def test_deny_sends_the_challenge_header() -> None:
    challenge = 'Bearer resource_metadata="https://mcp.test/.well-known/oauth-protected-resource"'
    response = deny_response(401, b"{}", {"WWW-Authenticate": challenge})
    headers = {option.header.key: option.header.value for option in response.denied_response.headers}
    assert headers["www-authenticate"] == challenge


def test_deny_lets_the_caller_replace_the_content_type_once() -> None:
    response = deny_response(403, b"{}", {"Content-Type": "application/problem+json"})
    assert [(o.header.key, o.header.value) for o in response.denied_response.headers] == [
        ("content-type", "application/problem+json")
    ]


@pytest.mark.parametrize("status", [0, 100, 199, 600, -403, 70000], ids=str)
def test_deny_refuses_a_status_outside_200_599(status: int) -> None:
    with pytest.raises(ValueError, match=r"200\.\.599"):
        deny_response(status, b"{}")


@pytest.mark.parametrize(
    "body", [b"\xff", b'{"a":"\xc3"}', b"\xed\xa0\x80"], ids=["ff", "truncated", "surrogate"]
)
def test_deny_refuses_a_body_that_is_not_utf8(body: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        deny_response(403, body)


@given(st.text())
def test_deny_body_round_trips_any_unicode(text: str) -> None:
    assert deny_response(403, text.encode()).denied_response.body == text
