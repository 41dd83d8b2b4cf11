"""A tiny OAuth issuer for tests: real keys, a real JWKS endpoint on loopback, real signatures.

    issuer = LocalIssuer()                 # RSA-2048 "rsa-1", EC P-256 "ec-1", Ed25519 "ed-1"
    token = issuer.mint(aud="https://mcp.example.com/mcp")
    issuer.stop(); issuer.start()          # an outage, then recovery on the same port
    issuer.rotate("rsa", drop="rsa-1")     # a new key appears (and an old one may leave)
    issuer.fetches                         # how many times /jwks.json was requested

Tokens are minted with `cryptography` directly, so a test controls every byte: any header,
any claims, raw JSON segments (duplicate members, NaN...), any signature.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from callwarden.policy.model import McpServer

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
OMIT: Final = object()
"""Pass as a header or claim value to leave that member out."""

_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_EC_SIZES = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


def public_jwk(kid: str | None, key: PrivateKey, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key (plus any extra members, e.g. alg, use, d)."""
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        point = key.public_key().public_numbers()
        size = _EC_SIZES[key.curve.name]
        jwk = {
            "kty": "EC",
            "crv": _CURVE_NAMES[key.curve.name],
            "x": _uint(point.x, size),
            "y": _uint(point.y, size),
        }
    else:
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def sign(key: PrivateKey | bytes | None, alg: str, signing_input: bytes) -> bytes:
    """A JWS signature: RSA (RS*/PS*), ECDSA as R||S (ES*), Ed25519, HMAC with raw bytes, or none."""
    if key is None:
        return b""
    if isinstance(key, bytes):
        return hmac.new(key, signing_input, getattr(hashlib, "sha" + alg[2:])).digest()
    if isinstance(key, rsa.RSAPrivateKey):
        digest = _HASHES[alg[2:]]
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            return key.sign(signing_input, pss, digest)
        return key.sign(signing_input, padding.PKCS1v15(), digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = _EC_SIZES[key.curve.name]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASHES[alg[2:]])))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(signing_input)


def compact(header: bytes, payload: bytes, key: PrivateKey | bytes | None, alg: str) -> str:
    """A compact JWS over raw JSON segments (so tests can send any bytes at all)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    return f"{signing_input}.{b64url(sign(key, alg, signing_input.encode('ascii')))}"


def new_key(kind: str) -> PrivateKey:
    """A fresh signing key: "rsa" (2048 bits), "ec" (P-256) or "ed" (Ed25519)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    assert kind == "ed"
    return ed25519.Ed25519PrivateKey.generate()


def _default_alg(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA"


class ManualClock:
    """A clock tests move by hand; use one for wall time and one for the JWKS store."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LocalIssuer:
    """An authorization server's signing side: keys, a JWKS endpoint, and a token minter."""

    def __init__(self, *, name: str = "issuer", clock: ManualClock | None = None) -> None:
        self.name = name
        self.clock = clock
        self.keys: dict[str, PrivateKey] = {f"{name}-{kind}-1": new_key(kind) for kind in ("rsa", "ec", "ed")}
        self.published: list[str] = list(self.keys)
        self.body: bytes | None = None  # served instead of the JWKS when set
        self.status = 200
        self.delay = 0.0  # seconds before answering
        self.extra_headers: dict[str, str] = {}
        self.declare_length = True  # False: no content-length, the body ends when the connection closes
        self._fetches = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    # --- the JWKS endpoint ---

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}"

    @property
    def jwks_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}/jwks.json"

    @property
    def fetches(self) -> int:
        with self._lock:
            return self._fetches

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(kid, self.keys[kid]) for kid in self.published]}

    def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        assert self._server is None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != f"/{outer.name}/jwks.json":
                    self.send_error(404)
                    return
                with outer._lock:
                    outer._fetches += 1
                if outer.delay:
                    time.sleep(outer.delay)
                body = outer.body if outer.body is not None else json.dumps(outer.jwks()).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                if outer.declare_length:
                    self.send_header("content-length", str(len(body)))
                for name, value in outer.extra_headers.items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # the store hung up on a slow or huge answer
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        serve = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"issuer-{self.name}", daemon=True
        )
        serve.start()
        self._server = server

    def stop(self) -> None:
        """Stop listening: fetches get connection refused until `start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def rotate(self, kind: str = "rsa", *, drop: str | None = None) -> str:
        """Publish a new key of that kind ("rsa", "ec", "ed"); optionally retire one. Returns its kid."""
        kid = f"{self.name}-{kind}-{len(self.keys) + 1}"
        self.keys[kid] = new_key(kind)
        self.published.append(kid)
        if drop is not None:
            self.published.remove(drop)
        return kid

    # --- tokens ---

    def kid(self, kind: str = "rsa") -> str:
        """The first published kid of that kind."""
        return next(kid for kid in self.published if kid.split("-")[-2] == kind)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock() if self.clock is not None else time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": "https://mcp.example.com/mcp",
            "exp": now + 300,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "client_id": "agent-1",
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def mint(
        self,
        *,
        kid: str | None = None,
        alg: str | None = None,
        key: Any = OMIT,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed token. Defaults: the RSA key, its natural alg, typ at+jwt, fresh claims.
        `key` overrides the signing key (bytes: HMAC secret, None: no signature)."""
        kid = kid or self.kid("rsa")
        signing_key: PrivateKey | bytes | None = self.keys[kid] if key is OMIT else key
        if alg is None:
            assert signing_key is not None and not isinstance(signing_key, bytes)
            alg = _default_alg(signing_key)
        full_header: dict[str, Any] = {"alg": alg, "typ": "at+jwt", "kid": kid}
        full_header.update(header or {})
        full_header = {name: value for name, value in full_header.items() if value is not OMIT}
        payload = self.claims(**claims)
        return compact(json.dumps(full_header).encode(), json.dumps(payload).encode(), signing_key, alg)

    def mint_raw(self, header: bytes, payload: bytes, *, kid: str | None = None, alg: str = "RS256") -> str:
        """A token over exactly these JSON bytes, signed with a published key."""
        return compact(header, payload, self.keys[kid or self.kid("rsa")], alg)


def mcp_server(
    *issuers: LocalIssuer,
    resource: str = "https://mcp.example.com/mcp",
    algorithms: list[str] | None = None,
    audiences: list[str] | None = None,
    leeway_seconds: int = 30,
) -> McpServer:
    """An McpServer trusting these issuers (same algorithms, audiences and leeway for each)."""
    return McpServer.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "McpServer",
            "metadata": {"name": "finance", "namespace": "tests"},
            "spec": {
                "resource": resource,
                "issuers": [
                    {
                        "issuer": issuer.issuer,
                        "jwksUri": issuer.jwks_uri,
                        "algorithms": algorithms or ["RS256", "ES256"],
                        "audiences": audiences or [],
                        "leewaySeconds": leeway_seconds,
                    }
                    for issuer in issuers
                ],
            },
        }
    )
