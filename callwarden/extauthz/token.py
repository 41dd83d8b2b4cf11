"""Layer 1: the bearer access token, checked before anything else looks at a request.

A token is accepted when it is a compact JWS signed by a key from the JWKS of one of the
issuers the McpServer trusts, with an algorithm that issuer is allowed to use, whose `aud`
names this server (RFC 8707) and whose `exp`/`nbf`/`iat` hold within the issuer's leeway.
Everything else gets a 401 with the RFC 9728 challenge (`www_authenticate`).

Why not PyJWT: it spends most of its ~110/134 µs (RS256/ES256) validating base64 in Python;
verifying with `cryptography` directly costs about a third of that, and a validated-token
cache hit about 1 µs (DESIGN.md §8). The checks PyJWT would do are all here, plus stricter
ones (canonical base64url, duplicate JSON members, key/algorithm consistency, `typ`).

Decisions worth knowing:
- Key material named by the token (`jwk`, `jku`, `x5u`, `x5c`) is never used: keys come only
  from the issuer's configured `jwks_uri`, and only that issuer's JWKS can verify its tokens.
- `crit` is rejected outright: no extension is understood, so none can be honoured (RFC 7515 §4.1.11).
- `typ`, when present, must be `at+jwt`, `jwt` or their `application/` forms (any case): this
  keeps ID tokens typed as such, DPoP proofs (`dpop+jwt`) and logout/event tokens out.
- A JWKS key that carries private members (`d`, `p`, `k`...) is dropped, not stripped: an
  issuer that publishes its private key has lost it, and tokens signed with it prove nothing.
- A `kid` that appears twice in one JWKS with different keys is ambiguous, so both are dropped.
- Descriptions name what is wrong and never echo token text; the only values they carry are
  this server's own configuration (its resource id) and well-known algorithm names.
- Returned claims are a fresh copy for every call (containers copied, scalars shared), so a
  caller that mutates them cannot change what later calls see.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from callwarden.extauthz import metrics
from callwarden.policy import strictjson
from callwarden.policy.model import McpServer

log = logging.getLogger(__name__)

MAX_AUTHORIZATION_CHARS: Final = 16 * 1024
MAX_JWKS_BYTES: Final = 512 * 1024
MAX_JWKS_KEYS: Final = 100
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192  # larger moduli only make verification slower, never safer in practice
MAX_ACTOR_DEPTH: Final = 16
# Claims feed recursive code downstream (copies, CEL conversion, the decision log): a token may
# not nest arrays/objects deeper than this, however small it is.
MAX_CLAIMS_DEPTH: Final = 32
# The bound on parsing a token segment or a JWKS document, checked before the recursive parser
# runs, so deep nesting is rejected whatever the interpreter's recursion limit. Above
# MAX_CLAIMS_DEPTH so that claims nesting a little too deep get the precise "claims" reason.
MAX_JSON_DEPTH: Final = 2 * MAX_CLAIMS_DEPTH

ACCEPTED_TYPES: Final = frozenset({"at+jwt", "application/at+jwt", "jwt", "application/jwt"})
# Algorithm names a description may repeat; anything else in `alg` is attacker text.
_KNOWN_ALGORITHMS: Final = frozenset(
    {"none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
     "ES256", "ES384", "ES512", "ES256K", "EdDSA", "Ed25519", "Ed448"}
)  # fmt: skip
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# --- errors -------------------------------------------------------------------------------


class TokenRejected(Exception):
    """The request's credentials are not acceptable: answer 401 with `www_authenticate`.

    `error` is the RFC 6750 error code (None when no credentials were sent, so the challenge
    carries none), `description` is safe to show and log, `reason` is a stable kebab-case code
    for metrics ("missing", "malformed", "expired", "audience", "signature", ...).
    """

    def __init__(self, error: str | None, description: str, *, reason: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason
        self.issuer = ""  # the trusted issuer the token claimed, once known (for metrics)


class JwksUnavailable(TokenRejected):
    """The issuer's keys cannot be had (never fetched, or older than `stale_for`): fail closed."""

    def __init__(self, description: str = "issuer keys unavailable") -> None:
        super().__init__("invalid_token", description, reason="keys-unavailable")


