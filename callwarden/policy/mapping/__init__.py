"""COAZ mapping: an MCP JSON-RPC request plus validated token claims -> AuthZEN requests.

Compiled once per McpServer when configuration loads (`compile_server_mapping`); the hot
path is `ServerMapping.map`. Forms, rules and the decisions taken where the specs are
ambiguous are described in `compiler.py`, `defaults.py` and standards.md §2.
"""

from __future__ import annotations

from callwarden.policy.mapping.results import (
    AuthorizationRequests,
    MappingCompileError,
    MappingFailure,
    MappingResult,
    PassThrough,
    UnknownMethod,
)
from callwarden.policy.mapping.server import ServerMapping, compile_server_mapping

__all__ = [
    "AuthorizationRequests",
    "MappingCompileError",
    "MappingFailure",
    "MappingResult",
    "PassThrough",
    "ServerMapping",
    "UnknownMethod",
    "compile_server_mapping",
]
