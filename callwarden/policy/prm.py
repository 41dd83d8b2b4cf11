"""RFC 9728 Protected Resource Metadata of one McpServer (pure: the document, not its serving).

The 401 challenge points clients here (`resource_metadata`); the gateway's Envoy serves the
document at the path-inserted well-known URL (`extauthz.envoy`). Empty members are omitted
(RFC 9728 §3.2). With DPoP enabled the document says which proof algorithms are accepted and,
in `required` mode, that only DPoP-bound tokens are (RFC 9728 §2, RFC 9449 §7.1).
"""

from __future__ import annotations

from typing import Any

from callwarden.policy.model import McpServerSpec


def protected_resource_metadata(spec: McpServerSpec) -> dict[str, Any]:
    metadata = spec.protected_resource_metadata
    document: dict[str, Any] = {
        "resource": spec.resource,
        "authorization_servers": list(metadata.authorization_servers),
        "scopes_supported": list(metadata.scopes_supported),
        "bearer_methods_supported": ["header"],
    }
    if spec.dpop.mode != "disabled":
        document["dpop_signing_alg_values_supported"] = list(spec.dpop.algorithms)
        document["dpop_bound_access_tokens_required"] = spec.dpop.mode == "required"
    return {name: value for name, value in document.items() if value != []}
