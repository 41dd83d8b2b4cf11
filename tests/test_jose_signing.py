"""callwarden's own JWS (binding tokens): signed with one ES256 key, verified strictly."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from callwarden.extauthz.jose import JwsSigner, load_signing_key
from callwarden.policy.approval import TokenExpired

ISSUER = "urn:callwarden:test"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> JwsSigner:
    return JwsSigner(load_signing_key(tmp_path_factory.mktemp("key") / "key.pem", create=True), ISSUER)


def claims(**changes: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": ISSUER, "exp": int(time.time()) + 60, "jti": "j1", **changes}


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def test_a_generated_key_file_is_private_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    first = load_signing_key(path, create=True)
    assert path.stat().st_mode & 0o077 == 0
    assert load_signing_key(path).private_numbers() == first.private_numbers()


def test_a_token_verifies_here_and_with_pyjwt_against_the_published_jwks(signer: JwsSigner) -> None:
    token = signer.sign(claims())
    assert signer.verify(token, ISSUER)["jti"] == "j1"
    assert (
        jwt.decode(token, jwt.PyJWK(signer.jwks()["keys"][0]), algorithms=["ES256"], audience=ISSUER)["jti"]
        == "j1"
    )


def test_an_expired_token_is_told_apart_from_a_bad_one(signer: JwsSigner) -> None:
    with pytest.raises(TokenExpired):
        signer.verify(signer.sign(claims(exp=int(time.time()) - 1)), ISSUER)


def _resigned(signer: JwsSigner, header: dict[str, Any]) -> str:
    _, payload, signature = signer.sign(claims()).split(".")
    return f"{b64(header)}.{payload}.{signature}"


HOSTILE: list[Any] = [
    ("alg-none", lambda s: f"{b64({'alg': 'none'})}.{b64(claims())}."),
    ("hs256", lambda s: _resigned(s, {"alg": "HS256", "kid": s.kid})),
    ("other-kid", lambda s: _resigned(s, {"alg": "ES256", "kid": "someone-else"})),
    ("crit", lambda s: _resigned(s, {"alg": "ES256", "kid": s.kid, "crit": ["exp"]})),
    (
        "other-key",
        lambda s: jwt.encode(
            claims(), ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": s.kid}
        ),
    ),
    ("other-audience", lambda s: s.sign(claims(aud="urn:other"))),
    ("other-issuer", lambda s: s.sign(claims(iss="urn:other"))),
    ("no-exp", lambda s: s.sign({"iss": ISSUER, "aud": ISSUER})),
    ("exp-a-string", lambda s: s.sign(claims(exp="9999999999"))),
    ("two-parts", lambda s: ".".join(s.sign(claims()).split(".")[:2])),
    ("padded", lambda s: s.sign(claims()) + "=="),
    ("non-ascii", lambda s: s.sign(claims()) + "\u00e9"),
    ("oversized", lambda s: "a" * 9000),
    ("not-a-string", lambda s: 7),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_tokens_are_refused(signer: JwsSigner, case: Any) -> None:
    with pytest.raises(ValueError):
        signer.verify(case[1](signer), ISSUER)
