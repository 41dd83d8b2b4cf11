"""DPoP (RFC 9449) through real Envoy and the real board-packet MCP servers.

The example as shipped: finance requires DPoP with server nonces (ES256 and EdDSA proofs,
60 s). Every one-defect proof is a 401 with the DPoP challenge naming the right error; a
valid proof, after the nonce round trip, reaches the tool. A second data path runs every
server in `mode: allowed` (bearer and DPoP both accepted, no nonce), a third the shipped
configuration over Envoy's HTTP ext_authz (which forwards only the headers it is told to).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from callwarden.demo.agent import ToolCall, run_agent
from callwarden.demo.dpop import DpopKey
from callwarden.extauthz.dpop import NonceIssuer
from callwarden.policy.model import Dpop
from tests.support.datapath import ALLOWED_CALLS, DataPath, start_datapath, tools_call
from tests.support.dpop import ProofKey, ath
from tests.support.issuer import OMIT, public_jwk

pytestmark = pytest.mark.integration

URI = "http://finance.board.example/mcp"  # how the test client addresses finance (Host header)
METADATA = 'resource_metadata="https://finance.board.example/.well-known/oauth-protected-resource/mcp"'
CHALLENGE = f'DPoP {METADATA}, algs="ES256 EdDSA"'
ALLOWED = tools_call(*ALLOWED_CALLS["finance"])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("dpop"), dpop=True) as running:
        yield running


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("dpop-allowed"), dpop=Dpop(mode="allowed")) as running:
        yield running


@pytest.fixture(scope="module")
def over_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPath]:
    with start_datapath(tmp_path_factory.mktemp("dpop-http"), dpop=True, transport="http") as running:
        yield running


class Client:
    """An agent holding a proof key and a token bound to it, remembering the server's nonce."""

    def __init__(self, dp: DataPath, kind: str = "ec") -> None:
        self.dp = dp
        self.key = ProofKey(kind)
        self.token = dp.token("finance", extra={"cnf": {"jkt": self.key.jkt}})
        self.nonce: str | None = None

    def proof(self, **overrides: Any) -> str:
        return self.key.proof("POST", URI, self.token, nonce=self.nonce, **overrides)

    def post(self, proof: str | None = None, *, token: str | None = None) -> httpx2.Response:
        headers = {"authorization": f"DPoP {token or self.token}"}
        if proof is not None:
            headers["dpop"] = proof
        return self.dp.post("finance", ALLOWED, headers=headers)

    def with_nonce(self) -> Client:
        """The RFC 9449 §9 round trip: a proof without nonce, then the nonce the 401 carried."""
        refused = self.post(self.proof())
        assert refused.status_code == 401
        self.nonce = refused.headers["dpop-nonce"]
        return self


def _challenge(response: httpx2.Response) -> str:
    assert response.status_code == 401, response.text
    return response.headers["www-authenticate"]


# --- the example as shipped: required, with nonces --------------------------------------


def test_no_credentials_get_the_bare_dpop_challenge(shipped: DataPath) -> None:
    assert _challenge(shipped.post("finance", ALLOWED)) == CHALLENGE


def test_a_first_proof_gets_use_dpop_nonce_and_a_nonce(shipped: DataPath) -> None:
    client = Client(shipped)
    response = client.post(client.proof())
    expected = 'error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"'
    assert _challenge(response) == f"{CHALLENGE}, {expected}"
    assert response.headers["dpop-nonce"]


def test_the_nonce_round_trip_reaches_the_tool_with_the_key_in_context_cnf(shipped: DataPath) -> None:
    client = Client(shipped).with_nonce()
    before = shipped.executed("finance")
    response = client.post(client.proof())
    assert response.status_code == 200, response.text
    assert shipped.executed("finance") == before + 1
    [request] = shipped.decision_of(response)["requests"]
    assert request["context"]["cnf"] == {"jkt": client.key.jkt, "jwk": client.key.jwk, "alg": "ES256"}


def _previous_window_nonce(dp: DataPath) -> str:
    """A nonce finance issued in the last window: still valid, about to expire."""
    keys = dp.gateway.ext_authz.dpop.nonce_keys
    return NonceIssuer(keys, "board-packet/finance", 60, clock=lambda: time.time() - 60).issue()


@pytest.mark.parametrize("transport", ["shipped", "over_http"])
def test_an_allowed_request_with_an_ageing_nonce_gets_the_current_one(
    transport: str, request: pytest.FixtureRequest
) -> None:
    dp: DataPath = request.getfixturevalue(transport)
    client = Client(dp)
    client.nonce = _previous_window_nonce(dp)
    response = client.post(client.proof())
    assert response.status_code == 200, response.text
    client.nonce = response.headers["dpop-nonce"]
    again = client.post(client.proof())
    assert again.status_code == 200
    assert "dpop-nonce" not in again.headers  # the current one needs no replacement


