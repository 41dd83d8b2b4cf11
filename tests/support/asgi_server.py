"""An ASGI app served by uvicorn on a loopback port from a background thread, for test servers.

    with ServedApp(app) as served:
        ... served.base_url ...

The socket is bound before uvicorn starts (port 0 asks the kernel for a free one), so the port
is known at once and no other test can take it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn


class ServedApp:
    """Started on construction; `stop()` (or leaving the `with` block) stops it."""

    def __init__(self, app: Any, *, port: int = 0, lifespan: str = "on") -> None:
        # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets created with it (no 40 ms stalls).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
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
                raise RuntimeError(f"the test server for {type(app).__name__} did not start")
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
