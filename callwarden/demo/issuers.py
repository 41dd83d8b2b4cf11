"""Local OAuth issuers for the demo and the tests: keys generated at start, JWKS over loopback HTTP.

Each issuer signs RFC 9068-style access tokens (`typ: at+jwt`) with its own key, RS256 or ES256, and
serves `/jwks.json` and `/.well-known/openid-configuration`. The compact-JWS signer is written here
on `cryptography` (PyJWT is a dev dependency only): base64url without padding, RS256 as
RSASSA-PKCS1-v1_5 with SHA-256, ES256 as the 64-byte r||s form JWS requires (RFC 7518 §3.4), not the
DER that `cryptography` returns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

Algorithm = Literal["RS256", "ES256"]

JWKS_PATH: Final = "/jwks.json"
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True)
class IssuerSpec:
    issuer: str
    algorithm: Algorithm
    port: int


# Finance and workflow sign with RSA, documents with EC, so the demo exercises both algorithms.
DEFAULT_ISSUERS: Final[Mapping[str, IssuerSpec]] = {
    "finance": IssuerSpec("https://issuer.finance.board.example", "RS256", 9111),
    "documents": IssuerSpec("https://issuer.documents.board.example", "ES256", 9112),
    "workflow": IssuerSpec("https://issuer.workflow.board.example", "RS256", 9113),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, length: int | None = None) -> str:
    """A JWK integer: big-endian, minimal length unless the curve fixes it (RFC 7518 §6.2.1.2)."""
    return b64url(value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big"))


def jwk_thumbprint(required_members: Mapping[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint: over the key type's required members, sorted, no whitespace."""
    canonical = json.dumps(dict(required_members), sort_keys=True, separators=(",", ":")).encode()
    return b64url(hashlib.sha256(canonical).digest())


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningKey:
    """One private key, its JWK `kid` (the RFC 7638 thumbprint) and its JWS algorithm."""

    def __init__(
        self, algorithm: Algorithm, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    ) -> None:
        self.algorithm = algorithm
        self._private_key = private_key
        self.public_jwk = self._public_members()
        self.kid = jwk_thumbprint(self.public_jwk)

    @classmethod
    def generate(cls, algorithm: Algorithm) -> SigningKey:
        if algorithm == "RS256":
            return cls(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(algorithm, ec.generate_private_key(ec.SECP256R1()))

    def _public_members(self) -> dict[str, str]:
        key = self._private_key
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.public_key().public_numbers()
            return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
        point = key.public_key().public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}

    def jwk(self) -> dict[str, str]:
        """The public JWK as published in a JWKS."""
        return {**self.public_jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def sign(self, signing_input: bytes) -> bytes:
        key = self._private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def encode_jws(header: Mapping[str, Any], claims: Mapping[str, Any], key: SigningKey) -> str:
    """Compact JWS `header.payload.signature`; the header is used as given (tests forge with it)."""
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    return signing_input + "." + b64url(key.sign(signing_input.encode("ascii")))


class LocalIssuer:
    """An issuer: mints access tokens and publishes its keys once `RunningIssuers` serves it."""

    def __init__(self, name: str, issuer: str, algorithm: Algorithm) -> None:
        self.name = name
        self.issuer = issuer
        self.algorithm = algorithm
        self.base_url = ""  # set when served
        self._fetch_lock = threading.Lock()
        self._jwks_fetches = 0
        # Published keys, current signer first. Replaced whole, never mutated, so the HTTP thread
        # always reads a consistent list.
        self._keys: tuple[SigningKey, ...] = (SigningKey.generate(algorithm),)

    @property
    def key(self) -> SigningKey:
        """The key new tokens are signed with."""
        return self._keys[0]

    @property
    def jwks_fetches(self) -> int:
        """How many times /jwks.json was served: lets tests observe a verifier's caching."""
        return self._jwks_fetches

    def count_jwks_fetch(self) -> None:
        with self._fetch_lock:
            self._jwks_fetches += 1

    @property
    def jwks_uri(self) -> str:
        return self.base_url + JWKS_PATH

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self._keys]}

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": [self.algorithm],
        }

    def rotate_key(self, *, keep_previous: bool = True) -> SigningKey:
        """Sign with a fresh key from now on; keep publishing the old one unless told not to."""
        fresh = SigningKey.generate(self.algorithm)
        self._keys = (fresh, *self._keys) if keep_previous else (fresh,)
        return fresh

    def mint(
        self,
        sub: str,
        aud: str | Sequence[str],
        client_id: str,
        *,
        roles: Sequence[str] | None = None,
        act: Mapping[str, Any] | None = None,
        ttl: int = 300,
        extra: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """An access token from this issuer.

        `act` is the RFC 8693 actor claim as nested objects (`{"sub": ..., "act": {...}}`). `extra`
        claims are applied last and may override the standard ones (an expired `exp`, a wrong `iss`);
        `header` members likewise override `alg`/`kid`/`typ`. A negative `ttl` mints an expired token.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud if isinstance(aud, str) else list(aud),
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
        }
        if roles is not None:
            claims["roles"] = list(roles)
        if act is not None:
            claims["act"] = dict(act)
        claims.update(extra or {})
        key = self.key
        jws_header = {"alg": key.algorithm, "kid": key.kid, "typ": "at+jwt", **(header or {})}
        return encode_jws(jws_header, claims, key)


class _IssuerHandler(BaseHTTPRequestHandler):
    issuer: LocalIssuer  # set on the per-issuer subclass

    def do_GET(self) -> None:
        if self.path == JWKS_PATH:
            self.issuer.count_jwks_fetch()
            self._json(200, self.issuer.jwks())
        elif self.path == DISCOVERY_PATH:
            self._json(200, self.issuer.openid_configuration())
        else:
            self._json(404, {"error": "not_found"})

    def _json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=300")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo's output is the gateway's decisions, not JWKS fetches."""


class RunningIssuers:
    """Issuers serving their keys on loopback, each from its own thread. A context manager."""

    def __init__(self, issuers: Mapping[str, tuple[LocalIssuer, int]]) -> None:
        self._issuers: dict[str, LocalIssuer] = {}
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        try:
            for name, (issuer, port) in issuers.items():
                handler = type(f"{name}IssuerHandler", (_IssuerHandler,), {"issuer": issuer})
                server = ThreadingHTTPServer((LOOPBACK, port), handler)
                server.daemon_threads = True
                self._servers.append(server)
                issuer.base_url = f"http://{LOOPBACK}:{server.server_address[1]}"
                self._issuers[name] = issuer
        except OSError:
            self.stop()
            raise
        for server in self._servers:
            # A short poll makes stop() (and so every test's teardown) quick.
            thread = threading.Thread(
                target=server.serve_forever, args=(0.05,), name="demo-issuer", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def __getitem__(self, name: str) -> LocalIssuer:
        return self._issuers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._issuers)

    def stop(self) -> None:
        for server, thread in zip(self._servers, self._threads, strict=False):
            server.shutdown()
            thread.join(timeout=5)
        for server in self._servers:
            server.server_close()

    def __enter__(self) -> RunningIssuers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_issuers(ports: Mapping[str, int] | None = None) -> RunningIssuers:
    """Start demo issuers on loopback: all three on 9111-9113 by default.

    `ports` names the issuers to start and their ports (0 picks a free port), e.g. `{"documents": 0}`.
    Keys are generated here, so each start publishes new keys.
    """
    wanted = {name: spec.port for name, spec in DEFAULT_ISSUERS.items()} if ports is None else ports
    unknown = sorted(set(wanted) - set(DEFAULT_ISSUERS))
    if unknown:
        raise ValueError(f"unknown demo issuers {unknown}; known: {sorted(DEFAULT_ISSUERS)}")
    return RunningIssuers(
        {
            name: (LocalIssuer(name, DEFAULT_ISSUERS[name].issuer, DEFAULT_ISSUERS[name].algorithm), port)
            for name, port in wanted.items()
        }
    )
