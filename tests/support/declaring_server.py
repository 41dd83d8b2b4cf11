"""An official-SDK MCP server that publishes declared mappings, for the discovery tests.

`DeclaringServer` serves `MCPServer` over streamable HTTP on a loopback port (uvicorn in a
thread). Every request must carry `Authorization: Bearer <token>` (401 otherwise), as the
operator's credential Secret provides. Its tools publish `inputSchema["x-authzen-mapping"]`;
a test changes a tool's published mapping, or adds tools, while it runs:

    with DeclaringServer(token="s3cret") as server:
        server.declare("query_financials", FINANCE_MAPPING)
        ... server.url ...
        server.declare("query_financials", OTHER_MAPPING)   # the next tools/list shows it
"""

from __future__ import annotations

from typing import Any, Final

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.asgi_server import ServedApp

MAPPING_KEY: Final = "x-authzen-mapping"


def finance_mapping(resource_type: str = "ledger") -> dict[str, Any]:
    """A current-binding mapping naming the ledger the call reads (resource.id = `entity`)."""
    return {
        "evaluation": {
            "action": {"name": "read_financials"},
            "resource": {"type": resource_type, "id": "$params.arguments.entity"},
            "context": {"agent": "$token.?client_id", "period": "$params.arguments.period"},
        }
    }


async def query_financials(period: str, entity: str) -> str:
    """Return the summary financial table of one entity for one reporting period."""
    return f"{entity} {period}: revenue 12.4M EUR"


async def create_doc(template: str, title: str) -> str:
    """Create a document from a template (it declares no mapping unless a test says so)."""
    return f"created {title!r} from {template!r}"


_FUNCTIONS: Final = {"query_financials": query_financials, "create_doc": create_doc}


class _RequireBearer:
    """401 for any request without the expected bearer token (what the operator must send)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


class DeclaringServer(ServedApp):
    """The server, started on construction; a context manager that stops it."""

    def __init__(self, *, token: str, port: int = 0) -> None:
        self._tools = {name: Tool.from_function(function) for name, function in _FUNCTIONS.items()}
        self._mcp = MCPServer("declaring", tools=list(self._tools.values()), log_level="WARNING")
        app = self._mcp.streamable_http_app(
            streamable_http_path="/mcp",
            json_response=True,
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        super().__init__(_RequireBearer(app, token), port=port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def declare(self, name: str, mapping: Any | None, **schema: Any) -> None:
        """Publish tool `name` (query_financials or create_doc) with `mapping` as its declared one
        (None: no mapping), plus any other `inputSchema` members in `schema`."""
        tool = self._tools[name]
        tool.parameters.pop(MAPPING_KEY, None)
        tool.parameters.update(schema)
        if mapping is not None:
            tool.parameters[MAPPING_KEY] = mapping