def test_an_eddsa_proof_is_accepted_too(shipped: DataPath) -> None:
    client = Client(shipped, "ed").with_nonce()
    assert client.post(client.proof()).status_code == 200


def test_a_plain_bearer_token_is_refused_with_the_dpop_challenge(shipped: DataPath) -> None:
    response = shipped.post("finance", ALLOWED, token=shipped.token("finance"))
    assert _challenge(response).startswith(f'{CHALLENGE}, error="invalid_token", error_description="')
    assert shipped.decision_of(response)["reasons"] == ["token:dpop-required"]


def test_a_dpop_bound_token_presented_as_bearer_is_refused(shipped: DataPath) -> None:
    client = Client(shipped).with_nonce()
    response = shipped.post("finance", ALLOWED, token=client.token, headers={"dpop": client.proof()})
    assert _challenge(response).startswith(f'{CHALLENGE}, error="invalid_token"')


def _other_key(client: Client) -> str:
    return ProofKey().proof("POST", URI, client.token, nonce=client.nonce)


def _foreign_nonce(client: Client) -> str:
    keys = client.dp.gateway.ext_authz.dpop.nonce_keys  # the same secret, another McpServer
    return client.proof(claims={"nonce": NonceIssuer(keys, "board-packet/documents", 60).issue()})


# (how the proof is broken, the error, the decision log reason)
ONE_DEFECT: dict[str, tuple[Callable[[Client], str], str, str]] = {
    "wrong-htm": (lambda c: c.proof(claims={"htm": "GET"}), "invalid_dpop_proof", "dpop-htm"),
    "htu-with-query": (lambda c: c.proof(claims={"htu": URI + "?a=1"}), "invalid_dpop_proof", "dpop-htu"),
    "htu-other-host": (
        lambda c: c.proof(claims={"htu": "http://documents.board.example/mcp"}),
        "invalid_dpop_proof",
        "dpop-htu",
    ),
    "htu-https-while-the-client-used-http": (
        lambda c: c.proof(claims={"htu": "https://finance.board.example/mcp"}),
        "invalid_dpop_proof",
        "dpop-htu",
    ),
    "stale-iat": (lambda c: c.proof(iat=time.time() - 120), "invalid_dpop_proof", "dpop-stale"),
    "future-iat-beyond-skew": (lambda c: c.proof(iat=time.time() + 120), "invalid_dpop_proof", "dpop-future"),
    "missing-ath": (lambda c: c.proof(claims={"ath": OMIT}), "invalid_dpop_proof", "dpop-claims"),
    "wrong-ath": (lambda c: c.proof(claims={"ath": ath("another-token")}), "invalid_dpop_proof", "dpop-ath"),
    "other-key-than-cnf-jkt": (_other_key, "invalid_token", "dpop-binding"),
    "private-key-in-jwk": (
        lambda c: c.proof(header={"jwk": public_jwk(None, c.key.private, d="AAAA")}),
        "invalid_dpop_proof",
        "dpop-private-key",
    ),
    "alg-none": (
        lambda c: c.proof(header={"alg": "none"}, sign_with=None),
        "invalid_dpop_proof",
        "dpop-algorithm",
    ),
    "hs256": (
        lambda c: c.proof(header={"alg": "HS256"}, sign_with=b"s" * 32),
        "invalid_dpop_proof",
        "dpop-algorithm",
    ),
    "missing-nonce-after-one-was-issued": (
        lambda c: c.key.proof("POST", URI, c.token),
        "use_dpop_nonce",
        "dpop-nonce",
    ),
    "nonce-from-another-server": (_foreign_nonce, "use_dpop_nonce", "dpop-nonce"),
}


@pytest.mark.parametrize("defect", ONE_DEFECT)
def test_a_proof_with_one_defect_is_401_with_the_dpop_challenge_and_its_error(
    shipped: DataPath, defect: str
) -> None:
    make, error, reason = ONE_DEFECT[defect]
    client = Client(shipped).with_nonce()
    before = shipped.executed("finance")
    response = client.post(make(client))
    assert _challenge(response).startswith(f'{CHALLENGE}, error="{error}", error_description="')
    assert shipped.decision_of(response)["reasons"] == [f"token:{reason}"]
    assert ("dpop-nonce" in response.headers) == (error == "use_dpop_nonce")
    assert shipped.executed("finance") == before


def test_two_dpop_headers_are_refused(shipped: DataPath) -> None:
    client = Client(shipped).with_nonce()
    headers = [
        ("host", shipped.host("finance")),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("authorization", f"DPoP {client.token}"),
        ("dpop", client.proof()),
        ("dpop", client.proof()),
    ]
    response = shipped.client.post(shipped.url, content=ALLOWED, headers=headers)
    assert _challenge(response).startswith(f'{CHALLENGE}, error="invalid_dpop_proof"')
    assert shipped.decision_of(response)["reasons"] == ["token:dpop-duplicate-header"]


