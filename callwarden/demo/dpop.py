"""The demo agent's side of DPoP (RFC 9449): its proof key, and an httpx2 auth flow that signs
a fresh proof for every request and retries once when the server asks for a nonce.

    key = DpopKey.generate()
    token = issuer.mint(..., extra={"cnf": {"jkt": key.jkt}})      # bound to the key
    client = httpx2.AsyncClient(auth=DpopAuth(token, key))

The proof's `htu` is the URI as the client addresses it: the `Host` header when one is set
(the demo reaches every McpServer through one loopback listener, routed by Host), the URL's
authority otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Generator

import httpx2

from callwarden.demo.issuers import SigningKey, encode_jws

PROOF_TYPE = "dpop+jwt"


class DpopKey:
    """An ES256 (P-256) proof key; `jkt` is its RFC 7638 thumbprint, what a bound token names."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.jkt = key.kid  # SigningKey's kid is the RFC 7638 thumbprint of its public JWK

    @classmethod
    def generate(cls) -> DpopKey:
        return cls(SigningKey.generate("ES256"))

    def proof(self, method: str, uri: str, token: str, nonce: str | None = None) -> str:
        """A proof for one request presenting `token` (`uri` without query or fragment)."""
        claims: dict[str, str | int] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": uri,
            "iat": int(time.time()),
            "ath": base64.urlsafe_b64encode(hashlib.sha256(token.encode("ascii")).digest())
            .rstrip(b"=")
            .decode("ascii"),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": PROOF_TYPE, "alg": "ES256", "jwk": self._key.public_jwk}
        return encode_jws(header, claims, self._key)


def _htu(request: httpx2.Request) -> str:
    authority = request.headers.get("host") or request.url.netloc.decode("ascii")
    return f"{request.url.scheme}://{authority}{request.url.path}"


def _asks_for_nonce(response: httpx2.Response) -> bool:
    return (
        response.status_code == 401
        and "dpop-nonce" in response.headers
        and 'error="use_dpop_nonce"' in response.headers.get("www-authenticate", "")
    )


class DpopAuth(httpx2.Auth):
    """`Authorization: DPoP <token>` and a fresh `DPoP` proof on every request.

    The server's latest `DPoP-Nonce` goes into every later proof; a 401 `use_dpop_nonce` is
    retried once with the nonce it carried (RFC 9449 §9), never more, so a server that keeps
    refusing cannot make the client loop.
    """

    def __init__(self, token: str, key: DpopKey) -> None:
        self._token = token
        self._key = key
        self._nonce: str | None = None

    def _sign(self, request: httpx2.Request) -> httpx2.Request:
        request.headers["Authorization"] = f"DPoP {self._token}"
        request.headers["DPoP"] = self._key.proof(request.method, _htu(request), self._token, self._nonce)
        return request

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        response = yield self._sign(request)
        if "dpop-nonce" in response.headers:
            self._nonce = response.headers["dpop-nonce"]
        if _asks_for_nonce(response):
            yield self._sign(request)
