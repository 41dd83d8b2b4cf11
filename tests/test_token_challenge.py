"""The 401 challenge: RFC 9728 §5.1 `resource_metadata` plus RFC 6750 §3 error attributes."""

from __future__ import annotations

import re

import pytest

from callwarden.extauthz.token import JwksUnavailable, TokenRejected, www_authenticate
from callwarden.policy.model import resource_metadata_url

METADATA = resource_metadata_url("https://mcp.example.com/mcp")
# RFC 7235 challenge: scheme, then comma-separated auth-params with quoted-string values.
CHALLENGE = re.compile(
    r'Bearer [a-z_]+="(?:[^"\\\x00-\x1f\x7f]|\\.)*"(?:, [a-z_]+="(?:[^"\\\x00-\x1f\x7f]|\\.)*")*'
)
# RFC 6750 §3: error and error_description values use %x20-21 / %x23-5B / %x5D-7E only.
DESCRIPTION = re.compile(r'error_description="([\x20\x21\x23-\x5b\x5d-\x7e]*)"$')


def test_no_credentials_gets_no_error_attribute() -> None:
    rejected = TokenRejected(None, "no access token", reason="missing")
    assert www_authenticate(METADATA, rejected) == (
        'Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'
    )


def test_invalid_token_carries_error_and_description() -> None:
    rejected = TokenRejected("invalid_token", "token expired", reason="expired")
    assert www_authenticate(METADATA, rejected) == (
        'Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", '
        'error="invalid_token", error_description="token expired"'
    )


def test_unavailable_keys_are_an_invalid_token() -> None:
    challenge = www_authenticate(METADATA, JwksUnavailable())
    assert challenge.endswith('error="invalid_token", error_description="issuer keys unavailable"')


def test_invalid_request_is_reported_as_such() -> None:
    rejected = TokenRejected("invalid_request", "DPoP-bound tokens are not supported yet", reason="dpop")
    assert ', error="invalid_request", ' in www_authenticate(METADATA, rejected)


@pytest.mark.parametrize(
    ("description", "shown"),
    [
        ('say "hi"', "say 'hi'"),
        ("back\\slash", "back/slash"),
        ("line\r\nSet-Cookie: x=1", "line??Set-Cookie: x=1"),
        ("tab\there", "tab?here"),
        ("caf\u00e9 \u202ereversed", "caf? ?reversed"),
    ],
    ids=["double-quote", "backslash", "crlf-injection", "control-character", "non-ascii-and-bidi"],
)
def test_description_is_limited_to_the_rfc6750_alphabet(description: str, shown: str) -> None:
    challenge = www_authenticate(METADATA, TokenRejected("invalid_token", description, reason="x"))
    assert CHALLENGE.fullmatch(challenge)
    match = DESCRIPTION.search(challenge)
    assert match is not None
    assert match.group(1) == shown


@pytest.mark.parametrize(
    ("url", "quoted"),
    [
        ('https://mcp.example.com/"x', '"https://mcp.example.com/\\"x"'),
        ("https://mcp.example.com/\\x", '"https://mcp.example.com/\\\\x"'),
        ("https://mcp.example.com/\u00e9", '"https://mcp.example.com/%C3%A9"'),
    ],
    ids=["quote", "backslash", "non-ascii"],
)
def test_metadata_url_is_a_safe_quoted_string(url: str, quoted: str) -> None:
    challenge = www_authenticate(url, TokenRejected(None, "no access token", reason="missing"))
    assert challenge == f"Bearer resource_metadata={quoted}"
    assert CHALLENGE.fullmatch(challenge)
