"""DPoP proofs (RFC 9449 §4.3): the RFC's vectors, each check broken alone, hostile proofs,
thumbprints, `htu` normalisation, the replay cache and stateless nonces."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from callwarden.extauthz.dpop import (
    MAX_PROOF_CHARS,
    DpopRuntime,
    DpopVerifier,
    NonceIssuer,
    NonceKeys,
    Proof,
    ProofRejected,
    ReplayCache,
    UriRejected,
    access_token_hash,
    jwk_thumbprint,
    normalise_uri,
    request_uri,
)
from callwarden.policy.model import Dpop
from tests.support.dpop import ProofKey, b64url
from tests.support.issuer import OMIT, ManualClock, public_jwk

VECTORS = json.loads((Path(__file__).parent / "vectors" / "dpop" / "rfc9449-examples.json").read_text())
CASES = {case["name"]: case for case in VECTORS["cases"]}
URI = "https://finance.board.example/mcp"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
NOW = 1_900_000_000.0
SERVER = "board-packet/finance"


def verifier(
    clock: ManualClock | None = None,
    runtime: DpopRuntime | None = None,
    server: str = SERVER,
    **config: Any,
) -> DpopVerifier:
    settings = Dpop.model_validate({"mode": "required", **config})
    return DpopVerifier(
        server, settings, runtime or DpopRuntime.single_process(), clock=clock or ManualClock(NOW)
    )


def rejection(check: Callable[[], Proof]) -> ProofRejected:
    with pytest.raises(ProofRejected) as raised:
        check()
    return raised.value


# --- the RFC's vectors --------------------------------------------------------------------


def test_the_rfc_thumbprint_and_ath_are_reproduced() -> None:
    assert jwk_thumbprint(VECTORS["public_jwk"]) == VECTORS["jwk_sha256_thumbprint_rfc7638"]
    case = CASES["rfc9449-resource-request-proof"]
    assert access_token_hash(case["access_token"]) == case["expected_ath"]


def _verify_vector(case: dict[str, Any]) -> Proof:
    check = verifier(ManualClock(case["verify_at_unix_time"]))
    return check.verify(
        case["dpop_header"],
        method=case["request"]["method"],
        uri=case["request"]["uri"],
        token=case["access_token"],
        jkt=case.get("access_token_cnf", {}).get("jkt", VECTORS["jwk_sha256_thumbprint_rfc7638"]),
    )


@pytest.mark.parametrize(
    "name", [name for name, case in CASES.items() if case["valid"] and "access_token" in case]
)
def test_a_valid_rfc_resource_proof_is_accepted(name: str) -> None:
    proof = _verify_vector(CASES[name])
    assert proof.jkt == VECTORS["jwk_sha256_thumbprint_rfc7638"]
    assert proof.jwk == VECTORS["public_jwk"]


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [
        ("rfc9449-resource-proof-wrong-method", "invalid_dpop_proof", "dpop-htm"),
        ("rfc9449-resource-proof-wrong-uri", "invalid_dpop_proof", "dpop-htu"),
        ("rfc9449-resource-proof-wrong-token", "invalid_dpop_proof", "dpop-ath"),
        ("rfc9449-resource-proof-wrong-binding", "invalid_token", "dpop-binding"),
        ("rfc9449-resource-proof-missing-ath-context", "invalid_dpop_proof", "dpop-claims"),
        ("rfc9449-resource-proof-stale", "invalid_dpop_proof", "dpop-stale"),
    ],
)
def test_an_invalid_rfc_proof_is_refused_for_its_defect(name: str, error: str, reason: str) -> None:
    refused = rejection(lambda: _verify_vector(CASES[name]))
    assert (refused.error, refused.reason) == (error, reason)


def test_the_rfc_token_request_proof_is_signed_correctly_but_lacks_ath_for_a_resource() -> None:
    case = CASES["rfc9449-token-request-proof"]
    refused = rejection(
        lambda: verifier(ManualClock(case["verify_at_unix_time"])).verify(
            case["dpop_header"], method="POST", uri=case["request"]["uri"], token="t", jkt=None
        )
    )
    assert refused.description == "DPoP proof has no ath claim"


def test_a_binding_mismatch_is_described_as_the_rfc_does() -> None:
    refused = rejection(lambda: _verify_vector(CASES["rfc9449-resource-proof-wrong-binding"]))
    assert refused.description == "Invalid DPoP key binding"


# --- one defect at a time -----------------------------------------------------------------

KEY = ProofKey("ec")


def _proof(**overrides: Any) -> str:
    return KEY.proof("POST", URI, TOKEN, iat=NOW, **overrides)


def _check(
    proof: str | None, *, jkt: str | None = KEY.jkt, method: str = "POST", uri: str = URI, **config: Any
) -> Proof:
    return verifier(**config).verify(proof, method=method, uri=uri, token=TOKEN, jkt=jkt)


def test_a_fresh_proof_by_the_bound_key_is_accepted_and_carries_its_confirmation() -> None:
    proof = _check(_proof())
    assert proof.jkt == KEY.jkt
    assert proof.confirmation() == {"jkt": KEY.jkt, "jwk": KEY.jwk, "alg": "ES256"}


ONE_DEFECT: list[tuple[str, Callable[[], Proof], str]] = [
    ("wrong-htm", lambda: _check(_proof(claims={"htm": "GET"})), "dpop-htm"),
    ("lowercase-htm", lambda: _check(_proof(claims={"htm": "post"})), "dpop-htm"),
    ("htu-with-query", lambda: _check(_proof(claims={"htu": URI + "?a=1"})), "dpop-htu"),
    ("htu-with-fragment", lambda: _check(_proof(claims={"htu": URI + "#x"})), "dpop-htu"),
    ("htu-other-host", lambda: _check(_proof(claims={"htu": "https://evil.example/mcp"})), "dpop-htu"),
    ("htu-other-path", lambda: _check(_proof(claims={"htu": URI + "/other"})), "dpop-htu"),
    (
        "htu-other-scheme",
        lambda: _check(_proof(claims={"htu": "http://finance.board.example/mcp"})),
        "dpop-htu",
    ),
    (
        "htu-other-port",
        lambda: _check(_proof(claims={"htu": "https://finance.board.example:8443/mcp"})),
        "dpop-htu",
    ),
    ("htu-not-a-uri", lambda: _check(_proof(claims={"htu": "finance.board.example/mcp"})), "dpop-htu"),
    ("stale-iat", lambda: _check(_proof(claims={"iat": NOW - 301})), "dpop-stale"),
    ("future-iat-beyond-skew", lambda: _check(_proof(claims={"iat": NOW + 61})), "dpop-future"),
    ("missing-ath", lambda: _check(_proof(claims={"ath": OMIT})), "dpop-claims"),
    ("wrong-ath", lambda: _check(_proof(claims={"ath": access_token_hash("other")})), "dpop-ath"),
    (
        "other-key-than-cnf-jkt",
        lambda: _check(ProofKey("ec").proof("POST", URI, TOKEN, iat=NOW)),
        "dpop-binding",
    ),
    ("token-not-bound", lambda: _check(_proof(), jkt=None), "dpop-unbound"),
    (
        "private-key-in-jwk",
        lambda: _check(_proof(header={"jwk": public_jwk(None, KEY.private, d="AAAA")})),
        "dpop-private-key",
    ),
    ("alg-none", lambda: _check(_proof(header={"alg": "none"}, sign_with=None)), "dpop-algorithm"),
    ("hs256", lambda: _check(_proof(header={"alg": "HS256"}, sign_with=b"k" * 32)), "dpop-algorithm"),
    ("alg-not-in-allowlist", lambda: _check(_proof(), algorithms=["RS256"]), "dpop-algorithm"),
    ("alg-unlike-the-key", lambda: _check(_proof(header={"alg": "RS256"})), "dpop-algorithm"),
    ("two-dpop-headers", lambda: _check(f"{_proof()},{_proof()}"), "dpop-duplicate-header"),
    ("no-dpop-header", lambda: _check(None), "dpop-missing"),
    ("empty-dpop-header", lambda: _check("  "), "dpop-missing"),
    ("wrong-typ", lambda: _check(_proof(header={"typ": "jwt"})), "dpop-type"),
    ("no-typ", lambda: _check(_proof(header={"typ": OMIT})), "dpop-type"),
    ("at-jwt-typ", lambda: _check(_proof(header={"typ": "at+jwt"})), "dpop-type"),
    ("no-jwk", lambda: _check(_proof(header={"jwk": OMIT})), "dpop-key"),
    ("crit", lambda: _check(_proof(header={"crit": ["exp"]})), "dpop-header"),
    ("tampered-signature", lambda: _check(_proof()[:-4] + "AAAA"), "dpop-signature"),
    ("signed-by-another-key", lambda: _check(_proof(sign_with=ProofKey("ec").private)), "dpop-signature"),
    ("missing-jti", lambda: _check(_proof(claims={"jti": OMIT})), "dpop-claims"),
    ("missing-htm", lambda: _check(_proof(claims={"htm": OMIT})), "dpop-claims"),
    ("missing-htu", lambda: _check(_proof(claims={"htu": OMIT})), "dpop-claims"),
    ("missing-iat", lambda: _check(_proof(claims={"iat": OMIT})), "dpop-claims"),
]


@pytest.mark.parametrize(("defect", "check", "reason"), ONE_DEFECT, ids=[d for d, _, _ in ONE_DEFECT])
def test_a_proof_with_one_defect_is_refused_for_that_defect(
    defect: str, check: Callable[[], Proof], reason: str
) -> None:
    refused = rejection(check)
    assert refused.reason == reason
    expected = "invalid_token" if reason in ("dpop-binding", "dpop-unbound") else "invalid_dpop_proof"
    assert refused.error == expected


def test_iat_is_accepted_up_to_max_age_in_the_past_and_the_skew_in_the_future() -> None:
    assert _check(_proof(claims={"iat": NOW - 300}))
    assert _check(_proof(claims={"iat": NOW + 60}))
    assert _check(_proof(claims={"iat": NOW - 30}), maxAge=30)
    assert rejection(lambda: _check(_proof(claims={"iat": NOW - 31}), maxAge=30)).reason == "dpop-stale"


def test_a_replayed_jti_is_refused_within_the_window_and_forgotten_after_it() -> None:
    clock = ManualClock(NOW)
    runtime = DpopRuntime.single_process()
    check = verifier(clock, runtime)
    proof = KEY.proof("POST", URI, TOKEN, iat=NOW, claims={"jti": "one-jti"})
    check.verify(proof, method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt)
    refused = rejection(lambda: check.verify(proof, method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt))
    assert refused.reason == "dpop-replay"
    # A verifier rebuilt for a new bundle shares the cache: a swap does not reopen the window.
    rebuilt = verifier(clock, runtime)
    assert rejection(lambda: rebuilt.verify(proof, method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt))


def test_the_replay_cache_forgets_an_entry_once_its_proof_would_be_stale_anyway() -> None:
    clock = ManualClock(0)
    cache = ReplayCache(clock=clock)
    assert cache.first_use(SERVER, "a", 10)
    assert not cache.first_use(SERVER, "a", 10)
    assert cache.first_use("other/server", "a", 10)
    clock.advance(10.5)
    assert cache.first_use(SERVER, "a", 10)


def test_a_full_replay_cache_evicts_its_oldest_entry() -> None:
    cache = ReplayCache(max_entries=2, clock=ManualClock(0))
    for jti in ("a", "b", "c"):
        assert cache.first_use(SERVER, jti, 60)
    assert len(cache) == 2
    assert cache.first_use(SERVER, "a", 60)  # "a" was evicted
    assert not cache.first_use(SERVER, "c", 60)


# --- hostile proofs -----------------------------------------------------------------------


def _raw(header: bytes, payload: bytes) -> str:
    return f"{b64url(header)}.{b64url(payload)}.{b64url(b'x' * 64)}"


def _jose(**members: Any) -> bytes:
    return json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.jwk, **members}).encode()


HOSTILE: list[tuple[str, str, str]] = [
    ("oversized", "a" * (MAX_PROOF_CHARS + 1), "dpop-too-large"),
    ("truncated", _proof().rsplit(".", 1)[0], "dpop-malformed"),
    ("four-segments", _proof() + ".AAAA", "dpop-malformed"),
    ("padded-base64", _proof().replace(".", "=.", 1), "dpop-malformed"),
    ("standard-base64-alphabet", "a+b." + _proof().split(".", 1)[1], "dpop-malformed"),
    ("unicode-in-proof", _proof().replace("e", "\u0435", 1), "dpop-malformed"),
    ("not-json", _raw(b"not json", b"{}"), "dpop-malformed"),
    ("header-array", _raw(b"[]", b"{}"), "dpop-malformed"),
    ("duplicate-typ", _raw(b'{"typ":"jwt","typ":"dpop+jwt","alg":"ES256"}', b"{}"), "dpop-malformed"),
    ("case-folded-duplicate", _raw(b'{"typ":"dpop+jwt","TYP":"x","alg":"ES256"}', b"{}"), "dpop-malformed"),
    ("duplicate-claim", _raw(_jose(), b'{"htm":"GET","htm":"POST"}'), "dpop-malformed"),
    ("deep-nesting", _raw(_jose(), b'{"a":' * 100 + b"1" + b"}" * 100), "dpop-malformed"),
    ("jwk-not-object", _raw(_jose(jwk="key"), b"{}"), "dpop-key"),
    ("jwk-symmetric-key", _raw(_jose(jwk={"kty": "oct", "k": "AAAA"}), b"{}"), "dpop-private-key"),
    ("jwk-unknown-kty", _raw(_jose(jwk={"kty": "XYZ", "x": "AAAA"}), b"{}"), "dpop-key"),
    ("jwk-off-curve", _raw(_jose(jwk={**KEY.jwk, "y": KEY.jwk["x"]}), b"{}"), "dpop-key"),
    ("alg-number", _raw(_jose(alg=256), b"{}"), "dpop-algorithm"),
    ("alg-attacker-text", _raw(_jose(alg="ES256\r\nX-Evil: 1"), b"{}"), "dpop-algorithm"),
]


@pytest.mark.parametrize(("case", "proof", "reason"), HOSTILE, ids=[c for c, _, _ in HOSTILE])
def test_a_hostile_proof_is_refused_with_a_specific_reason(case: str, proof: str, reason: str) -> None:
    refused = rejection(lambda: _check(proof))
    assert refused.reason == reason
    assert "\r" not in refused.description and "X-Evil" not in refused.description


def test_a_small_rsa_proof_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    proof = KEY.proof(
        "POST", URI, TOKEN, iat=NOW, header={"alg": "RS256", "jwk": public_jwk(None, small)}, sign_with=small
    )
    assert rejection(lambda: _check(proof)).reason == "dpop-key"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iat": "1900000000"}, "dpop-claims"),
        ({"iat": True}, "dpop-claims"),
        ({"jti": 7}, "dpop-claims"),
        ({"jti": ""}, "dpop-claims"),
        ({"jti": "j" * 257}, "dpop-claims"),
        ({"htm": ["POST"]}, "dpop-claims"),
        ({"htu": None}, "dpop-claims"),
        ({"ath": {"x": 1}}, "dpop-claims"),
        ({"htu": "https://finance.board.example/m\u0441p"}, "dpop-htu"),
        ({"htu": "https://finance.board.example/mcp\n"}, "dpop-htu"),
        ({"htu": "https://user@finance.board.example/mcp"}, "dpop-htu"),
    ],
    ids=[
        "iat-string",
        "iat-bool",
        "jti-number",
        "jti-empty",
        "jti-too-long",
        "htm-array",
        "htu-null",
        "ath-object",
        "htu-unicode-lookalike",
        "htu-newline",
        "htu-userinfo",
    ],
)
def test_a_claim_of_the_wrong_type_or_shape_is_refused(claims: dict[str, Any], reason: str) -> None:
    assert rejection(lambda: _check(_proof(claims=claims))).reason == reason


def test_other_key_types_prove_possession_too() -> None:
    for kind in ("rsa", "ed"):
        key = ProofKey(kind)
        proof = key.proof("POST", URI, TOKEN, iat=NOW)
        assert _check(proof, jkt=key.jkt).jkt == key.jkt


# --- htu normalisation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        ("HTTPS://Finance.Board.EXAMPLE/mcp", "https://finance.board.example/mcp"),
        ("https://finance.board.example:443/mcp", "https://finance.board.example/mcp"),
        ("http://finance.board.example:80/mcp", "http://finance.board.example/mcp"),
        ("https://finance.board.example:80/mcp", "https://finance.board.example:80/mcp"),
        ("https://finance.board.example:/mcp", "https://finance.board.example/mcp"),
        ("https://finance.board.example", "https://finance.board.example/"),
        ("https://finance.board.example/%6D%63%70", "https://finance.board.example/mcp"),
        ("https://finance.board.example/a%2fb", "https://finance.board.example/a%2Fb"),
        ("https://finance.board.example/a/./b/../mcp", "https://finance.board.example/a/mcp"),
        ("https://finance.board.example/mcp?x=1#frag", "https://finance.board.example/mcp"),
        ("https://[::1]:8443/mcp", "https://[::1]:8443/mcp"),
    ],
)
def test_uris_are_normalised_by_rfc_3986_syntax_and_scheme_rules(uri: str, normal: str) -> None:
    assert normalise_uri(uri) == normal


def test_merging_slashes_matches_what_envoy_forwards() -> None:
    assert normalise_uri("https://h//mcp///x", merge_slashes=True) == "https://h/mcp/x"


@pytest.mark.parametrize(
    "uri", ["ftp://h/x", "//h/x", "/mcp", "https://h /x", "https://h\u00e9/x", "https://a@h/x", "x" * 5000]
)
def test_a_uri_that_cannot_be_compared_is_refused(uri: str) -> None:
    with pytest.raises(UriRejected):
        normalise_uri(uri)


def test_the_request_uri_takes_the_scheme_envoy_forwarded_and_the_authority_the_client_sent() -> None:
    headers = {"x-forwarded-proto": "https", ":scheme": "http"}
    assert (
        request_uri(headers, "finance.board.example", "/mcp?x=1") == "https://finance.board.example/mcp?x=1"
    )
    assert request_uri({":scheme": "http"}, "h:8080", "/mcp") == "http://h:8080/mcp"


# --- nonces -------------------------------------------------------------------------------


def test_a_proof_without_nonce_gets_use_dpop_nonce_with_a_fresh_nonce() -> None:
    refused = rejection(lambda: _check(_proof(), nonce={"enabled": True}))
    assert (refused.error, refused.reason) == ("use_dpop_nonce", "dpop-nonce")
    assert refused.description == "Resource server requires nonce in DPoP proof"
    assert refused.nonce


def test_the_nonce_round_trip_is_accepted_by_any_replica_holding_the_same_key() -> None:
    keys = NonceKeys([b"k" * 32])
    clock = ManualClock(NOW)
    first = verifier(clock, DpopRuntime(keys, ReplayCache()), nonce={"enabled": True})
    nonce = rejection(lambda: first.verify(_proof(), method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt)).nonce
    other_replica = verifier(clock, DpopRuntime(keys, ReplayCache()), nonce={"enabled": True})
    assert other_replica.verify(_proof(nonce=nonce), method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt)


@pytest.mark.parametrize(
    ("make_verifier", "advance"),
    [
        (
            lambda c: verifier(
                c,
                DpopRuntime(NonceKeys([b"k" * 32]), ReplayCache()),
                server="x/other",
                nonce={"enabled": True},
            ),
            0,
        ),
        (
            lambda c: verifier(
                c, DpopRuntime(NonceKeys([b"z" * 32]), ReplayCache()), nonce={"enabled": True}
            ),
            0,
        ),
        (
            lambda c: verifier(
                c, DpopRuntime(NonceKeys([b"k" * 32]), ReplayCache()), nonce={"enabled": True}
            ),
            601,
        ),
    ],
    ids=["from-another-server", "from-another-secret", "expired"],
)
def test_a_nonce_that_this_server_did_not_issue_recently_gets_a_new_one(
    make_verifier: Callable[[ManualClock], DpopVerifier], advance: float
) -> None:
    clock = ManualClock(NOW)
    issuer = NonceIssuer(NonceKeys([b"k" * 32]), SERVER, 300, clock=clock)
    nonce = issuer.issue()
    clock.advance(advance)
    check = make_verifier(clock)
    refused = rejection(
        lambda: check.verify(
            _proof(nonce=nonce, claims={"iat": clock()}), method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt
        )
    )
    assert (refused.error, refused.description) == (
        "use_dpop_nonce",
        "DPoP proof nonce is invalid or expired",
    )
    assert refused.nonce


@pytest.mark.parametrize("nonce", ["", "x" * 32, "A" * 31, "\u00e9" * 32, "A" * 10_000])
def test_a_malformed_nonce_is_not_valid(nonce: str) -> None:
    assert not NonceIssuer(NonceKeys([b"k" * 32]), SERVER, 300).valid(nonce)


def test_a_nonce_stays_valid_for_one_to_two_lifetimes() -> None:
    clock = ManualClock(NOW - NOW % 300)  # the start of a window
    issuer = NonceIssuer(NonceKeys([b"k" * 32]), SERVER, 300, clock=clock)
    nonce = issuer.issue()
    clock.advance(599)
    assert issuer.valid(nonce)
    clock.advance(1)
    assert not issuer.valid(nonce)


def test_rotated_keys_sign_with_the_first_and_accept_the_others(tmp_path: Path) -> None:
    old = NonceIssuer(NonceKeys([b"o" * 32]), SERVER, 300)
    secret = tmp_path / "nonce-key"
    secret.write_bytes(b"n" * 32 + b"\n" + b"o" * 32 + b"\n")
    rotated = NonceIssuer(NonceKeys.from_file(secret), SERVER, 300)
    assert rotated.valid(old.issue())
    assert not old.valid(rotated.issue())


def test_a_short_nonce_key_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "nonce-key"
    secret.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        NonceKeys.from_file(secret)


@pytest.mark.parametrize(
    ("forwarded", "authority", "accepted"),
    [
        ("https", "finance.board.example", True),
        ("HTTPS", "FINANCE.board.example:443", True),
        ("https, http", "finance.board.example", True),  # the first hop's scheme
        ("http", "finance.board.example", False),
        ("gopher", "finance.board.example", False),
        ("", "finance.board.example", False),  # falls back to :scheme (http here)
        ("https", "finance.board.example:8443", False),
        ("https", "user@finance.board.example", False),
        ("https", "finance.board.example\u2024", False),
        ("https", "finance.board.example\r\nx: y", False),
        ("https", "", False),
    ],
)
def test_the_request_uri_from_hostile_forwarding_headers_never_matches_by_accident(
    forwarded: str, authority: str, accepted: bool
) -> None:
    uri = request_uri({"x-forwarded-proto": forwarded, ":scheme": "http"}, authority, "/mcp")
    check = verifier()
    if accepted:
        assert check.verify(_proof(), method="POST", uri=uri, token=TOKEN, jkt=KEY.jkt)
    else:
        refused = rejection(lambda: check.verify(_proof(), method="POST", uri=uri, token=TOKEN, jkt=KEY.jkt))
        assert refused.reason == "dpop-htu"


def test_a_nonce_from_the_previous_window_is_accepted_and_answered_with_the_current_one() -> None:
    keys = NonceKeys([b"k" * 32])
    clock = ManualClock(NOW)
    check = verifier(clock, DpopRuntime(keys, ReplayCache()), nonce={"enabled": True})
    current = NonceIssuer(keys, SERVER, 300, clock=clock).issue()
    previous = NonceIssuer(keys, SERVER, 300, clock=lambda: NOW - 300).issue()
    proof = check.verify(_proof(nonce=previous), method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt)
    assert proof.next_nonce == current
    assert (
        check.verify(_proof(nonce=current), method="POST", uri=URI, token=TOKEN, jkt=KEY.jkt).next_nonce
        is None
    )
