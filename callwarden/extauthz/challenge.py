"""What a 401 says: the rejection of a request's credentials and its `WWW-Authenticate` challenge.

`TokenRejected` is raised wherever Layer 1 finds the credentials unacceptable (the token
checks, the JWKS store); `www_authenticate` turns it into the RFC 9728 challenge that tells a
client where to find this resource's metadata and, with RFC 6750 error fields, what was wrong.
Descriptions name what is wrong and never echo token text, and they are sanitised once more
here so that no header value can carry a quote, a backslash or a line break.
"""

from __future__ import annotations

from collections.abc import Sequence


class TokenRejected(Exception):
    """The request's credentials are not acceptable: answer 401 with `www_authenticate`.

    `error` is the RFC 6750 error code (None when no credentials were sent, so the challenge
    carries none), `description` is safe to show and log, `reason` is a stable kebab-case code
    for metrics ("missing", "malformed", "expired", "audience", "signature", ...).
    """

    def __init__(self, error: str | None, description: str, *, reason: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason
        self.issuer = ""  # the trusted issuer the token claimed, once known (for metrics)


def invalid_token(description: str, reason: str) -> TokenRejected:
    return TokenRejected("invalid_token", description, reason=reason)


def _description_text(text: str) -> str:
    # RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E, so `"` and
    # `\` cannot appear even escaped; substitute look-alikes and drop anything non-printable.
    text = text.replace('"', "'").replace("\\", "/")
    return "".join(char if " " <= char <= "~" else "?" for char in text)


def _quoted_url(url: str) -> str:
    """A URL as an RFC 7230 quoted-string: quoted-pairs for `"` and `\\`, and anything outside
    printable ASCII percent-encoded as UTF-8 (a header value must never carry CR/LF)."""
    escaped = url.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(char if " " <= char <= "~" else _percent(char) for char in escaped) + '"'


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def www_authenticate(resource_metadata_url: str, rejected: TokenRejected) -> str:
    """The `WWW-Authenticate` value of a 401: RFC 9728 §5.1 plus RFC 6750 §3 error fields.

    A request that carried no credentials (`rejected.error is None`) gets no error attribute.
    """
    challenge = f"Bearer resource_metadata={_quoted_url(resource_metadata_url)}"
    if rejected.error is None:
        return challenge
    return (
        f'{challenge}, error="{_description_text(rejected.error)}", '
        f'error_description="{_description_text(rejected.description)}"'
    )


def _error_fields(error: str | None, description: str) -> str:
    if error is None:
        return ""
    return f', error="{_description_text(error)}", error_description="{_description_text(description)}"'


def dpop_www_authenticate(
    resource_metadata_url: str,
    *,
    algorithms: Sequence[str],
    offer_bearer: bool,
    attempted: str,
    error: str | None,
    description: str,
) -> str:
    """The challenges of a 401 from a server that accepts DPoP (RFC 9449 §7.1, RFC 9728 §5.1).

    `DPoP algs="..."` always, preceded by `Bearer` when bearer tokens are accepted too; the
    error fields go on the scheme the request `attempted` ("bearer" or "dpop"), or on the
    offered scheme when the attempted one is not (a bearer token where only DPoP is accepted).
    With no credentials (`error` None) neither carries an error (RFC 6750 §3.1).
    """
    metadata = f"resource_metadata={_quoted_url(resource_metadata_url)}"
    on_bearer = offer_bearer and attempted == "bearer"
    dpop = f'DPoP {metadata}, algs="{_description_text(" ".join(algorithms))}"'
    dpop += "" if on_bearer else _error_fields(error, description)
    if not offer_bearer:
        return dpop
    bearer = f"Bearer {metadata}" + (_error_fields(error, description) if on_bearer else "")
    return f"{bearer}, {dpop}"
