"""The AuthZEN HTTP binding of `callwarden pdp`: status codes, hostile bodies and heads, X-Request-ID,
PEP authentication, metadata under a base path, TLS. Real servers on loopback, real clients."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from callwarden.authzen.api import ApiOptions, AuthzenApi, Response, start_pdp
from callwarden.policy.pdp import EmbeddedPdp, compile_pdp
from callwarden.policy.pip import StaticInformation
from tests.support.tls import self_signed_files
from tests.test_pdp import policy, rule

JSON_HEADERS = {"Content-Type": "application/json"}
READ = {
    "subject": {"type": "user", "id": "alice"},
    "action": {"name": "read"},
    "resource": {"type": "doc", "id": "1"},
}
SECRET = "s3cret-token_for.the~PEP+/="


def reader_pdp() -> EmbeddedPdp:
    information = StaticInformation({"subject": {"user": {"alice": {"role": "reader"}}}}, ["read"])
    return compile_pdp(
        [
            policy(
                rule("readers-read", tools=["read"], when="subject.properties.?role.orValue('') == 'reader'")
            )
        ],
        information,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    options = ApiOptions(max_body_bytes=4096)
    with (
        start_pdp(reader_pdp(), listen="127.0.0.1:0", options=options) as running,
        httpx2.Client(base_url=running.base_url, timeout=10) as http,
    ):
        yield http


def raw_exchange(client: httpx2.Client, request: bytes) -> bytes:
    """Send bytes as they are (what httpx2 would refuse to send) and read the whole answer."""
    url = client.base_url
    with socket.create_connection((url.host, url.port), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_headers(answer: bytes) -> tuple[int, dict[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {name.lower(): value for name, value in headers.items()}


# --- Decisions and status codes ----------------------------------------------------------------------


def test_a_deny_is_200_with_decision_false(client: httpx2.Client) -> None:
    body = {**READ, "subject": {"type": "user", "id": "mallory"}}
    response = client.post("/access/v1/evaluation", json=body)
    assert (response.status_code, response.json()) == (200, {"decision": False})


def test_pip_attributes_beat_the_request_properties(client: httpx2.Client) -> None:
    body = {**READ, "subject": {"type": "user", "id": "alice", "properties": {"role": "nobody"}}}
    assert client.post("/access/v1/evaluation", json=body).json() == {"decision": True}


def test_an_error_body_is_a_plain_text_message(client: httpx2.Client) -> None:
    response = client.post("/access/v1/evaluation", json={"subject": READ["subject"]})
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "invalid request: action is required"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b'{"subject": 1, "subject": 2}', "duplicate-member", id="duplicate-member"),
        pytest.param(b'{"Subject": {}, "subject": {}}', "duplicate-member", id="case-folded-duplicate"),
        pytest.param(b'{"a": 1} {"b": 2}', "trailing-data", id="two-documents"),
        pytest.param(b'\xef\xbb\xbf{"a": 1}', "not-utf8", id="byte-order-mark"),
        pytest.param(b'{"a": "\xff"}', "not-utf8", id="invalid-utf8"),
        pytest.param(b'{"a": "\\ud800"}', "lone-surrogate", id="lone-surrogate"),
        pytest.param(b'{"a": NaN}', "not-json", id="nan"),
        pytest.param(b'{"a": 1e999}', "bad-number", id="overflowing-number"),
        pytest.param(b"[" * 65 + b"]" * 65, "too-deep", id="too-deep"),
    ],
)
def test_a_body_that_is_not_strict_json_is_400(client: httpx2.Client, raw: bytes, reason: str) -> None:
    response = client.post("/access/v1/evaluation", content=raw, headers=JSON_HEADERS)
    assert response.status_code == 400
    assert f"({reason})" in response.text


@pytest.mark.parametrize(
    "body", [[READ], "read", 1, None, True], ids=["array", "string", "number", "null", "bool"]
)
def test_a_top_level_value_other_than_an_object_is_400(client: httpx2.Client, body: Any) -> None:
    assert (
        client.post("/access/v1/evaluation", content=json.dumps(body), headers=JSON_HEADERS).status_code
        == 400
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", 'application/json;charset="UTF-8"'],
)
def test_json_content_type_variants_are_accepted(client: httpx2.Client, content_type: str) -> None:
    response = client.post(
        "/access/v1/evaluation", content=json.dumps(READ), headers={"Content-Type": content_type}
    )
    assert response.status_code == 200


def test_a_json_content_type_with_another_charset_is_400(client: httpx2.Client) -> None:
    headers = {"Content-Type": "application/json; charset=utf-16"}
    assert client.post("/access/v1/evaluation", content=json.dumps(READ), headers=headers).status_code == 400


def test_a_body_over_the_limit_is_413_and_the_connection_closes(client: httpx2.Client) -> None:
    response = client.post("/access/v1/evaluation", content=b" " * 4097, headers=JSON_HEADERS)
    assert (response.status_code, response.headers["connection"]) == (413, "close")


def test_a_chunked_body_is_411(client: httpx2.Client) -> None:
    request = (
        b"POST /access/v1/evaluation HTTP/1.1\r\nHost: pdp\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    assert status_and_headers(raw_exchange(client, request))[0] == 411


@pytest.mark.parametrize("length", [b"-1", b"1e3", b"0x10", b"\xd9\xa3"], ids=repr)
def test_a_content_length_that_is_not_a_decimal_number_is_400(client: httpx2.Client, length: bytes) -> None:
    request = (
        b"POST /access/v1/evaluation HTTP/1.1\r\nHost: pdp\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + length + b"\r\nConnection: close\r\n\r\n"
    )
    assert status_and_headers(raw_exchange(client, request))[0] == 400


def test_two_content_lengths_are_400(client: httpx2.Client) -> None:
    request = (
        b"POST /access/v1/evaluation HTTP/1.1\r\nHost: pdp\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}"
    )
    assert status_and_headers(raw_exchange(client, request))[0] == 400


def test_an_unknown_path_is_404(client: httpx2.Client) -> None:
    assert client.post("/access/v2/evaluation", json=READ).status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_another_method_on_an_endpoint_is_405_naming_post(client: httpx2.Client, method: str) -> None:
    response = client.request(method, "/access/v1/evaluation")
    assert (response.status_code, response.headers["allow"]) == (405, "POST")


def test_posting_to_the_metadata_is_405(client: httpx2.Client) -> None:
    assert client.post("/.well-known/authzen-configuration", json={}).status_code == 405


def test_head_of_the_metadata_has_its_headers_and_no_body(client: httpx2.Client) -> None:
    response = client.head("/.well-known/authzen-configuration")
    assert (response.status_code, response.content) == (200, b"")
    assert int(response.headers["content-length"]) > 0


def test_the_connection_serves_the_next_request_after_an_error(client: httpx2.Client) -> None:
    request = (
        b"POST /access/v1/evaluation HTTP/1.1\r\nHost: pdp\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n[]"
        b"POST /access/v1/evaluation HTTP/1.1\r\nHost: pdp\r\nContent-Type: application/json\r\n"
        b"Content-Length: "
        + str(len(json.dumps(READ))).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + json.dumps(READ).encode()
    )
    answer = raw_exchange(client, request)
    assert answer.count(b"HTTP/1.1 400") == 1
    assert answer.endswith(b'{"decision":true}')


def test_decisions_carry_no_context_unless_explaining() -> None:
    options = ApiOptions(explain=True)
    with start_pdp(reader_pdp(), listen="127.0.0.1:0", options=options) as running:
        answer = httpx2.post(f"{running.base_url}/access/v1/evaluation", json=READ).json()
    assert answer == {
        "decision": True,
        "context": {
            "reasons": ["default/rules/readers-read"],
            "reason": "allowed by rule 'default/rules/readers-read'",
        },
    }


def test_a_boxcar_item_error_keeps_its_context_without_explain(client: httpx2.Client) -> None:
    body = {**READ, "evaluations": [{}, {"resource": {"type": "doc"}}]}
    answer = client.post("/access/v1/evaluations", json=body).json()
    assert answer["evaluations"][0] == {"decision": True}
    assert answer["evaluations"][1]["context"]["error"]["status"] == 400


@pytest.mark.parametrize(
    ("semantic", "decisions"),
    [
        ("execute_all", [True, False, True]),
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
def test_every_evaluations_semantic(client: httpx2.Client, semantic: str, decisions: list[bool]) -> None:
    body = {
        "action": {"name": "read"},
        "resource": READ["resource"],
        "options": {"evaluations_semantic": semantic},
        "evaluations": [{"subject": {"type": "user", "id": who}} for who in ("alice", "mallory", "alice")],
    }
    answer = client.post("/access/v1/evaluations", json=body).json()
    assert [item["decision"] for item in answer["evaluations"]] == decisions


def test_an_unknown_evaluations_semantic_is_400(client: httpx2.Client) -> None:
    body = {**READ, "options": {"evaluations_semantic": "first_applicable"}, "evaluations": [{}]}
    assert client.post("/access/v1/evaluations", json=body).status_code == 400


# --- X-Request-ID -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/access/v1/evaluation", READ, 200),
        ("POST", "/access/v1/evaluation", {}, 400),
        ("POST", "/nowhere", READ, 404),
        ("GET", "/access/v1/evaluation", None, 405),
        ("GET", "/.well-known/authzen-configuration", None, 200),
    ],
    ids=["200", "400", "404", "405", "metadata"],
)
def test_x_request_id_is_echoed_on_every_answer(
    client: httpx2.Client, method: str, path: str, body: Any, status: int
) -> None:
    headers = {"X-Request-ID": "req 42/abc-id"}
    response = client.request(method, path, json=body, headers=headers)
    assert (response.status_code, response.headers["x-request-id"]) == (status, headers["X-Request-ID"])


def test_x_request_id_is_echoed_on_413(client: httpx2.Client) -> None:
    response = client.post(
        "/access/v1/evaluation", content=b" " * 5000, headers={**JSON_HEADERS, "X-Request-ID": "big"}
    )
    assert response.headers["x-request-id"] == "big"


def test_x_request_id_is_echoed_on_the_servers_own_501(client: httpx2.Client) -> None:
    request = b"BREW /access/v1/evaluation HTTP/1.1\r\nHost: pdp\r\nX-Request-ID: teapot\r\n\r\n"
    status, headers = status_and_headers(raw_exchange(client, request))
    assert (status, headers["x-request-id"]) == (501, "teapot")


def test_a_folded_x_request_id_is_never_echoed_into_the_response_head(client: httpx2.Client) -> None:
    request = (
        b"GET /.well-known/authzen-configuration HTTP/1.1\r\nHost: pdp\r\n"
        b"X-Request-ID: a\r\n Set-Cookie: injected=1\r\nConnection: close\r\n\r\n"
    )
    status, headers = status_and_headers(raw_exchange(client, request))
    assert status == 200
    assert "set-cookie" not in headers
    assert "injected" not in headers["x-request-id"]


# --- PEP authentication -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[httpx2.Client]:
    options = ApiOptions(bearer_tokens=("another-secret", SECRET))
    with (
        start_pdp(reader_pdp(), listen="127.0.0.1:0", options=options) as running,
        httpx2.Client(base_url=running.base_url, timeout=10) as http,
    ):
        yield http


def test_a_request_without_credentials_is_401_with_a_bearer_challenge(guarded: httpx2.Client) -> None:
    response = guarded.post("/access/v1/evaluation", json=READ)
    assert (response.status_code, response.headers["www-authenticate"]) == (401, 'Bearer realm="authzen"')


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Basic {SECRET}", f"Bearer {SECRET}x", f"Bearer  {SECRET[:-1]}", "Bearer"],
)
def test_a_wrong_credential_is_401_invalid_token(guarded: httpx2.Client, authorization: str) -> None:
    response = guarded.post("/access/v1/evaluation", json=READ, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_any_configured_secret_is_accepted(guarded: httpx2.Client, scheme: str) -> None:
    response = guarded.post(
        "/access/v1/evaluation", json=READ, headers={"Authorization": f"{scheme} {SECRET}"}
    )
    assert response.json() == {"decision": True}


def test_the_metadata_needs_no_credentials(guarded: httpx2.Client) -> None:
    assert guarded.get("/.well-known/authzen-configuration").status_code == 200


def test_a_secret_that_is_not_token68_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="token68"):
        AuthzenApi(reader_pdp(), "https://pdp.example", ApiOptions(bearer_tokens=("has space",)))


# --- Base URL, metadata, TLS ------------------------------------------------------------------------


def test_a_base_path_moves_the_api_and_inserts_the_well_known_path() -> None:
    api = AuthzenApi(reader_pdp(), "https://pdp.example/tenant1")
    metadata = api.accept("GET", "/.well-known/authzen-configuration/tenant1", {})
    endpoint = api.accept("POST", "/tenant1/access/v1/evaluation", {"content-type": ["application/json"]})
    assert isinstance(metadata, Response)
    published = json.loads(metadata.body)
    assert published["access_evaluation_endpoint"] == "https://pdp.example/tenant1/access/v1/evaluation"
    assert callable(endpoint)


@pytest.mark.parametrize("base_url", ["ftp://pdp", "https://pdp/?tenant=1", "https://pdp/#x", "pdp.example"])
def test_a_base_url_that_cannot_be_a_pdp_identifier_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="base URL"):
        AuthzenApi(reader_pdp(), base_url)


def test_discovery_over_https_publishes_https_endpoints(tmp_path: Path) -> None:
    cert, key = self_signed_files(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    with start_pdp(reader_pdp(), listen="127.0.0.1:0", ssl_context=server_tls) as running:
        metadata = httpx2.get(
            f"{running.base_url}/.well-known/authzen-configuration", verify=client_tls
        ).json()
        decision = httpx2.post(metadata["access_evaluation_endpoint"], json=READ, verify=client_tls).json()
    assert metadata["policy_decision_point"] == running.base_url
    assert all(url.startswith("https://") for name, url in metadata.items() if name != "capabilities")
    assert decision == {"decision": True}
