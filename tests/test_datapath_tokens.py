"""Layer 1 through real Envoy: every token failure is a 401 with the RFC 9728 challenge, and
issuer keys that cannot be had fail closed, then recover when the issuer returns."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from callwarden.demo.issuers import SigningKey, b64url, encode_jws
from callwarden.extauthz.token import JwksStore
from tests.support.datapath import ALLOWED_CALLS, DataPath, running_datapath, start_datapath, tools_call
from tests.support.issuer import LocalIssuer

pytestmark = pytest.mark.integration

datapath = pytest.fixture(scope="module", name="datapath")(running_datapath)

CHALLENGE = (
    'Bearer resource_metadata="https://finance.board.example/.well-known/oauth-protected-resource/mcp"'
)
ALLOWED = tools_call(*ALLOWED_CALLS["finance"])


def _segments(token: str) -> tuple[dict[str, Any], str]:
    header, payload, _ = token.split(".")
    return json.loads(base64.urlsafe_b64decode(header + "==")), payload


def _signed_with(token: str, header: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """`token`'s claims under another header and signature."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{_segments(token)[1]}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def _rsa_public_pem(datapath: DataPath) -> bytes:
    assert datapath.issuers is not None
    jwk = datapath.issuers["finance"].key.public_jwk
    n, e = (int.from_bytes(base64.urlsafe_b64decode(jwk[m] + "=="), "big") for m in ("n", "e"))
    public_key = rsa.RSAPublicNumbers(e, n).public_key()
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _bad_signature(dp: DataPath) -> str:
    valid = dp.token("finance")
    header, _ = _segments(valid)  # the issuer's kid: only the key that signed is someone else's
    return _signed_with(valid, header, SigningKey.generate("RS256").sign)


def _alg_none(dp: DataPath) -> str:
    valid = dp.token("finance")
    return _signed_with(valid, {**_segments(valid)[0], "alg": "none"}, lambda _: b"")


