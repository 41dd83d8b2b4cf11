"""The JWKS store: fetching, rotation, rate limits, single flight, outages, hostile documents.

A real issuer on loopback serves the keys; the store's monotonic clock is a ManualClock, so
refresh and staleness windows are crossed without sleeping.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from callwarden.extauthz import metrics
from callwarden.extauthz.token import (
    MAX_JWKS_KEYS,
    JwksInvalid,
    JwksStore,
    JwksUnavailable,
    TokenRejected,
    TokenValidator,
    parse_jwks,
)
from tests.support.issuer import OMIT, LocalIssuer, ManualClock, b64url, mcp_server, public_jwk

TIMEOUT = 1.0
REFRESH = 300.0
MIN_REFETCH = 10.0
STALE_FOR = 3600.0


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer()
    yield local
    local.stop()


@pytest.fixture
def monotonic() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def store(monotonic: ManualClock) -> Iterator[JwksStore]:
    jwks = JwksStore(
        timeout=TIMEOUT,
        refresh_interval=REFRESH,
        min_refetch_interval=MIN_REFETCH,
        stale_for=STALE_FOR,
        clock=monotonic,
    )
    yield jwks
    jwks.close()


@pytest.fixture
def validator(issuer: LocalIssuer, store: JwksStore) -> TokenValidator:
    return TokenValidator(mcp_server(issuer), store)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- fetching and refreshing ----------------------------------------------------------------------


def test_keys_are_fetched_once_for_many_tokens(issuer: LocalIssuer, validator: TokenValidator) -> None:
    for _ in range(10):
        validator.validate(bearer(issuer.mint()))
        validator.validate(bearer(issuer.mint(kid=issuer.kid("ec"))))
    assert issuer.fetches == 1


def test_prefetch_loads_keys_before_the_first_token(
    issuer: LocalIssuer, store: JwksStore, validator: TokenValidator
) -> None:
    validator.prefetch()
    wait_until(lambda: store.status(issuer.jwks_uri).keys == 3)
    validator.validate(bearer(issuer.mint()))
    assert issuer.fetches == 1


def test_refresh_happens_in_the_background_after_refresh_interval(
    issuer: LocalIssuer, store: JwksStore, validator: TokenValidator, monotonic: ManualClock
) -> None:
    validator.validate(bearer(issuer.mint()))
    monotonic.advance(REFRESH)
    issuer.delay = 0.5  # the refresh is slow, the check is not
    started = time.monotonic()
    validator.validate(bearer(issuer.mint()))
    assert time.monotonic() - started < 0.25
    wait_until(lambda: issuer.fetches == 2 and store.status(issuer.jwks_uri).last_success == monotonic.now)


def test_rotated_key_is_found_with_one_refetch(
    issuer: LocalIssuer, validator: TokenValidator, monotonic: ManualClock
) -> None:
    validator.validate(bearer(issuer.mint()))
    new_kid = issuer.rotate("rsa")
    monotonic.advance(MIN_REFETCH)
    assert validator.validate(bearer(issuer.mint(kid=new_kid)))["sub"] == "alice"
    assert validator.validate(bearer(issuer.mint(kid=new_kid)))["sub"] == "alice"
    assert issuer.fetches == 2


def test_unknown_kid_right_after_a_fetch_waits_for_the_rate_limit(
    issuer: LocalIssuer, validator: TokenValidator, monotonic: ManualClock
) -> None:
    validator.validate(bearer(issuer.mint()))
    new_kid = issuer.rotate("ec")
    with pytest.raises(TokenRejected, match="unknown key id"):
        validator.validate(bearer(issuer.mint(kid=new_kid)))
    assert issuer.fetches == 1
    monotonic.advance(MIN_REFETCH)
    validator.validate(bearer(issuer.mint(kid=new_kid)))
    assert issuer.fetches == 2


def test_flood_of_unknown_kids_fetches_at_most_once_per_interval(
    issuer: LocalIssuer, validator: TokenValidator, monotonic: ManualClock
) -> None:
    validator.validate(bearer(issuer.mint()))
    for round_number in range(3):
        monotonic.advance(MIN_REFETCH)
        for _ in range(40):
            with pytest.raises(TokenRejected, match="unknown key id"):
                validator.validate(bearer(issuer.mint(header={"kid": uuid.uuid4().hex})))
        assert issuer.fetches == 2 + round_number


def test_concurrent_unknown_kid_misses_share_one_fetch(
    issuer: LocalIssuer, validator: TokenValidator, monotonic: ManualClock
) -> None:
    validator.validate(bearer(issuer.mint()))
    new_kid = issuer.rotate("rsa")
    monotonic.advance(MIN_REFETCH)
    issuer.delay = 0.3
    tokens = [bearer(issuer.mint(kid=new_kid)) for _ in range(16)]
    results: list[str] = []
    start = threading.Barrier(len(tokens))

    def check(token: str) -> None:
        start.wait()
        results.append(validator.validate(token)["sub"])

    threads = [threading.Thread(target=check, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["alice"] * len(tokens)
    assert issuer.fetches == 2


def test_token_without_kid_is_rejected_when_several_keys_fit(
    issuer: LocalIssuer, validator: TokenValidator, monotonic: ManualClock
) -> None:
    issuer.rotate("rsa")
    with pytest.raises(TokenRejected, match="no key id"):
        validator.validate(bearer(issuer.mint(header={"kid": OMIT})))


def test_key_removed_from_jwks_stops_cached_tokens_after_refresh(
    issuer: LocalIssuer, store: JwksStore, validator: TokenValidator, monotonic: ManualClock
) -> None:
    old_kid = issuer.kid("rsa")
    token = bearer(issuer.mint(kid=old_kid))
    validator.validate(token)
    issuer.rotate("rsa", drop=old_kid)
    monotonic.advance(REFRESH)
    validator.validate(token)  # still the old keys: the refresh runs behind this check
    wait_until(lambda: store.status(issuer.jwks_uri).last_success == monotonic.now)
    with pytest.raises(TokenRejected, match="unknown key id"):
        validator.validate(token)


# --- outages ----------------------------------------------------------------------------------------


def test_issuer_down_at_start_fails_closed_then_recovers(
    issuer: LocalIssuer, store: JwksStore, validator: TokenValidator, monotonic: ManualClock
) -> None:
    issuer.stop()
    for _ in range(3):
        with pytest.raises(JwksUnavailable) as caught:
            validator.validate(bearer(issuer.mint()))
        assert caught.value.error == "invalid_token"
        assert caught.value.description == "issuer keys unavailable"
    status = store.status(issuer.jwks_uri)
    assert (status.fetches, status.failures, status.keys) == (1, 1, 0)
    assert status.last_error is not None
    issuer.start()
    monotonic.advance(MIN_REFETCH)
    assert validator.validate(bearer(issuer.mint()))["sub"] == "alice"


def test_jwks_fetches_are_counted_by_outcome(
    issuer: LocalIssuer, validator: TokenValidator, monotonic: ManualClock
) -> None:
    failed, succeeded = (metrics.JWKS_FETCHES.labels(outcome=o) for o in ("error", "ok"))
    failed_before, succeeded_before = failed._value.get(), succeeded._value.get()
    issuer.stop()
    with pytest.raises(JwksUnavailable):
        validator.validate(bearer(issuer.mint()))
    issuer.start()
    monotonic.advance(MIN_REFETCH)
    validator.validate(bearer(issuer.mint()))
    assert (failed._value.get(), succeeded._value.get()) == (failed_before + 1, succeeded_before + 1)


def test_stale_keys_serve_during_an_outage_until_stale_for(
    issuer: LocalIssuer, store: JwksStore, validator: TokenValidator, monotonic: ManualClock
) -> None:
    cached = bearer(issuer.mint(exp=time.time() + 7200))
    validator.validate(cached)
    issuer.stop()
    monotonic.advance(REFRESH)
    validator.validate(bearer(issuer.mint()))  # stale keys serve; a refresh is attempted behind
    wait_until(lambda: store.status(issuer.jwks_uri).failures == 1)
    monotonic.advance(STALE_FOR - REFRESH - 1)
    validator.validate(bearer(issuer.mint()))
    validator.validate(cached)
    monotonic.advance(1)
    for token in (bearer(issuer.mint()), cached):
        with pytest.raises(JwksUnavailable):
            validator.validate(token)
    issuer.start()
    monotonic.advance(MIN_REFETCH)
    validator.validate(cached)
    validator.validate(bearer(issuer.mint()))


def test_slow_issuer_does_not_hold_a_check_beyond_the_timeout(
    issuer: LocalIssuer, monotonic: ManualClock
) -> None:
    store = JwksStore(timeout=0.3, clock=monotonic)
    validator = TokenValidator(mcp_server(issuer), store)
    issuer.delay = 2.0
    started = time.monotonic()
    with pytest.raises(JwksUnavailable):
        validator.validate(bearer(issuer.mint()))
    assert time.monotonic() - started < 0.6
    store.close()


HOSTILE_DOCUMENTS: list[tuple[str, bytes, int]] = [
    ("not-json", b"<html>oops</html>", 200),
    ("keys-not-a-list", b'{"keys": {"kid": "x"}}', 200),
    ("top-level-array", b"[]", 200),
    ("duplicate-keys-member", b'{"keys": [], "keys": []}', 200),
    ("oversized", b'{"keys": [], "pad": "' + b"x" * (600 * 1024) + b'"}', 200),
    ("server-error", b"{}", 500),
    ("redirect", b"", 302),
]


HOSTILE_IDS = [name for name, *_ in HOSTILE_DOCUMENTS]
HOSTILE = [(body, status) for _, body, status in HOSTILE_DOCUMENTS]


def serve(issuer: LocalIssuer, document: tuple[bytes, int]) -> None:
    issuer.body, issuer.status = document
    issuer.extra_headers = {"location": issuer.jwks_uri} if issuer.status == 302 else {}


@pytest.mark.parametrize("document", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_document_at_start_fails_closed(
    issuer: LocalIssuer, validator: TokenValidator, document: tuple[bytes, int]
) -> None:
    serve(issuer, document)
    with pytest.raises(JwksUnavailable):
        validator.validate(bearer(issuer.mint()))


@pytest.mark.parametrize("document", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_document_later_keeps_the_last_good_keys(
    issuer: LocalIssuer,
    store: JwksStore,
    validator: TokenValidator,
    monotonic: ManualClock,
    document: tuple[bytes, int],
) -> None:
    validator.validate(bearer(issuer.mint()))
    serve(issuer, document)
    monotonic.advance(REFRESH)
    validator.validate(bearer(issuer.mint()))
    wait_until(lambda: store.status(issuer.jwks_uri).failures == 1)
    monotonic.advance(MIN_REFETCH)
    validator.validate(bearer(issuer.mint(kid=issuer.kid("ec"))))
    assert store.status(issuer.jwks_uri).keys == 3


def test_oversized_document_without_content_length_is_cut_off(
    issuer: LocalIssuer, monotonic: ManualClock
) -> None:
    store = JwksStore(timeout=TIMEOUT, clock=monotonic, max_bytes=1024)
    validator = TokenValidator(mcp_server(issuer), store)
    issuer.body = json.dumps({"keys": issuer.jwks()["keys"] * 3}).encode()
    issuer.declare_length = False  # the cap must hold while reading, not only on the header
    with pytest.raises(JwksUnavailable):
        validator.validate(bearer(issuer.mint()))
    assert "1024" in (store.status(issuer.jwks_uri).last_error or "")
    store.close()


# --- parsing hostile JWKS entries ---------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
EC_KEY = ec.generate_private_key(ec.SECP256R1())
GOOD = public_jwk("good", RSA_KEY)


def off_curve() -> dict[str, Any]:
    jwk = public_jwk("bad-point", EC_KEY)
    jwk["y"] = jwk["x"]
    return jwk


DROPPED_ENTRIES: list[tuple[str, Any, str]] = [
    ("not-an-object", "key", "not an object"),
    ("private-rsa-d", public_jwk("k", RSA_KEY, d="AQAB"), "private key material"),
    ("private-symmetric-k", {"kty": "oct", "kid": "k", "k": "c2VjcmV0"}, "private key material"),
    ("unknown-kty", {"kty": "XYZ", "kid": "k"}, "unsupported key type"),
    ("kty-not-string", {"kty": ["RSA"], "kid": "k"}, "unsupported key type"),
    ("rsa-1024-bits", public_jwk("k", SMALL_RSA_KEY), "1024 bits"),
    ("rsa-missing-n", {"kty": "RSA", "kid": "k", "e": "AQAB"}, "'n'"),
    ("rsa-padded-n", {**public_jwk("k", RSA_KEY), "n": public_jwk("k", RSA_KEY)["n"] + "=="}, "base64url"),
    ("rsa-even-exponent", {**public_jwk("k", RSA_KEY), "e": b64url(b"\x01\x00\x00")}, "invalid RSA key"),
    ("ec-off-curve", off_curve(), "invalid EC key"),
    ("ec-short-coordinate", {**public_jwk("k", EC_KEY), "x": b64url(b"\x01" * 31)}, "32 bytes"),
    ("ec-unknown-curve", {**public_jwk("k", EC_KEY), "crv": "secp256k1"}, "unsupported EC curve"),
    ("ec-curve-not-string", {**public_jwk("k", EC_KEY), "crv": {"name": "P-256"}}, "unsupported EC curve"),
    ("okp-unknown-curve", {"kty": "OKP", "kid": "k", "crv": "X25519", "x": b64url(b"\x01" * 32)}, "OKP"),
    ("use-enc", public_jwk("k", RSA_KEY, use="enc"), "use"),
    ("key-ops-encrypt", public_jwk("k", RSA_KEY, key_ops=["encrypt"]), "key_ops"),
    ("alg-of-other-family", public_jwk("k", RSA_KEY, alg="ES256"), "alg does not match"),
    ("alg-hmac", public_jwk("k", RSA_KEY, alg="HS256"), "alg does not match"),
    ("alg-not-string", public_jwk("k", RSA_KEY, alg=["RS256"]), "alg does not match"),
    ("kid-not-string", {**public_jwk(None, RSA_KEY), "kid": 5}, "kid is not a string"),
]


@pytest.mark.parametrize(
    ("entry", "note"),
    [(entry, note) for _, entry, note in DROPPED_ENTRIES],
    ids=[i for i, *_ in DROPPED_ENTRIES],
)
def test_unusable_entry_is_dropped_and_the_rest_kept(entry: Any, note: str) -> None:
    keys, dropped = parse_jwks(json.dumps({"keys": [entry, GOOD]}).encode())
    assert [key.kid for key in keys] == ["good"]
    assert len(dropped) == 1
    assert note in dropped[0]


def test_kid_naming_two_different_keys_drops_both() -> None:
    entries = [public_jwk("dup", RSA_KEY), public_jwk("dup", OTHER_RSA_KEY), GOOD]
    keys, dropped = parse_jwks(json.dumps({"keys": entries}).encode())
    assert [key.kid for key in keys] == ["good"]
    assert dropped == ["kid 'dup' names different keys"]


def test_the_same_key_listed_twice_is_kept_once() -> None:
    keys, dropped = parse_jwks(json.dumps({"keys": [GOOD, GOOD]}).encode())
    assert [key.kid for key in keys] == ["good"]
    assert dropped == []


def test_jwk_alg_pins_the_header_algorithm() -> None:
    keys, _ = parse_jwks(json.dumps({"keys": [public_jwk("k", RSA_KEY, alg="PS256")]}).encode())
    assert set(keys[0].verifiers) == {"PS256"}


def test_too_many_keys_is_rejected_as_a_whole() -> None:
    with pytest.raises(JwksInvalid, match="keys"):
        parse_jwks(json.dumps({"keys": [GOOD] * (MAX_JWKS_KEYS + 1)}).encode())


def test_token_signed_with_a_key_published_with_private_material_is_rejected(
    issuer: LocalIssuer, validator: TokenValidator
) -> None:
    kid = issuer.kid("rsa")
    jwks = issuer.jwks()
    jwks["keys"][0]["d"] = b64url(b"\x01" * 256)
    issuer.body = json.dumps(jwks).encode()
    validator.validate(bearer(issuer.mint(kid=issuer.kid("ec"))))
    with pytest.raises(TokenRejected, match="unknown key id"):
        validator.validate(bearer(issuer.mint(kid=kid)))
