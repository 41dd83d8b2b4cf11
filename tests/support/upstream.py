"""A stand-in MCP upstream on loopback that records every request it receives.

Tests put it behind Envoy to prove what reached the server (headers as the upstream saw them,
the exact body) and, just as important, what never did: a denied request leaves `requests`
unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESULT_BODY = b'{"jsonrpc":"2.0","id":1,"result":{}}'


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # lower-cased names, in arrival order, duplicates kept
    body: bytes

    def header(self, name: str) -> list[str]:
        """Every value of `name` (case-insensitive)."""
        return [value for key, value in self.headers if key == name.lower()]


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy pools upstream connections

    def _record_and_answer(self) -> None:
        body = self._read_body()
        headers = tuple((name.lower(), value) for name, value in self.headers.items())
        self.server.record(ReceivedRequest(self.command, self.path, headers, body))
        answer, content_type = self.server.answer
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = _record_and_answer

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test asserts on `requests`, not on a log."""


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self.answer = (RESULT_BODY, "application/json")  # what every request gets back

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def snapshot(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)


class RecordingUpstream:
    """The running upstream: `url` to route to, `requests` to assert on."""

    def __init__(self, server: _RecordingServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self._server.snapshot()

    @property
    def count(self) -> int:
        return len(self.requests)

    def answer_with(self, body: bytes, content_type: str = "application/json") -> None:
        """Answer every later request with `body` (a test's stand-in for a misbehaving server)."""
        self._server.answer = (body, content_type)


@contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    server = _RecordingServer()
    thread = threading.Thread(target=server.serve_forever, name="recording-upstream", daemon=True)
    thread.start()
    try:
        yield RecordingUpstream(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