def _hs256_with_the_public_key(dp: DataPath) -> str:
    valid = dp.token("finance")
    secret = _rsa_public_pem(dp)
    return _signed_with(
        valid,
        {**_segments(valid)[0], "alg": "HS256"},
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def _other_issuer(dp: DataPath) -> str:
    assert dp.issuers is not None
    # Signed by finance's own key, so only the `iss` is wrong.
    key = dp.issuers["finance"].key
    claims = json.loads(base64.urlsafe_b64decode(_segments(dp.token("finance"))[1] + "=="))
    claims["iss"] = "https://issuer.elsewhere.example"
    return encode_jws({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims, key)


# (what the client sends in Authorization, or None for nothing; the log reason)
TOKENS: dict[str, tuple[Callable[[DataPath], str | None], str]] = {
    "malformed": (lambda dp: "Bearer not-a-jwt", "token:malformed"),
    "bad-signature": (lambda dp: f"Bearer {_bad_signature(dp)}", "token:signature"),
    "unknown-kid": (
        lambda dp: f"Bearer {dp.token('finance', header={'kid': 'no-such-key'})}",
        "token:unknown-key",
    ),
    "alg-none": (lambda dp: f"Bearer {_alg_none(dp)}", "token:algorithm"),
    "hs256-with-rsa-public-key": (lambda dp: f"Bearer {_hs256_with_the_public_key(dp)}", "token:algorithm"),
    "expired": (lambda dp: f"Bearer {dp.token('finance', ttl=-120)}", "token:expired"),
    "not-yet-valid": (
        lambda dp: f"Bearer {dp.token('finance', extra={'nbf': int(time.time()) + 3600})}",
        "token:not-yet-valid",
    ),
    "wrong-issuer": (lambda dp: f"Bearer {_other_issuer(dp)}", "token:issuer"),
    "wrong-audience": (
        lambda dp: f"Bearer {dp.token('finance', aud='https://payroll.example/mcp')}",
        "token:audience",
    ),
    "audience-array-without-this-server": (
        lambda dp: f"Bearer {dp.token('finance', aud=[dp.resource('documents'), dp.resource('workflow')])}",
        "token:audience",
    ),
}


def _post(dp: DataPath, authorization: str | None) -> httpx2.Response:
    headers = {"authorization": authorization} if authorization is not None else {}
    return dp.post("finance", ALLOWED, headers=headers)


def test_a_missing_token_is_401_with_the_bare_challenge(datapath: DataPath) -> None:
    response = _post(datapath, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE  # no error param: nothing was presented
    assert datapath.decision_of(response)["reasons"] == ["token:missing"]


@pytest.mark.parametrize("case", TOKENS)
def test_a_bad_token_is_401_invalid_token_with_the_challenge(datapath: DataPath, case: str) -> None:
    make, _ = TOKENS[case]
    response = _post(datapath, make(datapath))
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(CHALLENGE + ', error="invalid_token", error_description="')


@pytest.mark.parametrize("case", TOKENS)
def test_a_bad_token_is_logged_with_its_specific_reason(datapath: DataPath, case: str) -> None:
    make, reason = TOKENS[case]
    line = datapath.decision_of(_post(datapath, make(datapath)))
    assert (line["decision"], line["code"], line["reasons"]) == ("deny", 401, [reason])


@pytest.mark.parametrize("case", TOKENS)
def test_a_bad_token_never_executes_on_the_server(datapath: DataPath, case: str) -> None:
    make, _ = TOKENS[case]
    before = datapath.executed("finance")
    _post(datapath, make(datapath))
    assert datapath.executed("finance") == before


def test_the_token_checked_is_the_one_sent_not_a_cached_lookalike(datapath: DataPath) -> None:
    valid = datapath.token("finance")
    assert _allowed(_post(datapath, f"Bearer {valid}"))
    tampered = valid[:-6] + ("AAAAAA" if not valid.endswith("AAAAAA") else "BBBBBB")
    assert _post(datapath, f"Bearer {tampered}").status_code == 401


# --- the issuer's keys out of reach -----------------------------------------------------


def _short_lived_store() -> JwksStore:
    # Keys refresh every 0.5 s and stay usable 1 s after the last good fetch; a miss may refetch at
    # once. Production keeps the defaults (5 min / 1 h); the behaviour is the same, only faster.
    return JwksStore(timeout=0.5, refresh_interval=0.5, min_refetch_interval=0.05, stale_for=1.0)


@pytest.fixture
def own_issuers() -> Iterator[dict[str, LocalIssuer]]:
    issuers = {name: LocalIssuer(name=name) for name in ALLOWED_CALLS}
    yield issuers
    for issuer in issuers.values():
        issuer.stop()


@pytest.fixture
def outage_datapath(tmp_path: Path, own_issuers: dict[str, LocalIssuer]) -> Iterator[DataPath]:
    store = _short_lived_store()
    try:
        with start_datapath(tmp_path, issuers=own_issuers, jwks=store) as running:
            yield running
    finally:
        store.close()


def _own_token(dp: DataPath, issuer: LocalIssuer) -> str:
    return issuer.mint(aud=dp.resource("finance"), sub="alice", roles=["analyst"], client_id="board-agent")


def _allowed(response: httpx2.Response) -> bool:
    """The tool ran: a JSON-RPC result came back (a JSON-RPC deny is HTTP 200 too)."""
    return response.status_code == 200 and "result" in response.json()


def _until(
    dp: DataPath, token: str, wanted: Callable[[httpx2.Response], bool], seconds: float
) -> httpx2.Response:
    """Send the allowed call until its answer is `wanted` (or the time is up: the last answer)."""
    deadline = time.monotonic() + seconds
    while True:
        response = _post(dp, f"Bearer {token}")
        if wanted(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def _rejected(response: httpx2.Response) -> bool:
    return response.status_code == 401


def test_keys_unreachable_from_the_start_fail_closed(
    outage_datapath: DataPath, own_issuers: dict[str, LocalIssuer]
) -> None:
    own_issuers["finance"].stop()
    response = _post(outage_datapath, f"Bearer {_own_token(outage_datapath, own_issuers['finance'])}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(CHALLENGE + ', error="invalid_token"')
    assert outage_datapath.decision_of(response)["reasons"] == ["token:keys-unavailable"]
    assert outage_datapath.executed("finance") == 0


def test_keys_unreachable_from_the_start_recover_when_the_issuer_returns(
    outage_datapath: DataPath, own_issuers: dict[str, LocalIssuer]
) -> None:
    issuer = own_issuers["finance"]
    issuer.stop()
    token = _own_token(outage_datapath, issuer)
    assert _rejected(_post(outage_datapath, f"Bearer {token}"))
    issuer.start()
    response = _until(outage_datapath, token, _allowed, 5.0)
    assert _allowed(response), response.text
    assert outage_datapath.executed("finance") == 1


def test_keys_unreachable_mid_run_fail_closed_once_the_cached_keys_go_stale(
    outage_datapath: DataPath, own_issuers: dict[str, LocalIssuer]
) -> None:
    issuer = own_issuers["finance"]
    token = _own_token(outage_datapath, issuer)
    assert _allowed(_post(outage_datapath, f"Bearer {token}"))
    issuer.stop()
    response = _until(outage_datapath, token, _rejected, 5.0)
    assert response.status_code == 401
    assert outage_datapath.decision_of(response)["reasons"] == ["token:keys-unavailable"]


def test_keys_unreachable_mid_run_recover_when_the_issuer_returns(
    outage_datapath: DataPath, own_issuers: dict[str, LocalIssuer]
) -> None:
    issuer = own_issuers["finance"]
    token = _own_token(outage_datapath, issuer)
    assert _allowed(_post(outage_datapath, f"Bearer {token}"))
    issuer.stop()
    assert _rejected(_until(outage_datapath, token, _rejected, 5.0))
    before = outage_datapath.executed("finance")
    issuer.start()
    response = _until(outage_datapath, token, _allowed, 5.0)
    assert _allowed(response), response.text
    assert outage_datapath.executed("finance") == before + 1