def _invalid(description: str, reason: str) -> TokenRejected:
    return TokenRejected("invalid_token", description, reason=reason)


# --- strict encodings -----------------------------------------------------------------------

_TO_STANDARD_BASE64: Final = bytes.maketrans(b"-_", b"+/")
# With 2 or 3 characters in the last quantum, the unused low bits of the last character must
# be zero; otherwise several encodings decode to the same bytes (RFC 4648 §3.5).
_CANONICAL_LAST: Final = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def _b64url_decode(text: str) -> bytes:
    """Decode unpadded, canonical base64url (RFC 7515 §2): no padding, whitespace or `+`/`/`.

    Everything here is C (str scans, translate, strict a2b_base64): PyJWT's Python-level
    base64 validation is where most of its time goes."""
    tail = len(text) % 4
    if (
        tail == 1
        or (tail and text[-1] not in _CANONICAL_LAST[tail])
        or "+" in text
        or "/" in text
        or "=" in text
    ):
        raise ValueError("not canonical base64url")
    padded = text.encode("ascii").translate(_TO_STANDARD_BASE64) + b"==="[: (4 - tail) % 4]
    return binascii.a2b_base64(padded, strict_mode=True)


# --- keys -----------------------------------------------------------------------------------

Verifier = Callable[[bytes, bytes], bool]

_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
_EC_CURVES: Final[dict[str, tuple[ec.EllipticCurve, int, str]]] = {
    # crv -> (curve, coordinate bytes, the one JWS alg it serves)
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
    "P-521": (ec.SECP521R1(), 66, "ES512"),
}
_RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def _rsa_verifier(public_key: rsa.RSAPublicKey, alg: str) -> Verifier:
    digest = _HASHES[alg[2:]]
    scheme: padding.AsymmetricPadding
    if alg.startswith("RS"):
        scheme = padding.PKCS1v15()
    else:  # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output
        scheme = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)

    def verify(signing_input: bytes, signature: bytes) -> bool:
        try:
            public_key.verify(signature, signing_input, scheme, digest)
        except InvalidSignature:
            return False
        return True

    return verify


