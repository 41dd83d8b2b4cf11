"""DPoP proofs for tests: a client key and proofs with every member under the test's control.

    key = ProofKey()                                   # EC P-256, ES256
    proof = key.proof("POST", "http://finance.board.example/mcp", token)
    forged = key.proof("POST", uri, token, claims={"htm": "GET"}, header={"typ": OMIT})

Signatures are made with `cryptography` directly (tests.support.issuer.sign), so a test can
sign with any algorithm (HS256 with a shared secret, `none`) and any header it likes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from tests.support.issuer import OMIT, PrivateKey, _default_alg, compact, new_key, public_jwk

_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638, written out here independently of callwarden's own."""
    members = {name: jwk[name] for name in _REQUIRED[jwk["kty"]]}
    return b64url(
        hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    )


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def _merged(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = {**base, **(overrides or {})}
    return {name: value for name, value in merged.items() if value is not OMIT}


class ProofKey:
    """A DPoP client key ("ec" P-256, "rsa" 2048, "ed" Ed25519)."""

    def __init__(self, kind: str = "ec") -> None:
        self.private: PrivateKey = new_key(kind)
        self.alg = _default_alg(self.private)
        self.jwk = public_jwk(None, self.private)
        self.jkt = thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        uri: str,
        token: str | None,
        *,
        nonce: str | None = None,
        iat: float | None = None,
        header: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        sign_with: Any = OMIT,
    ) -> str:
        """A proof for one request; `header`/`claims` override members (OMIT removes one),
        `sign_with` signs with another key (bytes: HMAC, None: no signature)."""
        jose = _merged({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}, header)
        body: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": uri,
            "iat": int(time.time()) if iat is None else iat,
        }
        if token is not None:
            body["ath"] = ath(token)
        if nonce is not None:
            body["nonce"] = nonce
        body = _merged(body, claims)
        signer = self.private if sign_with is OMIT else sign_with
        alg = str(jose.get("alg", self.alg))
        return compact(json.dumps(jose).encode(), json.dumps(body).encode(), signer, alg)
