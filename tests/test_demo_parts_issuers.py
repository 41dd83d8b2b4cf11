"""The demo issuers: JWKS over loopback HTTP that verifies the tokens they mint (RS256 and ES256)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import example, given, settings
from hypothesis import strategies as st

from callwarden.demo.issuers import (
    DEFAULT_ISSUERS,
    LocalIssuer,
    RunningIssuers,
    SigningKey,
    b64url,
    encode_jws,
    jwk_thumbprint,
    start_issuers,
)

pytest_plugins = ("tests.support.mcp_servers",)
pytestmark = pytest.mark.integration

AUDIENCE = "https://finance.board.example/mcp"
KEYS = {"RS256": SigningKey.generate("RS256"), "ES256": SigningKey.generate("ES256")}
ISSUERS = [pytest.param(name, id=f"{name}-{spec.algorithm}") for name, spec in DEFAULT_ISSUERS.items()]


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    return json.loads(decode(header)), json.loads(decode(payload)), decode(signature)


def verify_over_http(issuer: LocalIssuer, token: str, audience: str = AUDIENCE) -> dict[str, Any]:
    """Verify with PyJWT against the JWKS as fetched over HTTP (discovery first), never the in-memory key."""
    discovery = httpx2.get(issuer.base_url + "/.well-known/openid-configuration", timeout=5).json()
    jwks = httpx2.get(discovery["jwks_uri"], timeout=5).json()
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [key for key in jwks["keys"] if key["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=discovery["issuer"],
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    return claims


@pytest.mark.parametrize("name", ISSUERS)
def test_jwks_served_over_http_verifies_a_minted_token(demo_issuers: RunningIssuers, name: str) -> None:
    issuer = demo_issuers[name]
    claims = verify_over_http(issuer, issuer.mint("alice", AUDIENCE, "board-agent"))
    assert (claims["iss"], claims["sub"], claims["client_id"]) == (
        DEFAULT_ISSUERS[name].issuer,
        "alice",
        "board-agent",
    )


@pytest.mark.parametrize("name", ISSUERS)
def test_token_header_names_alg_kid_and_at_jwt_type(demo_issuers: RunningIssuers, name: str) -> None:
    issuer = demo_issuers[name]
    header, _, _ = segments(issuer.mint("alice", AUDIENCE, "board-agent"))
    assert header == {"alg": DEFAULT_ISSUERS[name].algorithm, "kid": issuer.key.kid, "typ": "at+jwt"}


def test_token_claims_are_the_access_token_set(demo_issuers: RunningIssuers) -> None:
    _, claims, _ = segments(demo_issuers["finance"].mint("alice", AUDIENCE, "board-agent", ttl=120))
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id"}
    assert claims["exp"] - claims["iat"] == 120
    assert claims["nbf"] == claims["iat"]
    assert claims["aud"] == AUDIENCE


def test_roles_and_act_are_carried_when_given(demo_issuers: RunningIssuers) -> None:
    act = {"sub": "planner-agent", "client_id": "planner", "act": {"sub": "orchestrator"}}
    token = demo_issuers["workflow"].mint("alice", AUDIENCE, "board-agent", roles=["board", "cfo"], act=act)
    claims = verify_over_http(demo_issuers["workflow"], token)
    assert (claims["roles"], claims["act"]) == (["board", "cfo"], act)


def test_a_list_audience_stays_a_list(demo_issuers: RunningIssuers) -> None:
    token = demo_issuers["documents"].mint("alice", [AUDIENCE, "https://other.example/mcp"], "board-agent")
    assert verify_over_http(demo_issuers["documents"], token)["aud"] == [
        AUDIENCE,
        "https://other.example/mcp",
    ]


def test_extra_claims_override_the_standard_ones(demo_issuers: RunningIssuers) -> None:
    token = demo_issuers["finance"].mint(
        "alice", AUDIENCE, "board-agent", extra={"iss": "https://evil.example"}
    )
    with pytest.raises(jwt.InvalidIssuerError):
        verify_over_http(demo_issuers["finance"], token)


def test_negative_ttl_mints_an_expired_token(demo_issuers: RunningIssuers) -> None:
    token = demo_issuers["documents"].mint("alice", AUDIENCE, "board-agent", ttl=-60)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_over_http(demo_issuers["documents"], token)


def test_header_members_can_be_overridden_for_hostile_tokens(demo_issuers: RunningIssuers) -> None:
    token = demo_issuers["finance"].mint(
        "alice", AUDIENCE, "board-agent", header={"typ": "JWT", "kid": "nope"}
    )
    header, _, _ = segments(token)
    assert (header["typ"], header["kid"]) == ("JWT", "nope")


def test_every_token_has_a_fresh_jti(demo_issuers: RunningIssuers) -> None:
    issuer = demo_issuers["finance"]
    jtis = {segments(issuer.mint("alice", AUDIENCE, "board-agent"))[1]["jti"] for _ in range(20)}
    assert len(jtis) == 20


def test_a_token_signed_by_another_key_does_not_verify(demo_issuers: RunningIssuers) -> None:
    issuer = demo_issuers["finance"]
    forged = encode_jws(
        {"alg": "RS256", "kid": issuer.key.kid, "typ": "at+jwt"},
        {
            "iss": issuer.issuer,
            "sub": "mallory",
            "aud": AUDIENCE,
            "exp": 2**40,
            "iat": 0,
            "nbf": 0,
            "jti": "x",
        },
        SigningKey.generate("RS256"),
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify_over_http(issuer, forged)


def test_openid_configuration_names_issuer_and_jwks_uri(demo_issuers: RunningIssuers) -> None:
    issuer = demo_issuers["documents"]
    discovery = httpx2.get(issuer.base_url + "/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == "https://issuer.documents.board.example"
    assert discovery["jwks_uri"] == issuer.jwks_uri == issuer.base_url + "/jwks.json"


@pytest.mark.parametrize("path", ["/", "/jwks", "/jwks.json/", "/.well-known/oauth-authorization-server"])
def test_other_paths_are_not_found(demo_issuers: RunningIssuers, path: str) -> None:
    assert httpx2.get(demo_issuers["finance"].base_url + path, timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("name", "kty", "members"), [("finance", "RSA", {"e", "n"}), ("documents", "EC", {"x", "y"})]
)
def test_jwks_publishes_public_members_only(
    demo_issuers: RunningIssuers, name: str, kty: str, members: set[str]
) -> None:
    [jwk] = httpx2.get(demo_issuers[name].jwks_uri, timeout=5).json()["keys"]
    assert jwk["kty"] == kty
    assert set(jwk) == {"kty", "kid", "use", "alg", *members, *({"crv"} if kty == "EC" else set())}


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 9449's example public key and its RFC 7638 SHA-256 thumbprint, as published in RFC 9449
    # (draft-ietf-oauth-dpop-16 text) and re-verified independently.
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    }
    assert jwk_thumbprint(jwk) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def test_es256_signature_keeps_leading_zero_bytes_of_r_and_s() -> None:
    # About 1 signature in 128 has an r or s below 2**248; its JWS form must still be 32+32 bytes.
    key = SigningKey.generate("ES256")
    public = jwt.PyJWK(key.jwk()).key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for attempt in range(5000):
        message = str(attempt).encode()
        signature = key.sign(message)
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if min(r.bit_length(), s.bit_length()) <= 248:
            break
    else:
        pytest.fail("no short r or s in 5000 signatures")
    assert len(signature) == 64
    public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


@settings(max_examples=50, deadline=None)
@given(claims=st.dictionaries(st.text(max_size=8), st.text(max_size=16) | st.integers(), max_size=4))
@example(claims={"jti": 0, "exp": 0})  # found by the search once: registered names, odd values
def test_any_claims_survive_sign_and_verify_with_both_algorithms(claims: dict[str, Any]) -> None:
    # The signature is what is under test: PyJWT's checks of registered claims would refuse
    # generated ones such as {"jti": 0} or {"exp": 0} whatever the signer did.
    unchecked = {f"verify_{claim}": False for claim in ("aud", "exp", "nbf", "iat", "iss", "sub", "jti")}
    for algorithm in ("RS256", "ES256"):
        key = KEYS[algorithm]
        token = encode_jws({"alg": algorithm, "kid": key.kid}, claims, key)
        decoded = jwt.decode(token, jwt.PyJWK(key.jwk()).key, algorithms=[algorithm], options=unchecked)
        assert decoded == claims


def test_encoding_is_base64url_without_padding() -> None:
    assert b64url(b"\xfb\xff") == "-_8"


def test_rotation_signs_with_the_new_key_and_keeps_publishing_the_old() -> None:
    with start_issuers({"documents": 0}) as issuers:
        issuer = issuers["documents"]
        old = issuer.key.kid
        old_token = issuer.mint("alice", AUDIENCE, "board-agent")
        fresh = issuer.rotate_key()
        new_token = issuer.mint("alice", AUDIENCE, "board-agent")
        assert segments(new_token)[0]["kid"] == fresh.kid != old
        assert [key["kid"] for key in httpx2.get(issuer.jwks_uri, timeout=5).json()["keys"]] == [
            fresh.kid,
            old,
        ]
        verify_over_http(issuer, old_token)
        verify_over_http(issuer, new_token)


def test_rotation_without_keeping_drops_the_old_key() -> None:
    with start_issuers({"workflow": 0}) as issuers:
        issuer = issuers["workflow"]
        old = issuer.key.kid
        fresh = issuer.rotate_key(keep_previous=False)
        assert [key["kid"] for key in httpx2.get(issuer.jwks_uri, timeout=5).json()["keys"]] == [fresh.kid]
        assert fresh.kid != old


def test_jwks_fetches_are_counted() -> None:
    with start_issuers({"finance": 0}) as issuers:
        issuer = issuers["finance"]
        for _ in range(3):
            httpx2.get(issuer.jwks_uri, timeout=5)
        httpx2.get(issuer.base_url + "/.well-known/openid-configuration", timeout=5)
        assert issuer.jwks_fetches == 3


def test_start_issuers_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown demo issuers"):
        start_issuers({"payroll": 0})


def test_start_issuers_fails_on_a_taken_port(demo_issuers: RunningIssuers) -> None:
    taken = int(demo_issuers["finance"].base_url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        start_issuers({"documents": 0, "finance": taken})
