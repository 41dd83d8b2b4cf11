"""Layer 1, sender constraint: DPoP proofs (RFC 9449) bound to the access token's key.

A DPoP-bound access token carries `cnf.jkt`, the RFC 7638 thumbprint of a key the client holds.
With every request the client sends `Authorization: DPoP <token>` and one `DPoP` header: a
fresh JWS, signed by that key, naming the request's method and URI and hashing the token.
A captured token is useless without the private key; a captured proof is good for one
method, one URI and one token, for `maxAge` seconds, and (per replica) only once.

`DpopVerifier.verify` runs every check of RFC 9449 §4.3, in this order (each failure names its
check and never echoes proof text):

1. exactly one `DPoP` header;                  7. no private members in `jwk`;
2. one compact JWS, canonical base64url,       8. `htm` equals the request method;
   strict JSON (no duplicate members);         9. `htu` equals the request URI, both normalised
3. `jti`, `htm`, `htu`, `iat`, `ath` present      (RFC 3986 §6.2.2-6.2.3), the request's query
   and well typed;                                 ignored, an `htu` with one refused;
4. `typ` is `dpop+jwt`;                       10. `nonce` is a valid server nonce (when required);
5. `alg` is in the server's allowlist (never  11. `iat` within `maxAge` in the past, FUTURE_SKEW
   `none`, never a MAC);                           ahead;
6. the signature verifies with the header     12. `ath` is the hash of the presented token and
   `jwk`;                                          `cnf.jkt` the thumbprint of the proof key;

and finally the replay cache: a `jti` accepted once is refused for as long as its proof could
still be accepted.

Replay with N replicas. The `jti` cache is per process, so a captured proof could be replayed
at most once on each other replica, within `maxAge`, and only for the same method, URI and
token. Server nonces (`nonce.enabled`) add server-side freshness without shared state: a proof
must carry a nonce from the current window, so none can be signed in advance (RFC 9449 §11.1).
A nonce is an HMAC over a time window and the McpServer, keyed from a secret every replica
loads (`NonceKeys.from_file`, a Kubernetes Secret the chart creates), so any replica verifies a
nonce another one issued, and a nonce of one McpServer is worthless at another.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from callwarden.extauthz import metrics
from callwarden.extauthz.jose import (
    KNOWN_ALGORITHMS,
    PRIVATE_MEMBERS,
    JwkIgnored,
    Verifier,
    b64url_decode,
    parse_jwk,
)
from callwarden.policy import strictjson
from callwarden.policy.model import Dpop

PROOF_TYPE: Final = "dpop+jwt"
# An RSA-8192 public key in the header is about 1.5 KB of base64url; nothing legitimate is bigger.
MAX_PROOF_CHARS: Final = 8 * 1024
# RFC 9449 §11.1: a server may refuse over-long `jti` values (only their hash is stored anyway).
MAX_JTI_CHARS: Final = 256
MAX_HTU_CHARS: Final = 4096
# A proof is flat but for the header's `jwk` object.
MAX_PROOF_JSON_DEPTH: Final = 4
# How far in the future `iat` may be (client clocks run fast), never more than `maxAge`.
FUTURE_SKEW: Final = 60.0
NONCE_LABEL: Final = b"callwarden dpop nonce v1\x00"
MIN_NONCE_KEY_BYTES: Final = 32
# Enough for a busy replica's window of proofs; beyond it the oldest entries go first
# (counted in callwarden_dpop_replay_evictions_total) and the `iat` window still bounds replay.
DEFAULT_REPLAY_ENTRIES: Final = 200_000
# Distinct proof headers (client keys) whose parsed key is kept, per McpServer.
HEADER_CACHE_SIZE: Final = 4096

_REQUIRED_MEMBERS: Final = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
_PROOF_CHARS: Final = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")

# --- errors -------------------------------------------------------------------------------


class ProofRejected(Exception):
    """The DPoP proof (or its binding to the token) is not acceptable: answer 401.

    `error` is the RFC 9449 error code: `invalid_dpop_proof` for a proof failing §4.3,
    `use_dpop_nonce` when a (fresh) server nonce is needed (`nonce` is then the one to send in
    `DPoP-Nonce`), `invalid_token` when the proof is fine but the token is not bound to its key.
    `reason` is a stable kebab-case code for metrics and the decision log.
    """

    def __init__(self, error: str, description: str, *, reason: str, nonce: str | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason
        self.nonce = nonce


def _invalid_proof(description: str, reason: str) -> ProofRejected:
    return ProofRejected("invalid_dpop_proof", description, reason=f"dpop-{reason}")


# --- thumbprints, ath, htu ------------------------------------------------------------------


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the key type's required members, sorted, no whitespace.

    `jwk` has passed `parse_jwk`, so those members exist and are ASCII strings.
    """
    required = {name: jwk[name] for name in _REQUIRED_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"))
    return _b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def access_token_hash(token: str) -> str:
    """`ath`: base64url(SHA-256(ASCII(token))) (RFC 9449 §4.2)."""
    return _b64url_encode(hashlib.sha256(token.encode("ascii", "surrogateescape")).digest())


class UriRejected(ValueError):
    """Not an absolute http(s) URI that can be compared."""


_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
# RFC 3986 §3: scheme "://" authority path; no userinfo (a request URI has none), ASCII only.
_URI: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#@]*)(?P<path>(?:/[^?#]*)?)(?:[?#].*)?"
)
_HOST_PORT: Final = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_~%!$&'()*+,;=]+)(?::(?P<port>[0-9]*))?"
)


