"""An official-SDK MCP server with a paginated tool list, for the tools/list filtering tests.

`CatalogServer` serves the SDK's low-level `Server` over streamable HTTP (SSE responses by default,
as the SDK sends them unless told `json_response`), on a loopback port in a thread. Its tools come
in pages (`pages`, a list of lists of tool names; the cursor is the next page's index); a test may
change a page while a client is paging. Every tool call is counted, so a test can prove a denied
call never arrived. (A malformed response, which the SDK cannot be made to send, comes from
`tests.support.upstream.recording_upstream` with `answer_with`.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mcp import types
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings

from tests.support.asgi_server import ServedApp


class CatalogServer(ServedApp):
    def __init__(self, pages: Sequence[Sequence[str]], *, json_response: bool = False) -> None:
        self.pages = [list(page) for page in pages]
        self.declared: dict[str, Any] = {}  # tool name -> the x-authzen-mapping its schema declares
        self.calls: Counter[str] = Counter()
        server = Server("catalog", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        app = server.streamable_http_app(
            streamable_http_path="/mcp",
            json_response=json_response,
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        super().__init__(app)

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        page = int(params.cursor) if params is not None and params.cursor else 0
        tools = [
            types.Tool(name=name, description=f"the {name} tool", input_schema=self._schema(name))
            for name in self.pages[page]
        ]
        more = page + 1 < len(self.pages)
        return types.ListToolsResult(tools=tools, next_cursor=str(page + 1) if more else None)

    def _schema(self, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object"}
        if name in self.declared:
            schema["x-authzen-mapping"] = self.declared[name]
        return schema

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        self.calls[params.name] += 1
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name} ran")])
