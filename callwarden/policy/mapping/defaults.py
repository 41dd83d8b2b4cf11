"""The COAZ-MCP binding's default mappings (authzen-coaz-mcp-binding-1_0 §Default Mappings).

Written in the binding's own syntax and compiled like any other mapping, so defaults and
declared mappings share one code path. Two deliberate departures from the published text:
- `$token.sub` is read as the designated subject-identity claim (the binding's own rule,
  applied by the compiler), and the agent is read from `Identity.agent_claim`;
- completion/complete: the published `id` expression writes `$params.ref.name` inside the
  expression, which is not CEL (a `$` only marks the start of a value); the `$` is dropped.
"""

from __future__ import annotations

from typing import Any, Final

PASS_THROUGH_METHODS: Final = ("ping",)  # plus every `notifications/*`
SERVER_RESOURCE: Final = {"type": "mcp_server", "id": "$token.aud"}

# method -> (resource template, extra context members)
_TABLE: Final[dict[str, tuple[dict[str, str], dict[str, str]]]] = {
    "initialize": (SERVER_RESOURCE, {"protocol_version": "$params.protocolVersion"}),
    "tools/list": (SERVER_RESOURCE, {}),
    "resources/list": (SERVER_RESOURCE, {}),
    "prompts/list": (SERVER_RESOURCE, {}),
    "tasks/list": (SERVER_RESOURCE, {}),
    "tools/call": ({"type": "tool", "id": "$params.name"}, {}),
    "resources/read": ({"type": "resource", "id": "$params.uri"}, {}),
    "resources/subscribe": ({"type": "resource", "id": "$params.uri"}, {}),
    "resources/unsubscribe": ({"type": "resource", "id": "$params.uri"}, {}),
    "prompts/get": ({"type": "prompt", "id": "$params.name"}, {}),
    "completion/complete": (
        {
            "type": "$params.ref.type == 'ref/prompt' ? 'prompt' : 'resource'",
            "id": "$params.ref.type == 'ref/prompt' ? params.ref.name : params.ref.uri",
        },
        {},
    ),
    "logging/setLevel": (SERVER_RESOURCE, {"level": "$params.level"}),
    "tasks/get": ({"type": "task", "id": "$params.taskId"}, {}),
    "tasks/result": ({"type": "task", "id": "$params.taskId"}, {}),
    "tasks/cancel": ({"type": "task", "id": "$params.taskId"}, {}),
}


def default_mappings(agent_claim: str) -> dict[str, dict[str, Any]]:
    """Every method's default mapping, as a binding envelope."""
    return {
        method: {
            "evaluation": {
                "subject": {"type": "identity", "id": "$token.sub"},
                "context": {"agent": f"$token.?{agent_claim}", **context},
                "action": {"name": method},
                "resource": dict(resource),
            }
        }
        for method, (resource, context) in _TABLE.items()
    }