def _normalise_percent(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, on a path that starts with "/"."""
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


@functools.lru_cache(maxsize=4096)  # the same few request URIs and htu values, again and again
def normalise_uri(uri: str, *, merge_slashes: bool = False) -> str:
    """`scheme://authority/path` of an absolute http(s) URI, normalised for comparison.

    RFC 3986 §6.2.2 (case of scheme and host, percent-encoding case, unreserved characters
    decoded, dot segments removed) and §6.2.3 (default port dropped, empty path is "/").
    Query and fragment are dropped: callers decide first whether a URI may carry them.
    `merge_slashes` also collapses runs of "/", as the gateway's Envoy does to the request
    path before ext_authz sees it (so a proof for "//mcp" matches what Envoy forwarded).
    """
    if len(uri) > MAX_HTU_CHARS or not uri.isascii() or any(c <= " " or c == "\x7f" for c in uri):
        raise UriRejected("not a URI (non-ASCII, whitespace or control characters, or too long)")
    match = _URI.fullmatch(uri)
    if match is None:
        raise UriRejected("not an absolute URI with an authority")
    scheme = match.group("scheme").lower()
    if scheme not in _DEFAULT_PORTS:
        raise UriRejected("scheme is not http or https")
    host_port = _HOST_PORT.fullmatch(match.group("authority"))
    if host_port is None:
        raise UriRejected("authority is not host[:port]")
    host = _PERCENT.sub(_normalise_percent, host_port.group("host")).lower()
    port = host_port.group("port") or ""
    if port:
        port = port.lstrip("0") or "0"
    authority = host if port in ("", _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _PERCENT.sub(_normalise_percent, match.group("path")) or "/"
    if merge_slashes:
        path = re.sub("/{2,}", "/", path)
    return f"{scheme}://{authority}{_remove_dot_segments(path)}"


def request_uri(headers: Mapping[str, str], authority: str, path: str) -> str:
    """The URI the client addressed, from what Envoy tells ext_authz about the request.

    - scheme: `x-forwarded-proto`, which the gateway's Envoy sets itself at the edge
      (`use_remote_address: true` overwrites any client-sent value with the downstream
      connection's protocol); behind a TLS-terminating balancer, Envoy must be told to trust
      it (`xff_num_trusted_hops`), see README "DPoP". Without it, `:scheme`.
    - authority: `:authority` (the Host the client sent). ext_authz runs before the router,
      so route-level host or prefix rewrites have not happened yet.
    - path: `:path` as ext_authz sees it: after Envoy's own normalisation (`normalize_path`,
      `merge_slashes`), which `normalise_uri(merge_slashes=True)` applies to `htu` as well.
    """
    forwarded = headers.get("x-forwarded-proto") or headers.get(":scheme") or "http"
    scheme = forwarded.split(",", 1)[0].strip().lower()
    return f"{scheme}://{authority}{path}"


# --- nonces -------------------------------------------------------------------------------


class NonceKeys:
    """The HMAC keys of server nonces: the first signs, every one verifies (for rotation).

    From a file (a mounted Kubernetes Secret): one key per non-empty line, at least
    MIN_NONCE_KEY_BYTES bytes each. `generate()` makes a random key for one process only:
    nonces from it are not accepted by any other replica.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one nonce key is needed")
        for key in keys:
            if len(key) < MIN_NONCE_KEY_BYTES:
                raise ValueError(f"a DPoP nonce key must be at least {MIN_NONCE_KEY_BYTES} bytes")
        self.keys = tuple(keys)

    @classmethod
    def from_file(cls, path: str | Path) -> NonceKeys:
        lines = Path(path).read_bytes().splitlines()
        return cls([line.strip() for line in lines if line.strip()])

    @classmethod
    def generate(cls) -> NonceKeys:
        return cls([secrets.token_bytes(MIN_NONCE_KEY_BYTES)])


class NonceIssuer:
    """Stateless server nonces (RFC 9449 §9) for one McpServer.

    A nonce is base64url(window || HMAC-SHA256(key, label || server || window)[:16]), where
    `window` is the current `lifetime`-second slot of wall-clock time (8 bytes). It is valid in
    its own slot and the next one (so for `lifetime` to 2 x `lifetime` seconds), and one slot
    early, which absorbs clock differences between replicas.
    """

    def __init__(
        self, keys: NonceKeys, server: str, lifetime: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._server = server.encode("utf-8")
        self._lifetime = lifetime
        self._clock = clock

    def _mac(self, key: bytes, window: int) -> bytes:
        message = NONCE_LABEL + self._server + b"\x00" + struct.pack(">q", window)
        return hmac.new(key, message, hashlib.sha256).digest()[:16]

    def _window(self) -> int:
        return math.floor(self._clock() / self._lifetime)

    def issue(self) -> str:
        window = self._window()
        return _b64url_encode(struct.pack(">q", window) + self._mac(self._keys.keys[0], window))

    def current(self, nonce: str) -> bool:
        """Whether `nonce` is the one `issue()` gives now (else a valid nonce is about to expire)."""
        return hmac.compare_digest(nonce, self.issue())

    def valid(self, nonce: str) -> bool:
        try:
            raw = b64url_decode(nonce) if len(nonce) == 32 else b""
        except ValueError:
            return False
        if len(raw) != 24:
            return False
        (window,) = struct.unpack(">q", raw[:8])
        if not -1 <= self._window() - window <= 1:
            return False
        return any(hmac.compare_digest(raw[8:], self._mac(key, window)) for key in self._keys.keys)


# --- replay -------------------------------------------------------------------------------


class ReplayCache:
    """`jti`s seen recently, process-wide, by SHA-256 of (server, jti): never the jti itself.

    `first_use` is an atomic check-and-record. Entries expire when their proof could no longer
    pass the `iat` check; at `max_entries` the oldest entry is evicted (and counted).
    """

    def __init__(
        self, max_entries: int = DEFAULT_REPLAY_ENTRIES, *, clock: Callable[[], float] = time.monotonic
    ):
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, server: str, jti: str, ttl: float) -> bool:
        digest = hashlib.sha256(f"{server}\x00{jti}".encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        with self._lock:
            entries = self._entries
            while entries:  # insertion order is (nearly) expiry order: prune from the front
                oldest, expiry = next(iter(entries.items()))
                if expiry > now:
                    break
                del entries[oldest]
            seen_until = entries.get(digest)
            if seen_until is not None and seen_until > now:
                return False
            if len(entries) >= self._max:
                entries.popitem(last=False)
                metrics.DPOP_REPLAY_EVICTIONS.inc()
            entries[digest] = now + ttl
            return True

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class DpopRuntime:
    """What DPoP needs beyond one bundle: shared by every verifier of the process and kept
    across bundle swaps (a swap must not forget which proofs were already used)."""

    nonce_keys: NonceKeys
    replay: ReplayCache

    @classmethod
    def single_process(cls) -> DpopRuntime:
        """A random nonce key: right for one process (tests, the demo), not for N replicas."""
        return cls(NonceKeys.generate(), ReplayCache())


# --- the proof ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    """A verified proof: its key's thumbprint and public members (for `context.cnf`), and the
    nonce to hand the client with the response when its own is from the previous window
    (RFC 9449 §9: a server may supply a new nonce on any response), so an active client is
    never refused for an expired nonce."""

    jkt: str
    jwk: Mapping[str, str]
    alg: str
    next_nonce: str | None = None

    def confirmation(self) -> dict[str, Any]:
        """`context.cnf` of the AuthZEN request: what a policy may require of a bound token."""
        return {"jkt": self.jkt, "jwk": dict(self.jwk), "alg": self.alg}


@dataclass(frozen=True)
class _Header:
    """A proof header that passed its checks: what verifying a proof under it needs."""

    alg: str
    verifier: Verifier
    thumbprint: str
    members: Mapping[str, str]


def _malformed() -> ProofRejected:
    return _invalid_proof("DPoP proof is not canonical base64url over strict JSON", "malformed")


_MISSING: Final = object()
# Never acceptable whatever the allowlist says: no signature, or a MAC (RFC 9449 §11.6).
_NOT_ASYMMETRIC: Final = frozenset({"none", "HS256", "HS384", "HS512"})


class DpopVerifier:
    """Checks DPoP proofs for one McpServer (its `spec.dpop`). Thread-safe.

    `clock` is wall-clock time (for `iat` and nonce windows).
    """

    def __init__(
        self,
        server: str,
        config: Dpop,
        runtime: DpopRuntime,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self._allowed = frozenset(config.algorithms)
        self.max_age = float(config.max_age)
        self._future = min(FUTURE_SKEW, self.max_age)
        self._replay = runtime.replay
        self._clock = clock
        # Successful header parses only (lru_cache keeps no exceptions); thread-safe.
        self._header = functools.lru_cache(maxsize=HEADER_CACHE_SIZE)(self._parse_header)
        self._nonces = (
            NonceIssuer(runtime.nonce_keys, server, self.max_age, clock=clock)
            if config.nonce.enabled
            else None
        )

    def verify(
        self,
        proof_header: str | None,
        *,
        method: str,
        uri: str,
        token: str,
        jkt: str | None,
    ) -> Proof:
        """The verified proof of a request presenting `token` with the DPoP scheme, or
        ProofRejected. `proof_header` is the `DPoP` header as Envoy hands it over (repeated
        headers joined by ","), `uri` the request URI (`request_uri`), `jkt` the token's
        `cnf.jkt` (None when the token has none)."""
        claims, header = self._parse(proof_header)
        next_nonce = self._check_claims(claims, method=method, uri=uri, token=token)
        thumbprint = header.thumbprint
        if jkt is None:
            raise ProofRejected(
                "invalid_token", "the access token is not DPoP-bound (no cnf.jkt)", reason="dpop-unbound"
            )
        if not hmac.compare_digest(jkt, thumbprint):
            raise ProofRejected("invalid_token", "Invalid DPoP key binding", reason="dpop-binding")
        if not self._replay.first_use(self.server, claims["jti"], self.max_age + self._future):
            raise _invalid_proof("DPoP proof replayed (jti already used)", "replay")
        return Proof(thumbprint, header.members, header.alg, next_nonce)

    def _parse(self, proof_header: str | None) -> tuple[dict[str, Any], _Header]:
        if proof_header is None or not proof_header.strip():
            raise _invalid_proof("no DPoP proof (DPoP header) with a DPoP-bound token", "missing")
        if len(proof_header) > MAX_PROOF_CHARS:
            raise _invalid_proof(f"DPoP proof larger than {MAX_PROOF_CHARS} characters", "too-large")
        if "," in proof_header:  # a JWS has no ","; Envoy joins repeated headers with one
            raise _invalid_proof("more than one DPoP header", "duplicate-header")
        proof = proof_header.strip()
        if not _PROOF_CHARS.fullmatch(proof):
            raise _invalid_proof("DPoP proof is not one compact JWS", "malformed")
        header_part, payload_part, signature_part = proof.split(".")
        header = self._header(header_part)
        try:
            claims = strictjson.loads(b64url_decode(payload_part), max_depth=MAX_PROOF_JSON_DEPTH)
            signature = b64url_decode(signature_part)
        except (ValueError, strictjson.JsonRejected):
            raise _malformed() from None
        if not isinstance(claims, dict):
            raise _invalid_proof("DPoP proof header and claims must be JSON objects", "malformed")
        if not header.verifier(f"{header_part}.{payload_part}".encode("ascii"), signature):
            raise _invalid_proof("DPoP proof signature invalid", "signature")
        return claims, header

    def _parse_header(self, header_part: str) -> _Header:
        """Checks 4, 5 and 7 and the key; cached by the header's text (`_header`), because a
        client signs every proof with the same key and header: parsing a public key costs
        about a third of verifying the signature."""
        try:
            header = strictjson.loads(b64url_decode(header_part), max_depth=MAX_PROOF_JSON_DEPTH)
        except (ValueError, strictjson.JsonRejected):
            raise _malformed() from None
        if not isinstance(header, dict):
            raise _invalid_proof("DPoP proof header and claims must be JSON objects", "malformed")
        if header.get("typ") != PROOF_TYPE:
            raise _invalid_proof(f"DPoP proof type (typ) is not {PROOF_TYPE}", "type")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            if alg in _NOT_ASYMMETRIC:
                raise _invalid_proof(
                    f"DPoP proof algorithm {alg} is never accepted (not asymmetric)", "algorithm"
                )
            shown = alg if isinstance(alg, str) and alg in KNOWN_ALGORITHMS else "in the proof header"
            raise _invalid_proof(f"DPoP proof algorithm {shown} not allowed", "algorithm")
        if "crit" in header:
            raise _invalid_proof(
                "DPoP proof header has critical parameters (crit), none are supported", "header"
            )
        key_jwk = header.get("jwk")
        if not isinstance(key_jwk, dict):
            raise _invalid_proof("DPoP proof header has no public key (jwk)", "key")
        if PRIVATE_MEMBERS & key_jwk.keys():
            raise _invalid_proof("DPoP proof key (jwk) carries private key material", "private-key")
        try:
            key = parse_jwk(key_jwk)
        except JwkIgnored as error:
            raise _invalid_proof(f"DPoP proof key (jwk) is not usable: {error}", "key") from None
        verifier = key.verifiers.get(alg)
        if verifier is None:
            raise _invalid_proof(f"DPoP proof key (jwk) cannot be used with {alg}", "algorithm")
        members = {name: key_jwk[name] for name in _REQUIRED_MEMBERS[key_jwk["kty"]]}
        return _Header(alg, verifier, jwk_thumbprint(key_jwk), members)

    def _check_claims(self, claims: dict[str, Any], *, method: str, uri: str, token: str) -> str | None:
        """Checks 3 and 8 to 12 but the key binding; the nonce to send next, if any."""
        for name in ("jti", "htm", "htu", "ath"):
            value = claims.get(name, _MISSING)
            if value is _MISSING:
                raise _invalid_proof(f"DPoP proof has no {name} claim", "claims")
            if not isinstance(value, str) or not value:
                raise _invalid_proof(f"DPoP proof claim {name} is not a non-empty string", "claims")
        if len(claims["jti"]) > MAX_JTI_CHARS:
            raise _invalid_proof(f"DPoP proof jti longer than {MAX_JTI_CHARS} characters", "claims")
        iat = claims.get("iat", _MISSING)
        if iat is _MISSING:
            raise _invalid_proof("DPoP proof has no iat claim", "claims")
        if type(iat) not in (int, float) or not math.isfinite(iat):
            raise _invalid_proof("DPoP proof claim iat is not a finite number", "claims")
        if claims["htm"] != method:
            raise _invalid_proof("DPoP proof htm does not match the request method", "htm")
        htu = claims["htu"]
        if "?" in htu or "#" in htu:
            raise _invalid_proof("DPoP proof htu carries a query or fragment", "htu")
        try:
            matches = normalise_uri(htu, merge_slashes=True) == normalise_uri(uri, merge_slashes=True)
        except UriRejected:
            matches = False
        if not matches:
            raise _invalid_proof("DPoP proof htu does not match the request URI", "htu")
        next_nonce = self._check_nonce(claims)
        now = self._clock()
        if iat < now - self.max_age:
            raise _invalid_proof(f"DPoP proof is older than {int(self.max_age)} seconds (iat)", "stale")
        if iat > now + self._future:
            raise _invalid_proof("DPoP proof issued in the future (iat)", "future")
        if not hmac.compare_digest(
            claims["ath"].encode("ascii", "replace"), access_token_hash(token).encode()
        ):
            raise _invalid_proof("DPoP proof ath does not match the access token", "ath")
        return next_nonce

    def _check_nonce(self, claims: dict[str, Any]) -> str | None:
        """None when no nonce is needed or the proof's is current; a fresh one when the proof's
        is valid but from the previous window; ProofRejected when it is missing or invalid."""
        if self._nonces is None:
            return None
        nonce = claims.get("nonce")
        if nonce is None:
            problem = "Resource server requires nonce in DPoP proof"
        elif not isinstance(nonce, str) or not self._nonces.valid(nonce):
            problem = "DPoP proof nonce is invalid or expired"
        else:
            return None if self._nonces.current(nonce) else self._nonces.issue()
        raise ProofRejected("use_dpop_nonce", problem, reason="dpop-nonce", nonce=self._nonces.issue())
