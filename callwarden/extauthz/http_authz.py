"""Envoy's HTTP ext_authz (`http_service`): the same decisions as the gRPC server, over HTTP/1.1.

Envoy's HTTP ext_authz forwards the original request as a request of its own: the original
method, path and body, the `allowed_headers` (plus Host and Authorization). Every request this
server reads is such a copy; the answer is

- allow: 200 with `x-callwarden-decision-id` (Envoy copies it upstream through
  `allowed_upstream_headers`, overwriting any client-sent value) and `x-envoy-auth-headers-to-remove`
  naming the client-sent `x-callwarden-*` headers, which Envoy strips before the upstream;
- deny: the denial's status, body and headers; Envoy answers the client with them
  (`allowed_client_headers`). Envoy takes any 200 for an allow, so a denial with status 200
  (a JSON-RPC error, `denyHttpStatus` 200) is sent as DENIED_OK_STATUS, which the bootstrap's
  local reply mapper turns back into 200 for the client.

Why a second transport: with grpcio, two thirds of the checker's CPU per request went to the
transport (HTTP/2 framing, a thread-pool hand-off per call). This is one thread running an
event loop (uvloop when installed) with a raw `asyncio.Protocol`: no hand-offs, no framework.
The decision runs inline on the loop: it is CPU only (~100 µs) except when a token names a key
the JWKS cache does not hold, and then the fetch blocks the loop up to the JwksStore timeout
(refetches are rate limited per issuer, `min_refetch_interval`). Checks are CPU-bound, so a
pool would buy nothing but hand-offs back; run several processes for more than one core.

Parsing is strict and bounded (a parser differential with Envoy is a bypass, an unbounded buffer
an outage): one Content-Length (digits only) or none, no Transfer-Encoding, header block at most
MAX_HEAD_BYTES, body at most MAX_BODY_BYTES. Anything else is answered 400/413/431 and the
connection closed; Envoy forwards that status, so a malformed copy is a denial, never an allow.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Final, cast

from callwarden.extauthz import metrics
from callwarden.extauthz.decide import Answer, RequestView
from callwarden.extauthz.envoy import DENIED_OK_STATUS
from callwarden.extauthz.http_endpoints import split_host_port
from callwarden.extauthz.responses import CHECKER_FAILED_BODY

log = logging.getLogger(__name__)

HEADERS_TO_REMOVE: Final = "x-envoy-auth-headers-to-remove"
MAX_HEAD_BYTES: Final = 64 * 1024
# McpServer.spec.maxRequestBytes is at most 8 MiB; the same bound as the gRPC message limit.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
_REASONS: Final = {200: "OK", 400: "Bad Request", 413: "Content Too Large", 431: "Headers Too Large"}
_NO_EXTENSIONS: Final[dict[str, str]] = {}
# RFC 9110 §5.6.2: a header name is one or more of these (no space, no colon, nothing else).
_TOKEN: Final = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

Decide = Callable[[RequestView], Answer]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _head_of(block: bytes) -> tuple[str, str, bool, dict[str, str], int]:
    """Method, target, keep-alive, headers (lowercase names; repeats joined by ","), body length."""
    # latin-1 is lossless (a byte is a character). One decode, then str methods that run in C:
    # half the cost of splitting and checking bytes piece by piece (~5 against ~11 µs).
    text = block.decode("latin-1")
    lines = text.split("\r\n")
    if "\x00" in text or not len(lines) - 1 == text.count("\r") == text.count("\n"):
        raise _BadRequest(400, "a bare CR or LF, or a NUL, in the request head")
    parts = lines[0].split(" ")
    method = parts[0]
    if (
        len(parts) != 3
        or parts[2] not in ("HTTP/1.1", "HTTP/1.0")
        or not (method.isascii() and method.isalpha())
    ):
        raise _BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN.issuperset(name):
            raise _BadRequest(400, "malformed header line")
        key, value = name.lower(), value.strip(" \t")
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise _BadRequest(400, "transfer-encoding is not accepted (Envoy sends Content-Length)")
    declared = headers.get("content-length", "0")
    if not declared.isdigit() or not declared.isascii():
        raise _BadRequest(400, "content-length must be one decimal number")
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if parts[2] == "HTTP/1.1" else connection == "keep-alive"
    return method, parts[1], keep_alive, headers, length


def _clean(value: str) -> str:
    # A header value must never end the header block early (response splitting).
    return value.replace("\r", " ").replace("\n", " ")


def _response(answer: Answer) -> bytes:
    status = DENIED_OK_STATUS if answer.status == 200 and not answer.allowed else answer.status
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Denied')}"]
    lines += [f"{name}: {_clean(value)}" for name, value in answer.headers.items()]
    # An allow's headers for the client (Envoy's allowed_client_headers_on_success picks them).
    lines += [f"{name}: {_clean(value)}" for name, value in answer.client_headers.items()]
    # Envoy removes after it sets: a name we set must not be in the removals (as allow_response).
    removed = [name for name in answer.headers_to_remove if name not in answer.headers]
    if removed:
        lines.append(f"{HEADERS_TO_REMOVE}: {','.join(removed)}")
    lines.append(f"content-length: {len(answer.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body


class _Connection(asyncio.Protocol):
    def __init__(self, decide: Decide, open_connections: set[asyncio.Transport | None]) -> None:
        self._decide = decide
        self._open = open_connections
        self._buffer = bytearray()
        self._head: tuple[str, str, bool, dict[str, str], int] | None = None
        self._transport: asyncio.Transport | None = None  # None once closed
        self._registered: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = self._registered = cast(asyncio.Transport, transport)
        self._open.add(self._registered)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._transport is not None and self._next():
                pass
        except _BadRequest as bad:
            self._refuse(bad)

    def _next(self) -> bool:
        """Answer one complete request from the buffer; False when more bytes are needed."""
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise _BadRequest(431, f"header block over {MAX_HEAD_BYTES} bytes")
                return False
            self._head = _head_of(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        method, target, keep_alive, headers, length = self._head
        if len(self._buffer) < length:
            return False
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._head = None
        view = RequestView(method, headers.get("host", ""), target, headers, body, _NO_EXTENSIONS)
        try:
            answer = self._decide(view)
        except Exception:  # fail closed, keep serving
            log.exception("checker raised; request denied")
            metrics.count_decision("", "deny", "403")
            answer = Answer(False, 403, CHECKER_FAILED_BODY, {"content-type": "application/json"})
        assert self._transport is not None
        self._transport.write(_response(answer))
        if not keep_alive:
            self._transport.close()
            self._transport = None
        return True

    def _refuse(self, bad: _BadRequest) -> None:
        log.warning("refused an ext_authz HTTP request: %s", bad)
        body = f'{{"error":"{bad}"}}'.encode()
        answer = Answer(False, bad.status, body, {"content-type": "application/json", "connection": "close"})
        if self._transport is not None:
            self._transport.write(_response(answer))
            self._transport.close()
            self._transport = None

    def connection_lost(self, error: Exception | None) -> None:
        self._open.discard(self._registered)
        self._transport = None


def connection(decide: Decide) -> asyncio.Protocol:
    """The protocol of one connection, outside a server: bench/stages.py feeds it requests to
    measure the server's own work per request without a socket."""
    return _Connection(decide, set())


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 (a dependency everywhere but Windows, which has none)
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class HttpAuthzServer:
    """The HTTP ext_authz server on its own thread (one event loop). `stop()` ends it."""

    def __init__(self, decide: Decide, listen: str, *, reuse_port: bool = False) -> None:
        """`reuse_port`: share the port with other processes (SO_REUSEPORT, `--workers`)."""
        host, port = split_host_port(listen)
        self._loop = _new_loop()
        self._connections: set[asyncio.Transport | None] = set()
        self._server = self._loop.run_until_complete(
            self._loop.create_server(
                lambda: _Connection(decide, self._connections), host, port, reuse_port=reuse_port
            )
        )
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="callwarden-http-authz", daemon=True
        )
        self._thread.start()
        log.info("HTTP ext_authz listening on %s (port %d)", listen, self.port)

    def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        if self._loop.is_closed():
            return

        async def _close() -> None:
            self._server.close()
            for transport in list(self._connections):
                if transport is not None:
                    transport.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
