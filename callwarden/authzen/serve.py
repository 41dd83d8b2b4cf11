"""What `callwarden pdp` loads before serving: policies, PIP data, PEP secrets, TLS.

The PDP decides with every ToolPolicy of the configuration at once: `spec.targets` names MCP
servers, which an AuthZEN request from outside MCP does not involve. McpServer objects in the
same files are validated and otherwise ignored.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from callwarden.authzen.api import TOKEN68
from callwarden.authzen.pip import DataFileError, load_information
from callwarden.policy.approval import ApprovalAuthority
from callwarden.policy.loader import ConfigError, load_config
from callwarden.policy.pdp import EmbeddedPdp, PolicyCompileError, compile_pdp


class PdpSetupError(Exception):
    """The PDP cannot start; the message says what to fix."""


def load_pdp(
    config_paths: Sequence[str], data_path: str | None, approvals: ApprovalAuthority | None = None
) -> tuple[EmbeddedPdp, int]:
    """The PDP over every ToolPolicy in `config_paths` and the PIP in `data_path`, and how many
    policies it holds; raises PdpSetupError. `approvals` makes RequireApproval requestable."""
    try:
        config = load_config([Path(path) for path in config_paths])
    except ConfigError as error:
        raise PdpSetupError("invalid configuration:\n  " + "\n  ".join(map(str, error.problems))) from error
    if not config.policies:
        raise PdpSetupError("the configuration holds no ToolPolicy: nothing would ever be allowed")
    try:
        information = load_information(data_path) if data_path is not None else None
        pdp = compile_pdp(list(config.policies.values()), information, approvals)
    except (DataFileError, PolicyCompileError) as error:
        raise PdpSetupError(str(error)) from error
    return pdp, len(config.policies)


def read_bearer_tokens(path: str) -> tuple[str, ...]:
    """The PEP secrets in `path`: one per line; blank lines and `#` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PdpSetupError(f"cannot read the token file {path}: {error}") from error
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise PdpSetupError(f"the token file {path} holds no token")
    for number, token in enumerate(tokens, start=1):
        if not TOKEN68.fullmatch(token):
            raise PdpSetupError(f"token {number} in {path} is not token68 (letters, digits, -._~+/ and =)")
    return tokens


def tls_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files; raises PdpSetupError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as error:
        raise PdpSetupError(f"cannot load TLS certificate {certificate} and key {key}: {error}") from error
    return context