def _ec_verifier(public_key: ec.EllipticCurvePublicKey, size: int, alg: str) -> Verifier:
    algorithm = ec.ECDSA(_HASHES[alg[2:]])

    def verify(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != 2 * size:  # JWS carries R || S, fixed width (RFC 7518 §3.4)
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        try:
            public_key.verify(encode_dss_signature(r, s), signing_input, algorithm)
        except InvalidSignature:
            return False
        return True

    return verify


def _eddsa_verifier(public_key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verifier:
    def verify(signing_input: bytes, signature: bytes) -> bool:
        try:
            public_key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True

    return verify


class _Key:
    """One usable public key from a JWKS, with a verifier for each algorithm it may serve."""

    __slots__ = ("fresh_until", "identity", "kid", "verifiers")

    def __init__(self, kid: str | None, identity: tuple[Any, ...], verifiers: dict[str, Verifier]) -> None:
        self.kid = kid
        self.identity = identity  # kty, curve and public numbers: equal keys compare equal
        self.verifiers = verifiers
        # Store-clock time until which tokens verified with this key may be served from the
        # token cache; -inf once the key has left its issuer's JWKS.
        self.fresh_until = -math.inf


class JwkIgnored(ValueError):
    """One JWKS entry that cannot be used; the rest of the set still is."""


def _b64url_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkIgnored(f"member {name!r} is missing")
    try:
        return _b64url_decode(value)
    except ValueError as error:
        raise JwkIgnored(f"member {name!r} is not canonical base64url") from error


ParsedKey = tuple[tuple[Any, ...], dict[str, Verifier]]  # identity, verifier per JWS alg


def _rsa_key(jwk: Mapping[str, Any]) -> ParsedKey:
    n = int.from_bytes(_b64url_member(jwk, "n"), "big")
    e = int.from_bytes(_b64url_member(jwk, "e"), "big")
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise JwkIgnored(f"RSA modulus of {n.bit_length()} bits; {MIN_RSA_BITS}..{MAX_RSA_BITS} accepted")
    try:
        public_key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as error:
        raise JwkIgnored(f"invalid RSA key: {error}") from error
    return ("RSA", n, e), {alg: _rsa_verifier(public_key, alg) for alg in _RSA_ALGORITHMS}


def _ec_key(jwk: Mapping[str, Any]) -> ParsedKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _EC_CURVES:
        raise JwkIgnored("unsupported EC curve")
    curve, size, alg = _EC_CURVES[crv]
    x, y = _b64url_member(jwk, "x"), _b64url_member(jwk, "y")
    if len(x) != size or len(y) != size:
        raise JwkIgnored(f"{crv} coordinates must be {size} bytes")
    try:
        numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
        public_key = numbers.public_key()
    except ValueError as error:  # not on the curve
        raise JwkIgnored(f"invalid EC key: {error}") from error
    return ("EC", crv, x, y), {alg: _ec_verifier(public_key, size, alg)}


def _okp_key(jwk: Mapping[str, Any]) -> ParsedKey:
    crv = jwk.get("crv")
    if crv not in ("Ed25519", "Ed448"):
        raise JwkIgnored("unsupported OKP curve")
    x = _b64url_member(jwk, "x")
    public_key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    try:
        if crv == "Ed25519":
            public_key = ed25519.Ed25519PublicKey.from_public_bytes(x)
        else:
            public_key = ed448.Ed448PublicKey.from_public_bytes(x)
    except ValueError as error:
        raise JwkIgnored(f"invalid OKP key: {error}") from error
    return ("OKP", crv, x), {"EdDSA": _eddsa_verifier(public_key)}


_KEY_TYPES: Final[dict[str, Callable[[Mapping[str, Any]], ParsedKey]]] = {
    "RSA": _rsa_key,
    "EC": _ec_key,
    "OKP": _okp_key,
}


def parse_jwk(jwk: Any) -> _Key:
    """A verification key from one JWK (RFC 7517/7518/8037), or JwkIgnored saying why not."""
    if not isinstance(jwk, dict):
        raise JwkIgnored("entry is not an object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwkIgnored("kid is not a string")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise JwkIgnored("entry carries private key material")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JwkIgnored("use is not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JwkIgnored("key_ops does not allow 'verify'")
    kty = jwk.get("kty")
    parse = _KEY_TYPES.get(kty) if isinstance(kty, str) else None
    if parse is None:
        raise JwkIgnored("unsupported key type")
    identity, verifiers = parse(jwk)
    alg = jwk.get("alg")
    if alg is not None:  # the JWK pins one algorithm: the header must use exactly that one
        if not isinstance(alg, str) or alg not in verifiers:
            raise JwkIgnored("alg does not match the key type")
        verifiers = {alg: verifiers[alg]}
    return _Key(kid, identity, verifiers)


class JwksInvalid(ValueError):
    """The document as a whole is not a usable JWKS: keep the keys we had."""


def parse_jwks(body: bytes) -> tuple[list[_Key], list[str]]:
    """The usable keys of a JWKS document and a note for every entry that was dropped."""
    try:
        document = strictjson.loads(body, max_depth=MAX_JSON_DEPTH)
    except strictjson.JsonRejected as error:
        raise JwksInvalid(f"not JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksInvalid("not a JWK Set: 'keys' is not a list")
    entries = document["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise JwksInvalid(f"{len(entries)} keys; at most {MAX_JWKS_KEYS} accepted")
    keys: list[_Key] = []
    dropped: list[str] = []
    for index, entry in enumerate(entries):
        try:
            keys.append(parse_jwk(entry))
        except JwkIgnored as error:
            dropped.append(f"key {index}: {error}")
    by_kid: dict[str, list[_Key]] = {}
    for key in keys:
        if key.kid is not None:
            by_kid.setdefault(key.kid, []).append(key)
    ambiguous = {kid for kid, same in by_kid.items() if len({key.identity for key in same}) > 1}
    dropped.extend(f"kid {kid!r} names different keys" for kid in sorted(ambiguous))
    unique: list[_Key] = []
    seen: set[tuple[str | None, tuple[Any, ...]]] = set()
    for key in keys:
        if key.kid in ambiguous or (key.kid, key.identity) in seen:
            continue
        seen.add((key.kid, key.identity))
        unique.append(key)
    return unique, dropped


# --- the JWKS store -------------------------------------------------------------------------


@dataclass(frozen=True)
class JwksStatus:
    """What the store knows about one JWKS URI (for /readyz and metrics)."""

    jwks_uri: str
    keys: int
    fetches: int
    failures: int
    last_success: float | None  # store clock
    last_error: str | None


class _KeySet:
    """The keys of one JWKS URI and the state of fetching them. Guarded by `lock`."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lock = threading.Lock()
        self.named: dict[str, _Key] = {}
        self.keys: tuple[_Key, ...] = ()
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None  # last fetch started
        self.inflight: threading.Event | None = None
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None

    def find(self, kid: str | None, alg: str) -> _Key | None:
        if kid is not None:
            return self.named.get(kid)
        # No kid: acceptable only when exactly one key could have made this signature.
        candidates = [key for key in self.keys if alg in key.verifiers]
        return candidates[0] if len(candidates) == 1 else None

    def install(self, keys: list[_Key], fresh_until: float) -> None:
        previous = {(key.kid, key.identity): key for key in self.keys}
        kept: list[_Key] = []
        for key in keys:
            # An unchanged key keeps its object, so cached tokens verified with it stay valid.
            same = previous.pop((key.kid, key.identity), key)
            same.fresh_until = fresh_until
            kept.append(same)
        for retired in previous.values():
            retired.fresh_until = -math.inf
        self.keys = tuple(kept)
        self.named = {key.kid: key for key in kept if key.kid is not None}


class JwksStore:
    """Issuer signing keys, fetched over HTTP and shared by every TokenValidator in the process.

    Keys are fetched on first use and refreshed in the background once older than
    `refresh_interval`; an unknown `kid` triggers one synchronous refetch, at most once per
    `min_refetch_interval` per URI, and concurrent misses share one fetch (single flight).
    A check never waits longer than `timeout` for a fetch. While an issuer is unreachable or
    serves garbage, its last good keys keep working until `stale_for` after they were
    fetched; after that every token of that issuer is rejected until a fetch succeeds.
    `clock` is monotonic time (injectable for tests).
    """

    def __init__(
        self,
        *,
        timeout: float = 2.0,
        refresh_interval: float = 300,
        min_refetch_interval: float = 10,
        stale_for: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        if timeout <= 0 or refresh_interval <= 0 or min_refetch_interval < 0:
            raise ValueError("timeout and refresh_interval must be positive, min_refetch_interval >= 0")
        if stale_for < refresh_interval:
            raise ValueError("stale_for must be at least refresh_interval")
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self.stale_for = stale_for
        self.clock = clock
        self.max_bytes = max_bytes
        # No redirects (the configured URI is the trust anchor), no compression (the size cap
        # must apply to what is parsed, and a small gzip body can inflate enormously).
        self._client = httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            headers={"accept": "application/jwk-set+json, application/json", "accept-encoding": "identity"},
        )
        self._sets: dict[str, _KeySet] = {}
        self._lock = threading.Lock()

    def _set(self, uri: str) -> _KeySet:
        key_set = self._sets.get(uri)
        if key_set is None:
            with self._lock:
                key_set = self._sets.setdefault(uri, _KeySet(uri))
        return key_set

    def key(self, jwks_uri: str, kid: str | None, alg: str) -> _Key:
        """The key `kid` of that JWKS (or its only key for `alg` when kid is None)."""
        key_set = self._set(jwks_uri)
        now = self.clock()
        with key_set.lock:
            usable = key_set.fetched_at is not None and now < key_set.fetched_at + self.stale_for
            key = key_set.find(kid, alg) if usable else None
            fetch_due = self._fetch_due(key_set, now)
            if key is not None:
                assert key_set.fetched_at is not None
                if now >= key_set.fetched_at + self.refresh_interval and fetch_due and not key_set.inflight:
                    self._start_fetch(key_set, now)  # serve this key; refresh behind it
                return key
            wait_for = key_set.inflight
            if wait_for is None and fetch_due:
                wait_for = self._start_fetch(key_set, now)
        if wait_for is not None:
            wait_for.wait(self.timeout)
            with key_set.lock:
                now = self.clock()
                usable = key_set.fetched_at is not None and now < key_set.fetched_at + self.stale_for
                key = key_set.find(kid, alg) if usable else None
            if key is not None:
                return key
        if not usable:
            raise JwksUnavailable()
        if kid is None:
            raise _invalid("token has no key id and the issuer keys do not single one out", "unknown-key")
        raise _invalid("unknown key id", "unknown-key")

    def prefetch(self, jwks_uri: str) -> None:
        """Start fetching a JWKS in the background (if due), so the first check need not wait."""
        key_set = self._set(jwks_uri)
        now = self.clock()
        with key_set.lock:
            if self._fetch_due(key_set, now) and key_set.inflight is None:
                self._start_fetch(key_set, now)

    def status(self, jwks_uri: str) -> JwksStatus:
        key_set = self._set(jwks_uri)
        with key_set.lock:
            return JwksStatus(
                jwks_uri=jwks_uri,
                keys=len(key_set.keys),
                fetches=key_set.fetches,
                failures=key_set.failures,
                last_success=key_set.fetched_at,
                last_error=key_set.last_error,
            )

    def close(self) -> None:
        self._client.close()

    def _fetch_due(self, key_set: _KeySet, now: float) -> bool:
        """At most one fetch per `min_refetch_interval`, however many tokens ask for one."""
        return key_set.attempted_at is None or now - key_set.attempted_at >= self.min_refetch_interval

    def _start_fetch(self, key_set: _KeySet, now: float) -> threading.Event:
        """Called with key_set.lock held. The fetch runs on its own thread so that a check
        waits at most `timeout` even when the issuer answers slowly byte by byte."""
        done = threading.Event()
        key_set.inflight = done
        key_set.attempted_at = now
        key_set.fetches += 1
        thread = threading.Thread(
            target=self._fetch, args=(key_set, done), name="callwarden-jwks-fetch", daemon=True
        )
        thread.start()
        return done

    def _fetch(self, key_set: _KeySet, done: threading.Event) -> None:
        try:
            keys, dropped = parse_jwks(self._download(key_set.uri))
        except Exception as error:  # any failure, even an unexpected one, keeps the old keys
            message = f"{type(error).__name__}: {error}"
            log.warning("fetching JWKS %s failed: %s", key_set.uri, message)
            metrics.JWKS_FETCHES.labels(outcome="error").inc()
            with key_set.lock:
                key_set.failures += 1
                key_set.last_error = message
        else:
            for note in dropped:
                log.warning("JWKS %s: ignored %s", key_set.uri, note)
            metrics.JWKS_FETCHES.labels(outcome="ok").inc()
            with key_set.lock:
                fetched_at = self.clock()
                key_set.install(keys, fetched_at + self.refresh_interval)
                key_set.fetched_at = fetched_at
                key_set.last_error = None
        finally:
            with key_set.lock:
                key_set.inflight = None
            done.set()

    def _download(self, uri: str) -> bytes:
        deadline = time.monotonic() + self.timeout * 4  # a drip-feeding server is cut off
        with self._client.stream("GET", uri) as response:
            if response.status_code != 200:
                raise JwksInvalid(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise JwksInvalid(f"{declared} bytes; at most {self.max_bytes} accepted")
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise JwksInvalid(f"more than {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise JwksInvalid("response too slow")
            return bytes(body)


# --- the validator --------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrustedIssuer:
    issuer: str
    jwks_uri: str
    algorithms: frozenset[str]
    audiences: frozenset[str]
    leeway: float


class _Entry:
    """A validated token in the cache. Everything but `referenced` is immutable."""

    __slots__ = ("claims", "containers", "expires", "issuer", "key", "not_before", "referenced")

    def __init__(
        self,
        claims: dict[str, Any],
        *,
        containers: tuple[str, ...],
        expires: float,
        not_before: float,
        key: _Key,
        issuer: str,
    ) -> None:
        self.claims = claims
        self.containers = containers  # claims holding lists/objects: the ones a caller could mutate
        self.expires = expires
        self.not_before = not_before
        self.key = key
        self.issuer = issuer
        self.referenced = False

    def copy_claims(self) -> dict[str, Any]:
        claims = dict(self.claims)
        for name in self.containers:
            claims[name] = _copy_json(claims[name])
        return claims


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _copy_json(member) for name, member in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MISSING: Final = object()

Observer = Callable[[str, str], None]
"""Called as observe(issuer, outcome) after every validation: outcome is "cache-hit",
"verified" or a TokenRejected.reason; issuer is "" when no trusted issuer was identified."""


class TokenValidator:
    """Validates bearer tokens for one McpServer. Thread-safe: call `validate` from any thread.

    `clock` is wall-clock time (for exp/nbf/iat). Validated tokens are cached by the SHA-256 of
    the token (the cache never holds a usable credential), at most `cache_size` entries with
    CLOCK (second-chance) eviction; a hit re-checks exp/nbf against the clock and that the
    signing key is still fresh in its issuer's JWKS, so a key that leaves the JWKS stops
    validating cached tokens at the next refresh.
    """

    def __init__(
        self,
        server: McpServer,
        jwks: JwksStore,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        observe: Observer | None = None,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        spec = server.spec
        self._issuers = {
            issuer.issuer: _TrustedIssuer(
                issuer=issuer.issuer,
                jwks_uri=issuer.jwks_uri,
                algorithms=frozenset(issuer.algorithms),
                audiences=frozenset([spec.resource, *issuer.audiences]),
                leeway=float(issuer.leeway_seconds),
            )
            for issuer in spec.issuers
        }
        self.resource = spec.resource
        self._jwks = jwks
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._observe = observe

    def prefetch(self) -> None:
        """Start fetching every trusted issuer's keys in the background (non-blocking)."""
        for uri in sorted({issuer.jwks_uri for issuer in self._issuers.values()}):
            self._jwks.prefetch(uri)

    def validate(self, authorization: str | None) -> dict[str, Any]:
        """The validated claims of the request's bearer token, or TokenRejected."""
        token = _bearer_token(authorization)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self._cache.get(digest)
        if entry is not None:
            now = self._clock()
            if entry.not_before <= now < entry.expires and self._jwks.clock() < entry.key.fresh_until:
                entry.referenced = True
                if self._observe is not None:
                    self._observe(entry.issuer, "cache-hit")
                return entry.copy_claims()
            with self._cache_lock:
                self._cache.pop(digest, None)
        try:
            entry = self._verify(token)
        except TokenRejected as rejected:
            if self._observe is not None:
                self._observe(rejected.issuer, rejected.reason)
            raise
        self._remember(digest, entry)
        if self._observe is not None:
            self._observe(entry.issuer, "verified")
        return entry.copy_claims()

    def _remember(self, digest: bytes, entry: _Entry) -> None:
        with self._cache_lock:
            cache = self._cache
            if len(cache) >= self._cache_size:
                # CLOCK: the oldest entry goes unless it was hit since it was last looked at, in
                # which case it gets a second chance at the back; at most one full sweep.
                for _ in range(len(cache)):
                    oldest, victim = cache.popitem(last=False)
                    if not victim.referenced:
                        break
                    victim.referenced = False
                    cache[oldest] = victim
                else:
                    cache.popitem(last=False)
            cache[digest] = entry

    def _verify(self, token: str) -> _Entry:
        parts = token.split(".")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _malformed(token, "not a compact JWS")
        header_part, payload_part, signature_part = parts
        try:
            header_raw = _b64url_decode(header_part)
            payload_raw = _b64url_decode(payload_part)
            signature = _b64url_decode(signature_part)
        except ValueError:
            raise _malformed(token, "not canonical base64url") from None
        try:
            header = strictjson.loads(header_raw, max_depth=MAX_JSON_DEPTH)
        except strictjson.JsonRejected as error:
            raise _invalid(f"malformed token header: {_json_problem(error)}", "malformed") from None
        try:
            claims = strictjson.loads(payload_raw, max_depth=MAX_JSON_DEPTH)
        except strictjson.JsonRejected as error:
            if error.reason == "bad-number":  # "exp": 1e999 and the like: a claim value is at fault
                raise _invalid("token claims hold a number out of range", "claims") from None
            raise _invalid(f"malformed token payload: {_json_problem(error)}", "malformed") from None
        if not isinstance(header, dict):
            raise _invalid("malformed token header: not a JSON object", "malformed")
        if not isinstance(claims, dict):
            raise _invalid("malformed token payload: not a JSON object", "malformed")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _invalid("token header has no algorithm", "algorithm")
        if "crit" in header:
            raise _invalid("token header has critical parameters (crit), none are supported", "header")
        typ = header.get("typ", _MISSING)
        if typ is not _MISSING and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES):
            raise _invalid("token type (typ) is not an access token", "header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("token key id (kid) is not a string", "malformed")
        iss = claims.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise _invalid("issuer not trusted", "issuer")
        signing_input = token[: len(header_part) + 1 + len(payload_part)]
        try:
            return self._verify_from(
                trusted,
                alg=alg,
                kid=kid,
                claims=claims,
                signing_input=signing_input,
                signature=signature,
            )
        except TokenRejected as rejected:
            rejected.issuer = trusted.issuer
            raise

    def _verify_from(
        self,
        trusted: _TrustedIssuer,
        *,
        alg: str,
        kid: str | None,
        claims: dict[str, Any],
        signing_input: str,
        signature: bytes,
    ) -> _Entry:
        if alg not in trusted.algorithms:
            shown = alg if alg in _KNOWN_ALGORITHMS else "in the token header"
            raise _invalid(f"algorithm {shown} not allowed", "algorithm")
        key = self._jwks.key(trusted.jwks_uri, kid, alg)
        verifier = key.verifiers.get(alg)
        if verifier is None:
            raise _invalid(f"the signing key cannot be used with {alg}", "algorithm")
        if not verifier(signing_input.encode("ascii"), signature):
            raise _invalid("signature invalid", "signature")
        return self._check_claims(trusted, claims, key)

    def _check_claims(self, trusted: _TrustedIssuer, claims: dict[str, Any], key: _Key) -> _Entry:
        now = self._clock()
        leeway = trusted.leeway
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise _invalid("token has no expiry (exp)", "claims")
        if now >= exp + leeway:
            raise _invalid("token expired", "expired")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise _invalid("token not yet valid (nbf)", "not-yet-valid")
        iat = _numeric_date(claims, "iat")
        if iat is not None and now < iat - leeway:
            raise _invalid("token issued in the future (iat)", "not-yet-valid")
        aud = claims.get("aud", _MISSING)
        if aud is _MISSING:
            raise _invalid("token has no audience (aud)", "audience")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise _invalid("token audience (aud) is not a string or an array of strings", "claims")
        if trusted.audiences.isdisjoint(audiences):
            raise _invalid(f"audience does not include {self.resource}", "audience")
        for name in ("sub", "jti", "client_id"):
            if name in claims and not isinstance(claims[name], str):
                raise _invalid(f"claim {name} is not a string", "claims")
        containers = tuple(name for name, value in claims.items() if type(value) in (dict, list))
        if not all(_nests_within(claims[name], MAX_CLAIMS_DEPTH - 1) for name in containers):
            raise _invalid(f"claims nest deeper than {MAX_CLAIMS_DEPTH} levels", "claims")
        if "act" in claims:
            _check_actor_chain(claims["act"])
        not_before = max(-math.inf if nbf is None else nbf, -math.inf if iat is None else iat) - leeway
        return _Entry(
            claims,
            containers=containers,
            expires=exp + leeway,
            not_before=not_before,
            key=key,
            issuer=trusted.issuer,
        )


def _bearer_token(authorization: str | None) -> str:
    if authorization is None:
        raise TokenRejected(None, "no access token", reason="missing")
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        raise _invalid(f"token larger than {MAX_AUTHORIZATION_CHARS} characters", "too-large")
    scheme, _, token = authorization.partition(" ")
    lowered = scheme.lower() if scheme.isascii() else ""
    if lowered == "bearer":
        return token
    if lowered == "dpop":
        raise TokenRejected("invalid_request", "DPoP-bound tokens are not supported yet", reason="dpop")
    raise TokenRejected("invalid_request", "unsupported authorization scheme", reason="scheme")


def _malformed(token: str, problem: str) -> TokenRejected:
    # Characters a token68 cannot hold (spaces, commas...) mean the header itself is malformed.
    if not _TOKEN68.fullmatch(token):
        return TokenRejected(
            "invalid_request", "Authorization header is not 'Bearer <token>'", reason="malformed"
        )
    return _invalid(f"malformed token: {problem}", "malformed")


_JSON_PROBLEMS: Final = {
    "not-utf8": "not UTF-8",
    "too-deep": "nested too deeply",
    "duplicate-member": "duplicate member name",
    "bad-number": "number out of range",
}


def _json_problem(error: strictjson.JsonRejected) -> str:
    """Why a segment failed to parse, without quoting any of its content (the message may)."""
    return _JSON_PROBLEMS.get(error.reason, "not JSON")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name, _MISSING)
    if value is _MISSING:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _invalid(f"claim {name} is not a finite number", "claims")
    return float(value)


def _nests_within(value: Any, limit: int) -> bool:
    """Whether arrays/objects in `value` nest at most `limit` levels (iterative: no recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if type(item) is dict:
            item = item.values()
        elif type(item) is not list:
            continue
        if depth > limit:
            return False
        pending.extend((member, depth + 1) for member in item)
    return True


def _check_actor_chain(act: Any) -> None:
    """RFC 8693 §4.1: `act` is an object, nesting prior actors in its own `act`."""
    for _ in range(MAX_ACTOR_DEPTH):
        if not isinstance(act, dict):
            raise _invalid("claim act is not an object", "claims")
        if "sub" in act and not isinstance(act["sub"], str):
            raise _invalid("claim act.sub is not a string", "claims")
        if "act" not in act:
            return
        act = act["act"]
    raise _invalid(f"actor chain (act) nests deeper than {MAX_ACTOR_DEPTH}", "claims")


# --- the challenge --------------------------------------------------------------------------


def _description_text(text: str) -> str:
    # RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E, so `"` and
    # `\` cannot appear even escaped; substitute look-alikes and drop anything non-printable.
    text = text.replace('"', "'").replace("\\", "/")
    return "".join(char if " " <= char <= "~" else "?" for char in text)


def _quoted_url(url: str) -> str:
    """A URL as an RFC 7230 quoted-string: quoted-pairs for `"` and `\\`, and anything outside
    printable ASCII percent-encoded as UTF-8 (a header value must never carry CR/LF)."""
    escaped = url.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(char if " " <= char <= "~" else _percent(char) for char in escaped) + '"'


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def www_authenticate(resource_metadata_url: str, rejected: TokenRejected) -> str:
    """The `WWW-Authenticate` value of a 401: RFC 9728 §5.1 plus RFC 6750 §3 error fields.

    A request that carried no credentials (`rejected.error is None`) gets no error attribute.
    """
    challenge = f"Bearer resource_metadata={_quoted_url(resource_metadata_url)}"
    if rejected.error is None:
        return challenge
    return (
        f'{challenge}, error="{_description_text(rejected.error)}", '
        f'error_description="{_description_text(rejected.description)}"'
    )
