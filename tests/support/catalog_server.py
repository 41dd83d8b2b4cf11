"""An official-SDK MCP server with a paginated tool list, for the tools/list filtering tests.

`CatalogServer` serves the SDK's low-level `Server` over streamable HTTP (SSE responses by default,
as the SDK sends them unless told `json_response`), on a loopback port in a thread. Its tools come
in pages (`pages`, a list of lists of tool names; the cursor is the next page's index); a test may
change a page while a client is paging. Every tool call is counted, so a test can prove a denied
call never arrived. `RawUpstream` answers every POST with fixed bytes: the SDK cannot be made to
send a malformed tools/list response, and that is what it stands in for.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import uvicorn
from mcp import types
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class _Served:
    """An ASGI app served by uvicorn on a loopback port from a thread, until `stop()`."""

    def __init__(self, app: Any, *, lifespan: str = "on") -> None:
        self._sock = _listen()
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", lifespan=lifespan, interface="asgi3"
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._uvicorn.serve(sockets=[self._sock]),), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test MCP upstream did not start")
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> _Served:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


class CatalogServer(_Served):
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


class RawUpstream(_Served):
    """Answers every request with `body` as `content_type` (settable between requests)."""

    def __init__(self, body: bytes = b"", content_type: str = "application/json") -> None:
        self.body = body
        self.content_type = content_type
        self.requests: list[dict[bytes, bytes]] = []  # the headers of every request it answered
        super().__init__(self._app, lifespan="off")

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests.append(dict(scope["headers"]))
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
