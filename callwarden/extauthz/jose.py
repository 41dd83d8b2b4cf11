"""JOSE, the project's one path for it: base64url, JWKs and JWS signatures, on `cryptography`.

Everything that turns JOSE bytes into keys or checks a signature lives here, so that a second
use (DPoP proofs, a JWS an approval is signed with) reuses the same strict rules instead of
growing its own. Signing belongs here too: a signer per algorithm sits beside the verifier for
that algorithm and shares its hash and curve tables.

Why not PyJWT: it spends most of its ~110/134 µs (RS256/ES256) validating base64 in Python;
verifying with `cryptography` directly costs about a third of that (DESIGN.md §8). The checks
PyJWT would do are all made by the callers of this module, plus stricter ones.

Decisions worth knowing:
- base64url must be canonical and unpadded (RFC 7515 §2, RFC 4648 §3.5): one text, one value.
- A JWK that carries private members (`d`, `p`, `k`...) is refused, not stripped: an issuer
  that publishes its private key has lost it, and signatures made with it prove nothing.
- A JWK with `alg` serves exactly that algorithm; without, every algorithm its type allows.
"""

from __future__ import annotations

import binascii
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from callwarden.policy import strictjson
from callwarden.policy.approval import TokenExpired

MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192  # larger moduli only make verification slower, never safer in practice
# Algorithm names a description may repeat; anything else in `alg` is attacker text.
KNOWN_ALGORITHMS: Final = frozenset(
    {"none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
     "ES256", "ES384", "ES512", "ES256K", "EdDSA", "Ed25519", "Ed448"}
)  # fmt: skip
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# --- base64url ------------------------------------------------------------------------------

_TO_STANDARD_BASE64: Final = bytes.maketrans(b"-_", b"+/")
# With 2 or 3 characters in the last quantum, the unused low bits of the last character must
# be zero; otherwise several encodings decode to the same bytes (RFC 4648 §3.5).
_CANONICAL_LAST: Final = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def b64url_decode(text: str) -> bytes:
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


# --- verifying ------------------------------------------------------------------------------

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


# --- JWKs -----------------------------------------------------------------------------------


class Jwk:
    """One usable public key from a JWK, with a verifier for each algorithm it may serve."""

    __slots__ = ("identity", "kid", "verifiers")

    def __init__(self, kid: str | None, identity: tuple[Any, ...], verifiers: dict[str, Verifier]) -> None:
        self.kid = kid
        self.identity = identity  # kty, curve and public numbers: equal keys compare equal
        self.verifiers = verifiers


class JwkIgnored(ValueError):
    """A JWK that cannot be used (in a JWK Set: that entry is dropped, the rest still count)."""


def _b64url_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkIgnored(f"member {name!r} is missing")
    try:
        return b64url_decode(value)
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


def parse_jwk(jwk: Any) -> Jwk:
    """A verification key from one JWK (RFC 7517/7518/8037), or JwkIgnored saying why not."""
    if not isinstance(jwk, dict):
        raise JwkIgnored("entry is not an object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwkIgnored("kid is not a string")
    if PRIVATE_MEMBERS & jwk.keys():
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
    return Jwk(kid, identity, verifiers)


# --- signing --------------------------------------------------------------------------------
# callwarden signs its own JWS (ARAP binding tokens) with one ES256 key: small signatures, a
# fast verifier, and the key lives in a file (a mounted Secret in a cluster).

_SIGNING_CURVE: Final = ec.SECP256R1()
_SIGNING_SIZE: Final = 32
MAX_SIGNED_TOKEN_CHARS: Final = 8192


_FROM_STANDARD_BASE64: Final = str.maketrans("+/", "-_")


def b64url_encode(data: bytes) -> str:
    return (
        binascii.b2a_base64(data, newline=False).decode("ascii").translate(_FROM_STANDARD_BASE64).rstrip("=")
    )


def load_signing_key(path: str | Path, *, create: bool = False) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in the PEM file at `path`; with `create`, a new one is generated and
    written there (mode 0600) when the file does not exist (standalone use). Raises ValueError."""
    location = Path(path)
    if create and not location.exists():
        key = ec.generate_private_key(_SIGNING_CURVE)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(location, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        return key
    try:
        loaded = serialization.load_pem_private_key(location.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot load the signing key {location}: {error}") from error
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != _SIGNING_CURVE.name:
        raise ValueError(f"the signing key {location} must be an EC P-256 key (ES256)")
    return loaded


class JwsSigner:
    """Signs compact ES256 JWS for one issuer and verifies the ones it signed (`TokenSigner`)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, issuer: str) -> None:
        self._key = key
        numbers = key.public_key().public_numbers()
        self._jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_encode(numbers.x.to_bytes(_SIGNING_SIZE, "big")),
            "y": b64url_encode(numbers.y.to_bytes(_SIGNING_SIZE, "big")),
            "use": "sig",
            "alg": "ES256",
        }
        thumbprint = hashes.Hash(hashes.SHA256())  # RFC 7638: the kid names the key, not a counter
        thumbprint.update(orjson.dumps({k: self._jwk[k] for k in ("crv", "kty", "x", "y")}))
        self.kid = b64url_encode(thumbprint.finalize())
        self._jwk["kid"] = self.kid
        self._verify = parse_jwk(self._jwk).verifiers["ES256"]
        self._issuer = issuer

    @property
    def issuer(self) -> str:
        return self._issuer

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (published as the PDP's `jwks_uri`)."""
        return {"keys": [dict(self._jwk)]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        header = b64url_encode(orjson.dumps({"alg": "ES256", "kid": self.kid, "typ": "JWT"}))
        signing_input = f"{header}.{b64url_encode(orjson.dumps(dict(claims)))}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(_SIGNING_SIZE, "big") + s.to_bytes(_SIGNING_SIZE, "big")
        return f"{signing_input}.{b64url_encode(signature)}"

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this signer issued for `audience`, not expired; raises ValueError."""
        if not isinstance(token, str) or len(token) > MAX_SIGNED_TOKEN_CHARS or not token.isascii():
            raise ValueError("not a compact JWS")
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("not a compact JWS")
        header = _json_part(parts[0], "header")
        if header.get("alg") != "ES256" or header.get("kid") != self.kid or "crit" in header:
            raise ValueError("not signed by this callwarden key")
        if not self._verify(f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2])):
            raise ValueError("bad signature")
        claims = _json_part(parts[1], "claims")
        if claims.get("iss") != self._issuer or claims.get("aud") != audience:
            raise ValueError("issued by someone else or for another audience")
        expires = claims.get("exp")
        if type(expires) is not int:
            raise ValueError("no expiry")
        if expires <= time.time():
            raise TokenExpired("expired")
        return claims


def _json_part(part: str, what: str) -> dict[str, Any]:
    try:
        value = strictjson.loads(b64url_decode(part), max_depth=32)
    except (ValueError, strictjson.JsonRejected) as error:
        raise ValueError(f"the {what} is not strict JSON") from error
    if not isinstance(value, dict):
        raise ValueError(f"the {what} is not a JSON object")
    return value