def test_a_replayed_proof_is_refused(shipped: DataPath) -> None:
    client = Client(shipped).with_nonce()
    proof = client.proof()
    assert client.post(proof).status_code == 200
    replayed = client.post(proof)
    assert _challenge(replayed).startswith(f'{CHALLENGE}, error="invalid_dpop_proof"')
    assert shipped.decision_of(replayed)["reasons"] == ["token:dpop-replay"]


def test_a_client_claiming_https_in_x_forwarded_proto_does_not_change_the_scheme(shipped: DataPath) -> None:
    # Envoy at the edge (use_remote_address) overwrites x-forwarded-proto with what it saw.
    client = Client(shipped).with_nonce()
    proof = client.proof(claims={"htu": "https://finance.board.example/mcp"})
    headers = {"authorization": f"DPoP {client.token}", "dpop": proof, "x-forwarded-proto": "https"}
    response = shipped.post("finance", ALLOWED, headers=headers)
    assert shipped.decision_of(response)["reasons"] == ["token:dpop-htu"]


def test_the_protected_resource_metadata_advertises_dpop(shipped: DataPath) -> None:
    response = shipped.send("GET", "finance", path="/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    metadata = response.json()
    assert metadata["resource"] == "https://finance.board.example/mcp"
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    assert metadata["dpop_bound_access_tokens_required"] is True


def test_a_server_without_dpop_advertises_none(shipped: DataPath) -> None:
    response = shipped.send("GET", "documents", path="/.well-known/oauth-protected-resource/mcp")
    metadata = response.json()
    assert metadata["resource"] == "https://documents.board.example/mcp"
    assert "dpop_signing_alg_values_supported" not in metadata


# --- mode: allowed ------------------------------------------------------------------------

ALLOWED_CHALLENGES = f'Bearer {METADATA}, DPoP {METADATA}, algs="ES256 PS256 RS256 EdDSA"'


def test_allowed_mode_accepts_a_plain_bearer_token(allowed: DataPath) -> None:
    assert allowed.post("finance", ALLOWED, token=allowed.token("finance")).status_code == 200


def test_allowed_mode_accepts_a_dpop_proof_without_a_nonce(allowed: DataPath) -> None:
    client = Client(allowed)
    response = client.post(client.proof())
    assert response.status_code == 200, response.text
    [request] = allowed.decision_of(response)["requests"]
    assert request["context"]["cnf"]["jkt"] == client.key.jkt


def test_allowed_mode_offers_both_schemes_without_error_to_a_request_without_credentials(
    allowed: DataPath,
) -> None:
    assert _challenge(allowed.post("finance", ALLOWED)) == ALLOWED_CHALLENGES


def test_allowed_mode_puts_a_bearer_error_on_the_bearer_challenge(allowed: DataPath) -> None:
    bound = Client(allowed).token
    challenge = _challenge(allowed.post("finance", ALLOWED, token=bound))
    assert challenge.startswith(
        f'Bearer {METADATA}, error="invalid_token", error_description="the token is DPoP-bound'
    )
    assert challenge.endswith(f'DPoP {METADATA}, algs="ES256 PS256 RS256 EdDSA"')


def test_allowed_mode_puts_a_proof_error_on_the_dpop_challenge(allowed: DataPath) -> None:
    client = Client(allowed)
    challenge = _challenge(client.post(client.proof(claims={"htm": "PUT"})))
    assert challenge.startswith(f'{ALLOWED_CHALLENGES}, error="invalid_dpop_proof"')


def test_a_bearer_token_without_dpop_on_a_plain_bearer_path_still_carries_no_cnf(allowed: DataPath) -> None:
    response = allowed.post("finance", ALLOWED, token=allowed.token("finance"))
    [request] = allowed.decision_of(response)["requests"]
    assert "cnf" not in request["context"]


# --- over Envoy's HTTP ext_authz ----------------------------------------------------------


def test_the_nonce_round_trip_works_over_http_ext_authz(over_http: DataPath) -> None:
    client = Client(over_http)
    refused = client.post(client.proof())
    assert 'error="use_dpop_nonce"' in _challenge(refused)
    client.nonce = refused.headers["dpop-nonce"]
    response = client.post(client.proof())
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["result"]


# --- the demo agent (official MCP client) proving possession -----------------------------


def test_the_mcp_client_with_a_dpop_key_initializes_lists_and_calls_through_required_finance(
    shipped: DataPath,
) -> None:
    key = DpopKey.generate()
    token = shipped.token("finance", extra={"cnf": {"jkt": key.jkt}})
    start = len(shipped.decisions())
    run = run_agent(
        shipped.url, token, [ToolCall(*ALLOWED_CALLS["finance"])], host=shipped.host("finance"), dpop=key
    )
    assert [outcome.status for outcome in run.outcomes] == ["allowed", "allowed", "allowed"]
    refused = [line for line in shipped.decisions()[start:] if line["code"] == 401]
    # One use_dpop_nonce for the session: the nonce is remembered for every later request.
    assert [line["reasons"] for line in refused] == [["token:dpop-nonce"]]
