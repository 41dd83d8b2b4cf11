"""A loopback AuthZEN PDP whose answers a test scripts (real HTTP on 127.0.0.1, stdlib server).

By default it publishes its metadata and answers from an EmbeddedPdp (with the deciding rules in
each decision's context); a test replaces `metadata` (None: 404) or `answer` (status, body,
content type) to play a PDP that fails, and reads `calls` to see what the PEP sent.

    with scripted_pdp(pdp) as remote:
        remote.answer = lambda path, body: (500, b"boom", "text/plain")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from callwarden.policy.pdp import EmbeddedPdp

Answer = Callable[[str, Any], tuple[int, bytes, str]]
JSON: Final = "application/json"


@dataclass
class ScriptedPdp:
    pdp: EmbeddedPdp | None
    base_url: str = ""
    metadata: dict[str, Any] | None = None
    answer: Answer | None = None
    delay: float = 0.0  # seconds to wait before answering an evaluation
    calls: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body)

    def evaluation_calls(self) -> list[tuple[str, Any]]:
        return [(path, body) for method, path, body in self.calls if method == "POST"]

    def respond(self, method: str, path: str, raw: bytes) -> tuple[int, bytes, str]:
        body: Any = json.loads(raw) if raw else {}
        self.calls.append((method, path, body))
        if method == "GET":
            if self.metadata is None:
                return 404, b"no metadata", "text/plain"
            return 200, json.dumps(self.metadata).encode(), JSON
        time.sleep(self.delay)
        if self.answer is not None:
            return self.answer(path, body)
        assert self.pdp is not None
        if path.endswith("/evaluations"):
            return 200, json.dumps(self.pdp.access_evaluations(body, explain=True)).encode(), JSON
        return 200, json.dumps(self.pdp.access_evaluation(body, explain=True)).encode(), JSON


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: ScriptedPdp


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("content-length", "0"))))

    def _handle(self, raw: bytes) -> None:
        status, body, content_type = self.server.script.respond(self.command, self.path, raw)
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the PEP gave up (its timeout); nothing to answer
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def scripted_pdp(pdp: EmbeddedPdp | None, *, path: str = "") -> Iterator[ScriptedPdp]:
    """Serve a ScriptedPdp on a free loopback port; its base URL ends in `path` (e.g. "/tenant1")."""
    server = _Server(("127.0.0.1", 0), _Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}{path}"
    server.script = ScriptedPdp(
        pdp,
        base,
        {
            "policy_decision_point": base,
            "access_evaluation_endpoint": base + "/access/v1/evaluation",
            "access_evaluations_endpoint": base + "/access/v1/evaluations",
        },
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
