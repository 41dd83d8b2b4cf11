"""Layer 1 token validation: the accept/reject table, the validated-token cache, concurrency.

Real keys, real signatures, a real JWKS endpoint on loopback (tests/support/issuer.py).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.extauthz.token import JwksStore, TokenRejected, TokenValidator
from tests.support.issuer import OMIT, LocalIssuer, ManualClock, b64url, compact, mcp_server

RESOURCE = "https://mcp.example.com/mcp"
ALIAS = "https://alias.example.com"
LEEWAY = 30
NOW = float(int(time.time()))
ALGORITHMS = ["RS256", "ES256", "PS256", "EdDSA"]

Make = Callable[[LocalIssuer, LocalIssuer], str | None]


@pytest.fixture(scope="module")
def wall() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture(scope="module")
def issuers(wall: ManualClock) -> Iterator[tuple[LocalIssuer, LocalIssuer]]:
    trusted, other = LocalIssuer(name="trusted", clock=wall), LocalIssuer(name="other", clock=wall)
    yield trusted, other
    trusted.stop()
    other.stop()


@pytest.fixture(scope="module")
def store() -> Iterator[JwksStore]:
    jwks = JwksStore(timeout=2.0)
    yield jwks
    jwks.close()


@pytest.fixture(scope="module")
def validator(
    issuers: tuple[LocalIssuer, LocalIssuer], store: JwksStore, wall: ManualClock
) -> TokenValidator:
    # Both issuers are trusted: a token must still be verified with its own issuer's keys.
    server = mcp_server(*issuers, algorithms=ALGORITHMS, audiences=[ALIAS], leeway_seconds=LEEWAY)
    return TokenValidator(server, store, clock=wall)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def with_payload(issuer: LocalIssuer, payload: bytes, header: dict[str, Any] | None = None) -> str:
    header = header or {"alg": "RS256", "typ": "at+jwt", "kid": issuer.kid("rsa")}
    return bearer(issuer.mint_raw(json.dumps(header).encode(), payload))


def claims_json(issuer: LocalIssuer, **overrides: Any) -> str:
    """The default claims as JSON text without the closing brace, for raw-JSON cases."""
    return json.dumps(issuer.claims(**overrides))[:-1]


def tamper_signature(token: str) -> str:
    head, _, signature = token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0x01
    return f"{head}.{b64url(bytes(raw))}"


def rsa_public_pem(issuer: LocalIssuer) -> bytes:
    public = issuer.keys[issuer.kid("rsa")].public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def non_canonical_last_char(token: str) -> str:
    # An RSA-2048 signature is 342 base64url characters: the last carries 4 unused bits.
    assert len(token.rpartition(".")[2]) % 4 == 2
    return token[:-1] + ("B" if token[-1] != "B" else "C")


def nested(depth: int) -> bytes:
    return ('{"iss":"x","deep":' + "[" * depth + "]" * depth + "}").encode()


@dataclass(frozen=True)
class Case:
    id: str
    make: Make
    error: str | None = "invalid_token"
    reason: str = ""
    fragment: str = ""


ACCEPTED: list[tuple[str, Make]] = [
    ("rs256", lambda i, o: bearer(i.mint())),
    ("es256", lambda i, o: bearer(i.mint(kid=i.kid("ec")))),
    ("ps256", lambda i, o: bearer(i.mint(alg="PS256"))),
    ("eddsa", lambda i, o: bearer(i.mint(kid=i.kid("ed")))),
    ("second-trusted-issuer", lambda i, o: bearer(o.mint())),
    ("scheme-lowercase", lambda i, o: f"bearer {i.mint()}"),
    ("scheme-uppercase", lambda i, o: f"BEARER {i.mint()}"),
    ("typ-absent", lambda i, o: bearer(i.mint(header={"typ": OMIT}))),
    ("typ-JWT", lambda i, o: bearer(i.mint(header={"typ": "JWT"}))),
    ("typ-application-at-jwt", lambda i, o: bearer(i.mint(header={"typ": "application/AT+JWT"}))),
    ("no-kid-single-key-for-alg", lambda i, o: bearer(i.mint(header={"kid": OMIT}))),
    ("audience-array-with-this-server", lambda i, o: bearer(i.mint(aud=["https://a.example", RESOURCE]))),
    ("extra-audience-of-issuer", lambda i, o: bearer(i.mint(aud=ALIAS))),
    ("exp-inside-leeway", lambda i, o: bearer(i.mint(exp=NOW - LEEWAY + 1))),
    ("exp-fractional", lambda i, o: bearer(i.mint(exp=NOW + 0.5))),
    ("nbf-at-leeway-edge", lambda i, o: bearer(i.mint(nbf=NOW + LEEWAY))),
    ("iat-at-leeway-edge", lambda i, o: bearer(i.mint(iat=NOW + LEEWAY))),
    ("actor-chain", lambda i, o: bearer(i.mint(act={"sub": "agent", "act": {"sub": "orchestrator"}}))),
    ("claims-nest-to-the-limit", lambda i, o: bearer(i.mint(x=_deep_list(31)))),
    ("header-jku-ignored", lambda i, o: bearer(i.mint(header={"jku": "https://evil.example/jwks"}))),
]

REJECTED: list[Case] = [
    # the Authorization header
    Case("missing", lambda i, o: None, None, "missing", "no access token"),
    Case("empty-header", lambda i, o: "", "invalid_request", "scheme", "unsupported authorization scheme"),
    Case("basic-scheme", lambda i, o: "Basic YWxpY2U6cw==", "invalid_request", "scheme", "unsupported"),
    Case("dpop-scheme", lambda i, o: f"DPoP {i.mint()}", "invalid_request", "dpop", "DPoP-bound tokens"),
    Case("bearer-without-token", lambda i, o: "Bearer", "invalid_request", "malformed", "not 'Bearer"),
    Case("bearer-space-only", lambda i, o: "Bearer ", "invalid_request", "malformed", "not 'Bearer"),
    Case("two-spaces", lambda i, o: f"Bearer  {i.mint()}", "invalid_request", "malformed", "not 'Bearer"),
    Case("trailing-space", lambda i, o: f"Bearer {i.mint()} ", "invalid_request", "malformed", ""),
    Case("trailing-comma", lambda i, o: f"Bearer {i.mint()},", "invalid_request", "malformed", ""),
    Case("two-tokens", lambda i, o: f"Bearer {i.mint()}, Bearer x", "invalid_request", "malformed", ""),
    Case("non-ascii-scheme", lambda i, o: f"B\u0435arer {i.mint()}", "invalid_request", "scheme", ""),
    Case("oversize", lambda i, o: bearer("a" * 16_400), reason="too-large", fragment="token larger than"),
    # compact JWS syntax
    Case("two-parts", lambda i, o: bearer(i.mint().rpartition(".")[0]), reason="malformed"),
    Case("four-parts", lambda i, o: bearer(i.mint() + ".e30"), reason="malformed"),
    Case("empty-header-part", lambda i, o: bearer("." + i.mint().partition(".")[2]), reason="malformed"),
    Case("base64-plus", lambda i, o: bearer(i.mint().replace(".", ".+", 1)), reason="malformed"),
    Case("base64-padding", lambda i, o: bearer(i.mint() + "=="), reason="malformed", fragment="base64url"),
    Case("base64-non-canonical", lambda i, o: bearer(non_canonical_last_char(i.mint())), reason="malformed"),
    Case("base64-length", lambda i, o: bearer(i.mint() + "AAA"), reason="malformed"),
    Case("header-not-json", lambda i, o: bearer(compact(b"alg", b"{}", None, "none")), reason="malformed"),
    Case(
        "header-array", lambda i, o: bearer(compact(b"[]", b"{}", None, "none")), fragment="not a JSON object"
    ),
    Case("payload-not-object", lambda i, o: with_payload(i, b'"hello"'), fragment="not a JSON object"),
    Case("payload-not-utf8", lambda i, o: with_payload(i, b'{"sub":"\xff"}'), fragment="not UTF-8"),
    Case(
        "duplicate-payload-member",
        lambda i, o: with_payload(i, (claims_json(i) + ', "sub": "mallory"}').encode()),
        reason="malformed",
        fragment="duplicate member name",
    ),
    Case(
        "duplicate-header-member",
        lambda i, o: bearer(i.mint_raw(b'{"alg":"RS256","kid":"x","alg":"none"}', b"{}")),
        fragment="duplicate member name",
    ),
    Case(
        "nan-in-payload",
        lambda i, o: with_payload(i, (claims_json(i) + ', "x": NaN}').encode()),
        fragment="JSON",
    ),
    Case(
        "lone-surrogate",
        lambda i, o: with_payload(i, (claims_json(i) + ', "x": "\\ud800"}').encode()),
        fragment="JSON",
    ),
    Case("deeply-nested", lambda i, o: with_payload(i, nested(1500)), fragment="nested too deeply"),
    # header parameters
    Case(
        "alg-none",
        lambda i, o: bearer(i.mint(alg="none", key=None)),
        reason="algorithm",
        fragment="algorithm none not allowed",
    ),
    Case(
        "alg-missing",
        lambda i, o: bearer(i.mint(header={"alg": OMIT})),
        reason="algorithm",
        fragment="no algorithm",
    ),
    Case(
        "hs256-signed-with-rsa-public-key",
        lambda i, o: bearer(i.mint(alg="HS256", key=rsa_public_pem(i))),
        reason="algorithm",
        fragment="algorithm HS256 not allowed",
    ),
    Case(
        "alg-not-in-allowlist",
        lambda i, o: bearer(i.mint(alg="RS384")),
        reason="algorithm",
        fragment="RS384 not allowed",
    ),
    Case(
        "alg-junk-not-echoed",
        lambda i, o: bearer(i.mint(header={"alg": "<script>"})),
        reason="algorithm",
        fragment="algorithm in the token header not allowed",
    ),
    Case(
        "alg-does-not-fit-key",
        lambda i, o: bearer(i.mint(kid=i.kid("rsa"), alg="ES256", key=i.keys[i.kid("ec")])),
        reason="algorithm",
        fragment="cannot be used with ES256",
    ),
    Case(
        "crit-header", lambda i, o: bearer(i.mint(header={"crit": ["exp"]})), reason="header", fragment="crit"
    ),
    Case(
        "typ-dpop-proof",
        lambda i, o: bearer(i.mint(header={"typ": "dpop+jwt"})),
        reason="header",
        fragment="typ",
    ),
    Case("typ-not-string", lambda i, o: bearer(i.mint(header={"typ": 1})), reason="header"),
    Case(
        "kid-not-string", lambda i, o: bearer(i.mint(header={"kid": 7})), reason="malformed", fragment="kid"
    ),
    # keys and signatures
    Case(
        "bad-signature",
        lambda i, o: bearer(tamper_signature(i.mint())),
        reason="signature",
        fragment="signature invalid",
    ),
    Case(
        "bad-es256-signature",
        lambda i, o: bearer(tamper_signature(i.mint(kid=i.kid("ec")))),
        reason="signature",
    ),
    Case("empty-signature", lambda i, o: bearer(i.mint().rpartition(".")[0] + "."), reason="signature"),
    Case(
        "signed-by-other-key-same-kid",
        lambda i, o: bearer(i.mint(key=o.keys[o.kid("rsa")])),
        reason="signature",
        fragment="signature invalid",
    ),
    Case(
        "embedded-jwk-ignored",
        lambda i, o: bearer(
            i.mint(key=o.keys[o.kid("ec")], alg="ES256", kid=i.kid("ec"), header={"jwk": o.jwks()["keys"][1]})
        ),
        reason="signature",
    ),
    Case(
        "unknown-kid",
        lambda i, o: bearer(i.mint(header={"kid": "nope"})),
        reason="unknown-key",
        fragment="unknown key id",
    ),
    Case(
        "kid-of-another-trusted-issuer",
        lambda i, o: bearer(i.mint(kid=o.kid("rsa"), key=o.keys[o.kid("rsa")])),
        reason="unknown-key",
    ),
    # claims
    Case(
        "expired", lambda i, o: bearer(i.mint(exp=NOW - LEEWAY)), reason="expired", fragment="token expired"
    ),
    Case("expired-long-ago", lambda i, o: bearer(i.mint(exp=1)), reason="expired"),
    Case(
        "not-yet-valid",
        lambda i, o: bearer(i.mint(nbf=NOW + LEEWAY + 1)),
        reason="not-yet-valid",
        fragment="nbf",
    ),
    Case(
        "issued-in-future",
        lambda i, o: bearer(i.mint(iat=NOW + LEEWAY + 1)),
        reason="not-yet-valid",
        fragment="iat",
    ),
    Case("exp-missing", lambda i, o: bearer(i.mint(exp=OMIT)), reason="claims", fragment="no expiry"),
    Case("exp-string", lambda i, o: bearer(i.mint(exp=str(int(NOW) + 60))), reason="claims", fragment="exp"),
    Case("exp-bool", lambda i, o: bearer(i.mint(exp=True)), reason="claims"),
    Case("exp-null", lambda i, o: bearer(i.mint(exp=None)), reason="claims"),
    Case(
        "exp-infinite",
        lambda i, o: with_payload(i, (claims_json(i, exp=OMIT) + ', "exp": 1e999}').encode()),
        reason="claims",
    ),
    Case("nbf-string", lambda i, o: bearer(i.mint(nbf="0")), reason="claims"),
    Case(
        "wrong-issuer",
        lambda i, o: bearer(i.mint(iss="https://evil.example")),
        reason="issuer",
        fragment="issuer not trusted",
    ),
    Case("issuer-trailing-slash", lambda i, o: bearer(i.mint(iss=i.issuer + "/")), reason="issuer"),
    Case("issuer-missing", lambda i, o: bearer(i.mint(iss=OMIT)), reason="issuer"),
    Case("issuer-not-string", lambda i, o: bearer(i.mint(iss=[i.issuer])), reason="issuer"),
    Case(
        "wrong-audience",
        lambda i, o: bearer(i.mint(aud="https://other.example/mcp")),
        reason="audience",
        fragment=f"audience does not include {RESOURCE}",
    ),
    Case(
        "audience-array-without-this-server",
        lambda i, o: bearer(i.mint(aud=["https://a.example", "https://b.example"])),
        reason="audience",
    ),
    Case(
        "audience-missing", lambda i, o: bearer(i.mint(aud=OMIT)), reason="audience", fragment="no audience"
    ),
    Case("audience-empty-array", lambda i, o: bearer(i.mint(aud=[])), reason="audience"),
    Case("audience-not-strings", lambda i, o: bearer(i.mint(aud=[RESOURCE, 1])), reason="claims"),
    Case(
        "audience-prefix-of-resource", lambda i, o: bearer(i.mint(aud=RESOURCE + "/admin")), reason="audience"
    ),
    Case("audience-other-case", lambda i, o: bearer(i.mint(aud=RESOURCE.upper())), reason="audience"),
    Case("sub-not-string", lambda i, o: bearer(i.mint(sub=42)), reason="claims", fragment="sub"),
    Case("client-id-not-string", lambda i, o: bearer(i.mint(client_id=["a"])), reason="claims"),
    Case("act-not-object", lambda i, o: bearer(i.mint(act="agent")), reason="claims", fragment="act"),
    Case(
        "act-nested-not-object", lambda i, o: bearer(i.mint(act={"sub": "a", "act": ["b"]})), reason="claims"
    ),
    Case("act-sub-not-string", lambda i, o: bearer(i.mint(act={"sub": 1})), reason="claims"),
    Case(
        "claims-nest-too-deep",
        lambda i, o: bearer(i.mint(x=_deep_list(32))),
        reason="claims",
        fragment="deeper",
    ),
    Case("act-too-deep", lambda i, o: bearer(i.mint(act=_deep_act(20))), reason="claims", fragment="deeper"),
]


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _deep_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": "first"}
    for level in range(depth):
        act = {"sub": f"actor-{level}", "act": act}
    return act


@pytest.mark.parametrize(("make",), [(make,) for _, make in ACCEPTED], ids=[name for name, _ in ACCEPTED])
def test_accepted(validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer], make: Make) -> None:
    authorization = make(*issuers)
    claims = validator.validate(authorization)
    assert claims["sub"] == "alice"
    assert claims["iss"] in {issuer.issuer for issuer in issuers}


@pytest.mark.parametrize("case", REJECTED, ids=[case.id for case in REJECTED])
def test_rejected(validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer], case: Case) -> None:
    authorization = case.make(*issuers)
    with pytest.raises(TokenRejected) as caught:
        validator.validate(authorization)
    rejected = caught.value
    assert rejected.error == case.error
    assert rejected.reason == (case.reason or rejected.reason)
    assert case.fragment in rejected.description
    # Descriptions never carry token text or claim values (beyond this server's own resource).
    for piece in (authorization or "").replace(",", ".").replace(" ", ".").split("."):
        if len(piece) >= 8:
            assert piece not in rejected.description
    for value in ("alice", "mallory", "agent-1", "<script>", "https://evil.example", "nope"):
        assert value not in rejected.description


def test_rejection_names_the_trusted_issuer_for_metrics(
    validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer]
) -> None:
    trusted, _ = issuers
    with pytest.raises(TokenRejected) as caught:
        validator.validate(bearer(trusted.mint(aud="https://other.example")))
    assert caught.value.issuer == trusted.issuer


def test_untrusted_issuer_is_not_named(
    validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer]
) -> None:
    with pytest.raises(TokenRejected) as caught:
        validator.validate(bearer(issuers[0].mint(iss="https://evil.example")))
    assert caught.value.issuer == ""


# --- the validated-token cache ----------------------------------------------------------------


@pytest.fixture
def outcomes() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def cached_validator(
    issuers: tuple[LocalIssuer, LocalIssuer],
    store: JwksStore,
    clock: ManualClock,
    outcomes: list[tuple[str, str]],
) -> TokenValidator:
    server = mcp_server(issuers[0], algorithms=ALGORITHMS, leeway_seconds=LEEWAY)
    return TokenValidator(
        server,
        store,
        clock=clock,
        cache_size=2,
        observe=lambda issuer, outcome: outcomes.append((issuer, outcome)),
    )


def test_cache_hit_does_not_verify_again(
    cached_validator: TokenValidator,
    issuers: tuple[LocalIssuer, LocalIssuer],
    outcomes: list[tuple[str, str]],
) -> None:
    authorization = bearer(issuers[0].mint())
    first = cached_validator.validate(authorization)
    second = cached_validator.validate(authorization)
    third = cached_validator.validate(authorization)
    assert first == second == third
    assert [outcome for _, outcome in outcomes] == ["verified", "cache-hit", "cache-hit"]
    assert {issuer for issuer, _ in outcomes} == {issuers[0].issuer}


def test_cache_is_keyed_by_exact_token(
    cached_validator: TokenValidator,
    issuers: tuple[LocalIssuer, LocalIssuer],
    outcomes: list[tuple[str, str]],
) -> None:
    token = issuers[0].mint()
    cached_validator.validate(bearer(token))
    with pytest.raises(TokenRejected):
        cached_validator.validate(bearer(tamper_signature(token)))
    assert [outcome for _, outcome in outcomes] == ["verified", "signature"]


def test_expired_cached_token_is_rejected(
    cached_validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer], clock: ManualClock
) -> None:
    authorization = bearer(issuers[0].mint(exp=NOW + 60))
    cached_validator.validate(authorization)
    clock.advance(60 + LEEWAY - 1)
    cached_validator.validate(authorization)
    clock.advance(1)
    with pytest.raises(TokenRejected, match="token expired"):
        cached_validator.validate(authorization)


def test_cached_token_before_nbf_is_rejected_when_clock_steps_back(
    cached_validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer], clock: ManualClock
) -> None:
    authorization = bearer(issuers[0].mint(nbf=NOW))
    cached_validator.validate(authorization)
    clock.advance(-LEEWAY - 1)
    with pytest.raises(TokenRejected, match="not yet valid"):
        cached_validator.validate(authorization)


def test_returned_claims_cannot_change_later_results(
    cached_validator: TokenValidator, issuers: tuple[LocalIssuer, LocalIssuer]
) -> None:
    authorization = bearer(issuers[0].mint(aud=[RESOURCE], act={"sub": "agent", "act": {"sub": "root"}}))
    claims = cached_validator.validate(authorization)
    claims["sub"] = "mallory"
    claims["aud"].append("https://evil.example")
    claims["act"]["act"]["sub"] = "mallory"
    again = cached_validator.validate(authorization)
    assert again["sub"] == "alice"
    assert again["aud"] == [RESOURCE]
    assert again["act"] == {"sub": "agent", "act": {"sub": "root"}}


def test_cache_evicts_the_oldest_unreferenced_entry(
    cached_validator: TokenValidator,
    issuers: tuple[LocalIssuer, LocalIssuer],
    outcomes: list[tuple[str, str]],
) -> None:
    first, second, third = (bearer(issuers[0].mint()) for _ in range(3))
    cached_validator.validate(first)
    cached_validator.validate(second)
    cached_validator.validate(first)  # a hit: first gets a second chance
    cached_validator.validate(third)  # evicts second, the oldest not hit since
    outcomes.clear()
    cached_validator.validate(first)
    cached_validator.validate(third)
    cached_validator.validate(second)
    assert [outcome for _, outcome in outcomes] == ["cache-hit", "cache-hit", "verified"]


def test_concurrent_validation_from_many_threads(
    issuers: tuple[LocalIssuer, LocalIssuer], store: JwksStore, clock: ManualClock
) -> None:
    validator = TokenValidator(
        mcp_server(issuers[0], algorithms=ALGORITHMS), store, clock=clock, cache_size=8
    )
    tokens = [bearer(issuers[0].mint(kid=issuers[0].kid(kind), sub="alice")) for kind in ("rsa", "ec") * 8]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        try:
            for _ in range(20):
                for token in tokens:
                    assert validator.validate(token)["sub"] == "alice"
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_headers_are_rejected_cleanly(validator: TokenValidator, authorization: str) -> None:
    with pytest.raises(TokenRejected) as caught:
        validator.validate(authorization)
    assert caught.value.error in {"invalid_token", "invalid_request"}
    if len(authorization) >= 8:
        assert authorization not in caught.value.description


@pytest.fixture(scope="module")
def valid_token(issuers: tuple[LocalIssuer, LocalIssuer]) -> str:
    return issuers[0].mint()


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgwBZaz09-_.+/= "))
def test_any_single_character_change_is_rejected(
    validator: TokenValidator, valid_token: str, position: int, replacement: str
) -> None:
    token = valid_token
    validator.validate(bearer(token))
    index = position % len(token)
    changed = token[:index] + replacement + token[index + 1 :]
    if changed == token:
        return
    with pytest.raises(TokenRejected):
        validator.validate(bearer(changed))
