"""Layer 1: the bearer access token, checked before anything else looks at a request.

A token is accepted when it is a compact JWS signed by a key from the JWKS of one of the
issuers the McpServer trusts, with an algorithm that issuer is allowed to use, whose `aud`
names this server (RFC 8707) and whose `exp`/`nbf`/`iat` hold within the issuer's leeway.
Everything else gets a 401 with the RFC 9728 challenge (`www_authenticate`).

This module holds the claims checks and the validated-token cache; the rooms behind it:
`jose` (base64url, JWKs, signature verification), `jwks` (the shared store of issuer keys),
`challenge` (`TokenRejected` and the `WWW-Authenticate` value). A full check costs about a
third of PyJWT's, a validated-token cache hit about 1 µs (DESIGN.md §8).

Decisions worth knowing:
- Key material named by the token (`jwk`, `jku`, `x5u`, `x5c`) is never used: keys come only
  from the issuer's configured `jwks_uri`, and only that issuer's JWKS can verify its tokens.
- `crit` is rejected outright: no extension is understood, so none can be honoured (RFC 7515 §4.1.11).
- `typ`, when present, must be `at+jwt`, `jwt` or their `application/` forms (any case): this
  keeps ID tokens typed as such, DPoP proofs (`dpop+jwt`) and logout/event tokens out.
- Descriptions name what is wrong and never echo token text; the only values they carry are
  this server's own configuration (its resource id) and well-known algorithm names.
- Returned claims are a fresh copy for every call (containers copied, scalars shared), so a
  caller that mutates them cannot change what later calls see.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from callwarden.extauthz.challenge import TokenRejected, invalid_token, www_authenticate
from callwarden.extauthz.jose import KNOWN_ALGORITHMS, b64url_decode
from callwarden.extauthz.jwks import (
    MAX_JWKS_KEYS,
    JwksInvalid,
    JwksKey,
    JwksStore,
    JwksUnavailable,
    parse_jwks,
)
from callwarden.policy import strictjson
from callwarden.policy.model import McpServer

# Layer 1 as its callers and the token tests import it, from before the rooms were split out.
__all__ = [
    "MAX_JWKS_KEYS",
    "JwksInvalid",
    "JwksStore",
    "JwksUnavailable",
    "Observer",
    "TokenRejected",
    "TokenValidator",
    "parse_jwks",
    "www_authenticate",
]

MAX_AUTHORIZATION_CHARS: Final = 16 * 1024
MAX_ACTOR_DEPTH: Final = 16
# Claims feed recursive code downstream (copies, CEL conversion, the decision log): a token may
# not nest arrays/objects deeper than this, however small it is.
MAX_CLAIMS_DEPTH: Final = 32
# The bound on parsing a token segment, checked before the recursive parser runs, so deep
# nesting is rejected whatever the interpreter's recursion limit. Above MAX_CLAIMS_DEPTH so
# that claims nesting a little too deep get the precise "claims" reason.
MAX_JSON_DEPTH: Final = 2 * MAX_CLAIMS_DEPTH

ACCEPTED_TYPES: Final = frozenset({"at+jwt", "application/at+jwt", "jwt", "application/jwt"})


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
        key: JwksKey,
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
        return self.validate_token(_bearer_token(authorization))

    def validate_token(self, token: str) -> dict[str, Any]:
        """The validated claims of an access token however it was presented (Bearer, DPoP)."""
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
            header_raw = b64url_decode(header_part)
            payload_raw = b64url_decode(payload_part)
            signature = b64url_decode(signature_part)
        except ValueError:
            raise _malformed(token, "not canonical base64url") from None
        try:
            header = strictjson.loads(header_raw, max_depth=MAX_JSON_DEPTH)
        except strictjson.JsonRejected as error:
            raise invalid_token(f"malformed token header: {_json_problem(error)}", "malformed") from None
        try:
            claims = strictjson.loads(payload_raw, max_depth=MAX_JSON_DEPTH)
        except strictjson.JsonRejected as error:
            if error.reason == "bad-number":  # "exp": 1e999 and the like: a claim value is at fault
                raise invalid_token("token claims hold a number out of range", "claims") from None
            raise invalid_token(f"malformed token payload: {_json_problem(error)}", "malformed") from None
        if not isinstance(header, dict):
            raise invalid_token("malformed token header: not a JSON object", "malformed")
        if not isinstance(claims, dict):
            raise invalid_token("malformed token payload: not a JSON object", "malformed")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise invalid_token("token header has no algorithm", "algorithm")
        if "crit" in header:
            raise invalid_token("token header has critical parameters (crit), none are supported", "header")
        typ = header.get("typ", _MISSING)
        if typ is not _MISSING and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES):
            raise invalid_token("token type (typ) is not an access token", "header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token("token key id (kid) is not a string", "malformed")
        iss = claims.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise invalid_token("issuer not trusted", "issuer")
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
            shown = alg if alg in KNOWN_ALGORITHMS else "in the token header"
            raise invalid_token(f"algorithm {shown} not allowed", "algorithm")
        key = self._jwks.key(trusted.jwks_uri, kid, alg)
        verifier = key.verifiers.get(alg)
        if verifier is None:
            raise invalid_token(f"the signing key cannot be used with {alg}", "algorithm")
        if not verifier(signing_input.encode("ascii"), signature):
            raise invalid_token("signature invalid", "signature")
        return self._check_claims(trusted, claims, key)

    def _check_claims(self, trusted: _TrustedIssuer, claims: dict[str, Any], key: JwksKey) -> _Entry:
        now = self._clock()
        leeway = trusted.leeway
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise invalid_token("token has no expiry (exp)", "claims")
        if now >= exp + leeway:
            raise invalid_token("token expired", "expired")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise invalid_token("token not yet valid (nbf)", "not-yet-valid")
        iat = _numeric_date(claims, "iat")
        if iat is not None and now < iat - leeway:
            raise invalid_token("token issued in the future (iat)", "not-yet-valid")
        aud = claims.get("aud", _MISSING)
        if aud is _MISSING:
            raise invalid_token("token has no audience (aud)", "audience")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise invalid_token("token audience (aud) is not a string or an array of strings", "claims")
        if trusted.audiences.isdisjoint(audiences):
            raise invalid_token(f"audience does not include {self.resource}", "audience")
        for name in ("sub", "jti", "client_id"):
            if name in claims and not isinstance(claims[name], str):
                raise invalid_token(f"claim {name} is not a string", "claims")
        containers = tuple(name for name, value in claims.items() if type(value) in (dict, list))
        if not all(_nests_within(claims[name], MAX_CLAIMS_DEPTH - 1) for name in containers):
            raise invalid_token(f"claims nest deeper than {MAX_CLAIMS_DEPTH} levels", "claims")
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


def split_authorization(authorization: str | None) -> tuple[str, str]:
    """(scheme in lowercase, token) of an Authorization header; TokenRejected when there is
    none or it is oversized. The scheme is "" when it is not ASCII."""
    if authorization is None:
        raise TokenRejected(None, "no access token", reason="missing")
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        raise invalid_token(f"token larger than {MAX_AUTHORIZATION_CHARS} characters", "too-large")
    scheme, _, token = authorization.partition(" ")
    return (scheme.lower() if scheme.isascii() else ""), token


def _bearer_token(authorization: str | None) -> str:
    scheme, token = split_authorization(authorization)
    if scheme == "bearer":
        return token
    if scheme == "dpop":
        raise TokenRejected(
            "invalid_request",
            "DPoP-bound tokens are not accepted by this server (spec.dpop.mode is disabled)",
            reason="dpop",
        )
    raise TokenRejected("invalid_request", "unsupported authorization scheme", reason="scheme")


def _malformed(token: str, problem: str) -> TokenRejected:
    # Characters a token68 cannot hold (spaces, commas...) mean the header itself is malformed.
    if not _TOKEN68.fullmatch(token):
        return TokenRejected(
            "invalid_request", "Authorization header is not 'Bearer <token>'", reason="malformed"
        )
    return invalid_token(f"malformed token: {problem}", "malformed")


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
        raise invalid_token(f"claim {name} is not a finite number", "claims")
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
            raise invalid_token("claim act is not an object", "claims")
        if "sub" in act and not isinstance(act["sub"], str):
            raise invalid_token("claim act.sub is not a string", "claims")
        if "act" not in act:
            return
        act = act["act"]
    raise invalid_token(f"actor chain (act) nests deeper than {MAX_ACTOR_DEPTH}", "claims")
