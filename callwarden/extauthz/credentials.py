"""Layer 1 as a whole: which credential a request presents, and whether this server takes it.

`spec.dpop.mode` decides what is accepted:

| mode       | `Bearer <token>`            | `DPoP <token>` + one `DPoP` proof | challenge (401)          |
|------------|-----------------------------|-----------------------------------|--------------------------|
| disabled   | yes                         | no (invalid_request)              | `Bearer`                 |
| allowed    | yes                         | yes                               | `Bearer, DPoP algs="…"`  |
| required   | no (invalid_token)          | yes                               | `DPoP algs="…"`          |

In every mode a token bound to a key (`cnf.jkt`) is refused as `Bearer`: accepting it would
turn a sender-constrained token back into a bearer one (RFC 9449 §7.2). A DPoP request is
accepted only with a bound token whose `cnf.jkt` is the thumbprint of the proof key; the
proof's key then goes into every AuthZEN request of the call as `context.cnf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callwarden.extauthz.challenge import TokenRejected, dpop_www_authenticate, www_authenticate
from callwarden.extauthz.dpop import DpopVerifier, ProofRejected, request_uri
from callwarden.extauthz.token import TokenValidator, split_authorization
from callwarden.policy.model import Dpop

DPOP_HEADER = "dpop"
DPOP_NONCE_HEADER = "dpop-nonce"


@dataclass(frozen=True)
class Authenticated:
    """Validated claims, `context.cnf` when the request proved possession of the token's key,
    and headers for the client's response (a fresh `DPoP-Nonce` before the client's expires)."""

    claims: dict[str, Any]
    cnf: dict[str, Any] | None = None
    response_headers: Mapping[str, str] = field(default_factory=dict)


class Unauthenticated(Exception):
    """Answer 401 with `headers` (`WWW-Authenticate`, and `DPoP-Nonce` when one is needed)."""

    def __init__(self, description: str, reason: str, headers: dict[str, str]) -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason
        self.headers = headers


def _bound_key(claims: Mapping[str, Any]) -> str | None:
    """The token's `cnf.jkt`, None when it has none; TokenRejected when `cnf` is malformed."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, dict):
        raise TokenRejected("invalid_token", "token confirmation (cnf) is not an object", reason="claims")
    if "jkt" not in cnf:
        return None  # another confirmation method (e.g. mTLS x5t#S256): not a DPoP binding
    jkt = cnf["jkt"]
    if not isinstance(jkt, str) or not jkt:
        raise TokenRejected("invalid_token", "token confirmation (cnf.jkt) is not a string", reason="claims")
    return jkt


def _refuse_bound_bearer(claims: Mapping[str, Any]) -> None:
    if _bound_key(claims) is not None:
        raise TokenRejected(
            "invalid_token",
            "the token is DPoP-bound (cnf.jkt): present it as 'Authorization: DPoP' with a DPoP proof",
            reason="dpop-bound-bearer",
        )


class Authenticator:
    """Layer 1 for one McpServer: the token (TokenValidator) and, by its mode, the DPoP proof."""

    def __init__(
        self, validator: TokenValidator, dpop: DpopVerifier, config: Dpop, resource_metadata_url: str
    ) -> None:
        self.validator = validator
        self._dpop = dpop
        self._mode = config.mode
        self._algorithms = tuple(config.algorithms)
        self._metadata_url = resource_metadata_url

    def authenticate(
        self, headers: Mapping[str, str], *, method: str, authority: str, path: str
    ) -> Authenticated:
        """The request's validated credentials, or Unauthenticated. `headers` have lowercase
        names (Envoy's view), repeated headers joined by ","."""
        authorization = headers.get("authorization")
        if self._mode == "disabled":
            try:
                claims = self.validator.validate(authorization)
                _refuse_bound_bearer(claims)
            except TokenRejected as rejected:
                challenge = www_authenticate(self._metadata_url, rejected)
                raise Unauthenticated(
                    rejected.description, rejected.reason, {"www-authenticate": challenge}
                ) from None
            return Authenticated(claims)
        scheme = ""  # not known yet: the error then goes on the first scheme offered
        try:
            scheme, token = split_authorization(authorization)
            if scheme == "bearer":
                return self._bearer(token)
            if scheme != "dpop":
                raise TokenRejected("invalid_request", "unsupported authorization scheme", reason="scheme")
            return self._proven(headers, token, method=method, uri=request_uri(headers, authority, path))
        except TokenRejected as rejected:
            raise self._unauthenticated(
                scheme, rejected.error, rejected.description, rejected.reason
            ) from None
        except ProofRejected as refused:
            unauthenticated = self._unauthenticated(
                "dpop", refused.error, refused.description, refused.reason
            )
            if refused.nonce is not None:
                unauthenticated.headers[DPOP_NONCE_HEADER] = refused.nonce
            raise unauthenticated from None

    def token_claims(self, authorization: str | None) -> dict[str, Any]:
        """The validated claims of a request ext_authz already allowed (ext_proc, which sees the
        same request again): the token however this server accepts it, the proof not checked
        again (it was, and a proof is good once: a second check would call it a replay)."""
        scheme, token = split_authorization(authorization)
        if scheme == "bearer" or (scheme == "dpop" and self._mode != "disabled"):
            return self.validator.validate_token(token)
        raise TokenRejected("invalid_request", "unsupported authorization scheme", reason="scheme")

    def _bearer(self, token: str) -> Authenticated:
        if self._mode == "required":
            raise TokenRejected(
                "invalid_token",
                "this server accepts only DPoP-bound tokens ('Authorization: DPoP' with a DPoP proof)",
                reason="dpop-required",
            )
        claims = self.validator.validate_token(token)
        _refuse_bound_bearer(claims)
        return Authenticated(claims)

    def _proven(self, headers: Mapping[str, str], token: str, *, method: str, uri: str) -> Authenticated:
        claims = self.validator.validate_token(token)
        proof = self._dpop.verify(
            headers.get(DPOP_HEADER), method=method, uri=uri, token=token, jkt=_bound_key(claims)
        )
        fresh = {} if proof.next_nonce is None else {DPOP_NONCE_HEADER: proof.next_nonce}
        return Authenticated(claims, proof.confirmation(), fresh)

    def _unauthenticated(
        self, attempted: str, error: str | None, description: str, reason: str
    ) -> Unauthenticated:
        challenge = dpop_www_authenticate(
            self._metadata_url,
            algorithms=self._algorithms,
            offer_bearer=self._mode == "allowed",
            attempted=attempted if attempted in ("bearer", "dpop") else "bearer",
            error=error,
            description=description,
        )
        return Unauthenticated(description, reason, {"www-authenticate": challenge})
