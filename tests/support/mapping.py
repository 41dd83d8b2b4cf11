"""Builders for the COAZ mapping tests: McpServers with tools, token claims, vendored vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callwarden.policy.mapping import (
    AuthorizationRequests,
    MappingCompileError,
    MappingFailure,
    MappingResult,
    ServerMapping,
    compile_server_mapping,
)
from callwarden.policy.model import McpServer

RESOURCE = "https://mcp.example.com"
SERVER_KEY = "ns/fin"
VECTORS = Path(__file__).resolve().parent.parent / "vectors"
# The COAZ-MCP binding's example token (coaz-mcp-binding-examples/02), as a baseline.
CLAIMS: dict[str, Any] = {
    "sub": "alice@example.com",
    "client_id": "http://agentprovider.com/agent-app-id",
    "iss": "https://auth.example.com",
    "aud": RESOURCE,
    "exp": 1750000000,
}


def server(*tools: dict[str, Any], **identity: str) -> McpServer:
    spec: dict[str, Any] = {
        "resource": RESOURCE,
        "issuers": [{"issuer": "https://auth.example.com", "jwksUri": "https://auth.example.com/jwks"}],
        "tools": list(tools),
    }
    if identity:
        spec["identity"] = identity
    return McpServer.model_validate(
        {
            "apiVersion": "callwarden.io/v1alpha1",
            "kind": "McpServer",
            "metadata": {"name": "fin", "namespace": "ns"},
            "spec": spec,
        }
    )


def compiled(*tools: dict[str, Any], **identity: str) -> ServerMapping:
    """A server's mapping that must compile cleanly."""
    mapping = compile_server_mapping(server(*tools, **identity))
    assert mapping.errors == (), [str(error) for error in mapping.errors]
    return mapping


def compiled_with_errors(*tools: dict[str, Any], **identity: str) -> ServerMapping:
    """A server's mapping that must report at least one compile error."""
    mapping = compile_server_mapping(server(*tools, **identity))
    assert mapping.errors
    return mapping


def compile_errors(*tools: dict[str, Any], **identity: str) -> tuple[MappingCompileError, ...]:
    return compile_server_mapping(server(*tools, **identity)).errors


def platform(name: str, mapping: Any) -> dict[str, Any]:
    """A tool with a platform-declared mapping (McpServer tools[].mapping)."""
    return {"name": name, "mapping": mapping}


def declared(name: str, **fields: Any) -> dict[str, Any]:
    """A tool whose server-published Tool object carries `fields` (coaz, inputSchema...)."""
    return {"name": name, "declared": {"name": name, **fields}}


def d1_tool(name: str, mapping: Any, **fields: Any) -> dict[str, Any]:
    return declared(name, coaz=True, inputSchema={"type": "object", "x-coaz-mapping": mapping}, **fields)


def binding_tool(name: str, mapping: Any) -> dict[str, Any]:
    return declared(name, inputSchema={"type": "object", "x-authzen-mapping": mapping})


def evaluation(**body: Any) -> dict[str, Any]:
    """An `evaluation` envelope with a valid default action and resource unless given."""
    return {"evaluation": {"action": {"name": "act"}, "resource": {"type": "thing", "id": "t1"}, **body}}


def call(mapping: ServerMapping, tool: str, arguments: Any = None, claims: Any = None) -> MappingResult:
    params: dict[str, Any] = {"name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    return mapping.map("tools/call", params, CLAIMS if claims is None else claims)


def requests_of(result: MappingResult) -> AuthorizationRequests:
    assert isinstance(result, AuthorizationRequests), result
    return result


def failure_of(result: MappingResult) -> str:
    assert isinstance(result, MappingFailure), result
    return result.message


def without_pep_members(body: dict[str, Any]) -> dict[str, Any]:
    """A wire body or request minus the context members the PEP adds (`mcp`, `actors`), to
    compare with the specs' examples, which show only what the mapping itself produces."""

    def strip(context: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in context.items() if key not in ("mcp", "actors")}

    result = dict(body)
    if "context" in result:
        result["context"] = strip(result["context"])
    if "evaluations" in result:
        result["evaluations"] = [
            {**item, "context": strip(item["context"])} if "context" in item else item
            for item in result["evaluations"]
        ]
    return result


def vector(folder: str, prefix: str) -> Any:
    """The vendored JSON vector of `folder` whose file name starts with `prefix`."""
    (path,) = (VECTORS / folder).glob(f"{prefix}*")
    return json.loads(path.read_text())


def jsonc_objects(folder: str, prefix: str) -> list[tuple[str, Any]]:
    """The objects of a `.jsonc` vector, each labelled with the first word of the `//` comment
    block before it (the method name in the binding's default-mapping listings)."""
    (path,) = (VECTORS / folder).glob(f"{prefix}*.jsonc")
    text = path.read_text()
    decoder = json.JSONDecoder()
    objects: list[tuple[str, Any]] = []
    position, label = 0, ""
    while position < len(text):
        if text[position].isspace():
            position += 1
        elif text.startswith("//", position):
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            label = label or text[position + 2 : end].split()[0]
            position = end
        else:
            value, position = decoder.raw_decode(text, position)
            objects.append((label, value))
            label = ""
    return objects
