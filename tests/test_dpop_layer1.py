"""Layer 1 by `spec.dpop.mode`: which credentials are accepted, the challenges of RFC 9449 §7.1
with the error on the scheme attempted, `context.cnf` for the PDP, the metadata, the spec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from callwarden.cli import main
from callwarden.demo.run import EXAMPLE
from callwarden.extauthz.challenge import dpop_www_authenticate
from callwarden.extauthz.credentials import Authenticated, Authenticator, Unauthenticated
from callwarden.extauthz.dpop import DpopRuntime, DpopVerifier
from callwarden.extauthz.token import JwksStore, TokenRejected, TokenValidator
from callwarden.policy.bundle import compile_server
from callwarden.policy.decide import decide
from callwarden.policy.mapping import MappingCompileError
from callwarden.policy.model import Dpop, McpServer, ToolPolicy
from callwarden.policy.prm import protected_resource_metadata
from tests.support.dpop import ProofKey
from tests.support.issuer import LocalIssuer, mcp_server

METADATA_URL = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
METADATA = f'resource_metadata="{METADATA_URL}"'
URI = "https://mcp.example.com/mcp"
HEADERS = {"x-forwarded-proto": "https"}
ALGS = 'algs="ES256 PS256"'
PROOF_ERROR = 'error="invalid_dpop_proof", error_description="why"'


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    running = LocalIssuer(name="layer1")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def store() -> Iterator[JwksStore]:
    jwks = JwksStore(timeout=2.0)
    yield jwks
    jwks.close()


def _server(issuer: LocalIssuer, **dpop: Any) -> McpServer:
    server = mcp_server(issuer)
    spec = server.spec.model_copy(update={"dpop": Dpop.model_validate(dpop)})
    return server.model_copy(update={"spec": spec})


def _authenticator(issuer: LocalIssuer, store: JwksStore, **dpop: Any) -> Authenticator:
    server = _server(issuer, **dpop)
    runtime = DpopRuntime.single_process()
    verifier = DpopVerifier(server.key, server.spec.dpop, runtime)
    return Authenticator(TokenValidator(server, store), verifier, server.spec.dpop, METADATA_URL)


def _run(authenticator: Authenticator, headers: dict[str, str]) -> Authenticated:
    return authenticator.authenticate(
        {**HEADERS, **headers}, method="POST", authority="mcp.example.com", path="/mcp?session=1"
    )


def _refused(authenticator: Authenticator, headers: dict[str, str]) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as raised:
        _run(authenticator, headers)
    return raised.value


def _dpop(issuer: LocalIssuer, key: ProofKey, **overrides: Any) -> dict[str, str]:
    token = issuer.mint(aud=URI, cnf={"jkt": key.jkt})
    return {"authorization": f"DPoP {token}", "dpop": key.proof("POST", URI, token, **overrides)}


# --- modes --------------------------------------------------------------------------------


def test_disabled_mode_accepts_bearer_and_names_no_dpop(issuer: LocalIssuer, store: JwksStore) -> None:
    layer1 = _authenticator(issuer, store)
    assert _run(layer1, {"authorization": f"Bearer {issuer.mint(aud=URI)}"}).cnf is None
    refused = _refused(layer1, _dpop(issuer, ProofKey()))
    assert refused.headers["www-authenticate"].startswith(f'Bearer {METADATA}, error="invalid_request"')


def test_disabled_mode_refuses_a_bound_token_as_bearer(issuer: LocalIssuer, store: JwksStore) -> None:
    token = issuer.mint(aud=URI, cnf={"jkt": ProofKey().jkt})
    refused = _refused(_authenticator(issuer, store), {"authorization": f"Bearer {token}"})
    assert refused.reason == "dpop-bound-bearer"


def test_allowed_mode_accepts_both_and_only_dpop_carries_cnf(issuer: LocalIssuer, store: JwksStore) -> None:
    layer1 = _authenticator(issuer, store, mode="allowed")
    assert _run(layer1, {"authorization": f"Bearer {issuer.mint(aud=URI)}"}).cnf is None
    key = ProofKey()
    proven = _run(layer1, _dpop(issuer, key))
    assert proven.cnf == {"jkt": key.jkt, "jwk": key.jwk, "alg": "ES256"}
    assert proven.claims["cnf"] == {"jkt": key.jkt}


def test_required_mode_refuses_bearer_with_the_dpop_challenge(issuer: LocalIssuer, store: JwksStore) -> None:
    refused = _refused(
        _authenticator(issuer, store, mode="required"), {"authorization": f"Bearer {issuer.mint(aud=URI)}"}
    )
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith(f'DPoP {METADATA}, algs="ES256 PS256 RS256 EdDSA", error="invalid_token"')
    assert "Bearer" not in challenge
    assert refused.reason == "dpop-required"


def test_a_dpop_request_with_an_invalid_token_is_invalid_token_on_dpop(
    issuer: LocalIssuer, store: JwksStore
) -> None:
    key = ProofKey()
    token = issuer.mint(aud="https://elsewhere.example/mcp", cnf={"jkt": key.jkt})
    headers = {"authorization": f"DPoP {token}", "dpop": key.proof("POST", URI, token)}
    refused = _refused(_authenticator(issuer, store, mode="allowed"), headers)
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith(f"Bearer {METADATA}, DPoP {METADATA}, ")
    assert challenge.endswith(
        'error="invalid_token", error_description="audience does not include https://mcp.example.com/mcp"'
    )


@pytest.mark.parametrize(
    ("cnf", "reason"),
    [("jkt", "claims"), ({"jkt": 7}, "claims"), ({"jkt": ""}, "claims")],
    ids=["string", "number", "empty"],
)
def test_a_malformed_cnf_is_refused(issuer: LocalIssuer, store: JwksStore, cnf: Any, reason: str) -> None:
    key = ProofKey()
    token = issuer.mint(aud=URI, cnf=cnf)
    headers = {"authorization": f"DPoP {token}", "dpop": key.proof("POST", URI, token)}
    assert _refused(_authenticator(issuer, store, mode="required"), headers).reason == reason


def test_a_token_confirmed_by_another_method_is_not_dpop_bound(issuer: LocalIssuer, store: JwksStore) -> None:
    key = ProofKey()
    token = issuer.mint(aud=URI, cnf={"x5t#S256": "abc"})
    headers = {"authorization": f"DPoP {token}", "dpop": key.proof("POST", URI, token)}
    assert _refused(_authenticator(issuer, store, mode="required"), headers).reason == "dpop-unbound"


def test_an_unknown_scheme_is_invalid_request_on_the_first_scheme_offered(
    issuer: LocalIssuer, store: JwksStore
) -> None:
    refused = _refused(_authenticator(issuer, store, mode="allowed"), {"authorization": "Basic YTpi"})
    assert refused.headers["www-authenticate"].startswith(f'Bearer {METADATA}, error="invalid_request"')


def test_a_nonce_refusal_sends_the_nonce_header(issuer: LocalIssuer, store: JwksStore) -> None:
    refused = _refused(
        _authenticator(issuer, store, mode="required", nonce={"enabled": True}), _dpop(issuer, ProofKey())
    )
    assert refused.headers["dpop-nonce"]
    assert 'error="use_dpop_nonce"' in refused.headers["www-authenticate"]


def test_the_request_query_is_ignored_and_the_edge_scheme_counts(
    issuer: LocalIssuer, store: JwksStore
) -> None:
    layer1 = _authenticator(issuer, store, mode="required")
    assert _run(layer1, _dpop(issuer, ProofKey())).cnf  # path "/mcp?session=1", htu without query
    refused = _refused(layer1, {**_dpop(issuer, ProofKey()), "x-forwarded-proto": "http"})
    assert refused.reason == "dpop-htu"


# --- the challenge ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer_bearer", "attempted", "error", "expected"),
    [
        (True, "bearer", None, f'Bearer {METADATA}, DPoP {METADATA}, algs="ES256 PS256"'),
        (False, "dpop", None, f'DPoP {METADATA}, algs="ES256 PS256"'),
        (
            True,
            "bearer",
            "invalid_token",
            f'Bearer {METADATA}, error="invalid_token", error_description="why", DPoP {METADATA}, {ALGS}',
        ),
        (
            True,
            "dpop",
            "invalid_dpop_proof",
            f"Bearer {METADATA}, DPoP {METADATA}, {ALGS}, {PROOF_ERROR}",
        ),
        (
            False,
            "bearer",
            "invalid_token",
            f'DPoP {METADATA}, algs="ES256 PS256", error="invalid_token", error_description="why"',
        ),
    ],
    ids=[
        "no-credentials-both",
        "no-credentials-dpop-only",
        "bearer-error",
        "dpop-error",
        "bearer-where-only-dpop",
    ],
)
def test_the_error_goes_on_the_scheme_attempted(
    offer_bearer: bool, attempted: str, error: str | None, expected: str
) -> None:
    challenge = dpop_www_authenticate(
        METADATA_URL,
        algorithms=["ES256", "PS256"],
        offer_bearer=offer_bearer,
        attempted=attempted,
        error=error,
        description="why",
    )
    assert challenge == expected


def test_a_description_cannot_break_the_header() -> None:
    challenge = dpop_www_authenticate(
        METADATA_URL,
        algorithms=["ES256"],
        offer_bearer=False,
        attempted="dpop",
        error="invalid_dpop_proof",
        description='a"b\r\nX: y',
    )
    assert challenge.endswith('error_description="a\'b??X: y"')


# --- metadata and spec --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dpop", "advertised"),
    [
        ({}, None),
        ({"mode": "allowed", "algorithms": ["ES256"]}, (["ES256"], False)),
        ({"mode": "required"}, (["ES256", "PS256", "RS256", "EdDSA"], True)),
    ],
    ids=["disabled", "allowed", "required"],
)
def test_the_metadata_advertises_dpop_by_mode(
    issuer: LocalIssuer, dpop: dict[str, Any], advertised: Any
) -> None:
    document = protected_resource_metadata(_server(issuer, **dpop).spec)
    assert document["resource"] == URI
    assert "authorization_servers" not in document  # empty members are omitted (RFC 9728 §3.2)
    if advertised is None:
        assert "dpop_signing_alg_values_supported" not in document
        assert "dpop_bound_access_tokens_required" not in document
    else:
        assert (
            document["dpop_signing_alg_values_supported"],
            document["dpop_bound_access_tokens_required"],
        ) == advertised


@pytest.mark.parametrize(
    "dpop",
    [
        {"mode": "optional"},
        {"mode": "required", "algorithms": ["HS256"]},
        {"mode": "required", "algorithms": ["none"]},
        {"mode": "required", "algorithms": []},
        {"mode": "required", "maxAge": 0},
        {"mode": "required", "maxAge": 301},
        {"mode": "required", "maxAge": 60.5},
        {"mode": "required", "nonce": {"enabled": True, "secret": "x"}},
        {"mode": "required", "replay": "off"},
        {"mode": ["required"]},
    ],
    ids=[
        "unknown-mode",
        "hmac",
        "none",
        "no-algorithms",
        "max-age-0",
        "max-age-over-5-minutes",
        "max-age-fraction",
        "secret-inline",
        "unknown-field",
        "mode-list",
    ],
)
def test_a_bad_dpop_spec_is_refused(dpop: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Dpop.model_validate(dpop)


def test_repeated_algorithms_are_listed_once() -> None:
    assert Dpop.model_validate({"algorithms": ["ES256", "ES256", "EdDSA"]}).algorithms == ["ES256", "EdDSA"]


# --- context.cnf for the PDP ---------------------------------------------------------------


def _policy(when: str) -> ToolPolicy:
    return ToolPolicy.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "ToolPolicy",
            "metadata": {"name": "bound-only", "namespace": "tests"},
            "spec": {
                "targets": ["finance"],
                "rules": [{"name": "bound", "tools": ["*"], "effect": "Allow", "when": when}],
            },
        }
    )


def test_a_policy_can_require_a_token_bound_to_a_proven_key(issuer: LocalIssuer) -> None:
    compiled = compile_server(
        _server(issuer, mode="allowed"), [_policy('has(context.cnf) && context.cnf.alg == "ES256"')]
    )
    params = {"name": "payroll", "arguments": {}}
    claims = {"sub": "alice"}
    assert decide(
        compiled, "tools/call", params, claims, cnf={"jkt": "abc", "jwk": {}, "alg": "ES256"}
    ).allowed
    assert not decide(compiled, "tools/call", params, claims).allowed


def test_a_mapping_cannot_write_context_cnf(issuer: LocalIssuer) -> None:
    server = _server(issuer)
    tool = {
        "name": "payroll",
        "mapping": {
            "evaluation": {
                "action": {"name": "read"},
                "resource": {"type": "t", "id": "x"},
                "context": {"cnf": {"jkt": "'forged'"}},
            }
        },
    }
    document = server.model_dump(by_alias=True, exclude_none=True)
    document["spec"]["tools"] = [tool]
    forged = McpServer.model_validate(document)
    [error] = compile_server(forged, []).mapping.errors
    assert isinstance(error, MappingCompileError)
    assert "context.cnf is set by the PEP" in str(error)


# --- the nonce key of a serving process -----------------------------------------------------


@pytest.mark.parametrize(("content", "problem"), [(None, "No such file"), (b"short\n", "at least 32 bytes")])
def test_extauthz_refuses_to_start_with_an_unusable_nonce_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes | None, problem: str
) -> None:
    key_file = tmp_path / "nonce-key"
    if content is not None:
        key_file.write_bytes(content)
    args = [
        "extauthz",
        "--config",
        str(EXAMPLE),
        "--listen",
        "127.0.0.1:0",
        "--dpop-nonce-key-file",
        str(key_file),
    ]
    try:
        code = main(args)
    except SystemExit as exit:
        code = int(exit.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot load DPoP nonce keys from {key_file}" in err and problem in err


def test_the_claims_of_an_allowed_dpop_request_can_be_read_again_without_replaying_its_proof(
    issuer: LocalIssuer, store: JwksStore
) -> None:
    layer1 = _authenticator(issuer, store, mode="required")
    headers = _dpop(issuer, ProofKey())
    allowed = _run(layer1, headers)
    assert layer1.token_claims(headers["authorization"]) == allowed.claims
    with pytest.raises(TokenRejected):
        _authenticator(issuer, store).token_claims(headers["authorization"])  # DPoP disabled
