"""The AuthZEN 1.0 Authorization API of the embedded PDP, over HTTP (`callwarden pdp`).

Endpoints, at the default paths under the PDP's base URL (`policy_decision_point`):
`POST /access/v1/evaluation`, `POST /access/v1/evaluations`, `POST /access/v1/search/{subject,
resource,action}`, and the metadata at `GET /.well-known/authzen-configuration` (inserted
between host and path, so a base URL `https://pdp/tenant1` publishes it at
`/.well-known/authzen-configuration/tenant1` and serves the API under `/tenant1/access/v1/...`).

Status codes (AuthZEN §Error Responses): a deny is `200 {"decision": false}`, never an error.
400 for a body that is not one strict JSON object (wrong or missing Content-Type, empty,
malformed, duplicate members, too deep) or is not a valid request; 401 (with
`WWW-Authenticate: Bearer`) when bearer tokens are configured and the PEP did not present one;
404 and 405 for other paths and methods; 411 for a body without Content-Length; 413 over the
size limit; 500 if evaluation itself fails. Error bodies are a plain-text message. Every
response carries `X-Request-ID`: the PEP's, echoed exactly, or a fresh one.

Decisions answer `{"decision": bool}` alone unless `explain` is set, which adds the deciding
rules (`context.reasons`): rule names are policy internals, and the interop runners compare
responses exactly. Per-item errors of a boxcar always carry their `context.error`.

With an access request server (`authzen.access_requests`), the PDP is also an ARAP ARS: the
metadata publishes `access_request_endpoint`, `jwks_uri` and the capability URN, and the
request, status and cancel endpoints answer under the same base path (errors there are RFC 9457
problem documents, as ARAP requires).

The API object (`AuthzenApi`) knows nothing of sockets; `start_pdp` serves it with the
standard library's threading HTTP server (HTTP/1.1 keep-alive, optional TLS).
"""

from __future__ import annotations

import hmac
import logging
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from callwarden.authzen.access_requests import (
    CAPABILITY,
    JWKS_PATH,
    PROBLEM,
    REQUESTS_PATH,
    AccessRequestServer,
    Problem,
)
from callwarden.authzen.search import DEFAULT_MAX_PAGE_SIZE, SEARCH_KINDS, SearchKind, search
from callwarden.policy.evaluation import AuthzenRequestError
from callwarden.policy.pdp import EmbeddedPdp
from callwarden.policy.strictjson import JsonRejected, loads

__all__ = ["ApiOptions", "AuthzenApi", "Headers", "Response", "RunningPdp", "start_pdp"]

LOG = logging.getLogger(__name__)

WELL_KNOWN: Final = "/.well-known/authzen-configuration"
ENDPOINTS: Final[Mapping[str, str]] = {
    "access_evaluation_endpoint": "/access/v1/evaluation",
    "access_evaluations_endpoint": "/access/v1/evaluations",
    "search_subject_endpoint": "/access/v1/search/subject",
    "search_resource_endpoint": "/access/v1/search/resource",
    "search_action_endpoint": "/access/v1/search/action",
}
JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"
# What an X-Request-ID may be to be echoed: visible ASCII and inner spaces. A folded header
# arrives with CR LF inside (http.client keeps obs-fold), which must never reach a response.
_ECHOABLE_ID: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,1022}[\x21-\x7e])?")
TOKEN68: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 9110 §11.2: what a Bearer credential may be
_BEARER: Final = re.compile(r"Bearer +(" + TOKEN68.pattern + ")", re.IGNORECASE)

Headers = Mapping[str, Sequence[str]]  # lower-case header name -> every value, in arrival order


@dataclass(frozen=True)
class ApiOptions:
    bearer_tokens: tuple[str, ...] = ()  # shared secrets PEPs present as `Bearer`; empty: no authentication
    explain: bool = False  # answer the deciding rules in each decision's context
    max_body_bytes: int = 256 * 1024
    max_depth: int = 64  # JSON nesting; the evaluation core bounds entities again (policy.evaluation)
    max_page_size: int = DEFAULT_MAX_PAGE_SIZE
    capabilities: tuple[str, ...] = ()  # capability URNs published in the metadata


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def error(status: int, message: str, *headers: tuple[str, str]) -> Response:
    """An error response: AuthZEN's "error message string", as plain text."""
    return Response(status, message.encode("utf-8", "backslashreplace"), TEXT, headers)


def _json(value: Any) -> Response:
    return Response(200, orjson.dumps(value), JSON)


def request_id(headers: Headers) -> str:
    """The PEP's X-Request-ID if it can be echoed verbatim, else a fresh one."""
    given = headers.get("x-request-id")
    if given and _ECHOABLE_ID.fullmatch(given[0]):
        return given[0]
    return str(uuid.uuid4())


Endpoint = Callable[[bytes], Response]


class AuthzenApi:
    """The Authorization API over one EmbeddedPdp; safe to call from many threads."""

    def __init__(
        self,
        pdp: EmbeddedPdp,
        base_url: str,
        options: ApiOptions | None = None,
        access: AccessRequestServer | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"the PDP base URL must be http(s), without query or fragment: {base_url!r}")
        if not all(TOKEN68.fullmatch(token) for token in (options or ApiOptions()).bearer_tokens):
            raise ValueError("bearer tokens must be non-empty token68 strings (RFC 9110 §11.2)")
        self.pdp = pdp
        self.base_url = base_url.rstrip("/")
        self.options = options or ApiOptions()
        base_path = parts.path.rstrip("/")
        self.access = access
        self._base_path = base_path
        self.metadata = {
            "policy_decision_point": self.base_url,
            **{name: self.base_url + path for name, path in ENDPOINTS.items()},
            "capabilities": list(self.options.capabilities),
        }
        if access is not None:
            self.metadata["access_request_endpoint"] = self.base_url + REQUESTS_PATH
            self.metadata["jwks_uri"] = self.base_url + JWKS_PATH
            self.metadata["capabilities"] = [*self.metadata["capabilities"], CAPABILITY]
        evaluation, evaluations, *searches = (base_path + path for path in ENDPOINTS.values())
        self._post: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            evaluation: self._evaluation,
            evaluations: self._evaluations,
            **{path: self._searcher(kind) for path, kind in zip(searches, SEARCH_KINDS, strict=True)},
        }
        self._metadata_path = WELL_KNOWN + base_path
        self._secrets = tuple(token.encode("utf-8") for token in self.options.bearer_tokens)

    def accept(self, method: str, target: str, headers: Headers) -> Response | Endpoint:
        """The answer for a request known from its head alone (an error, or the metadata), or
        the endpoint that answers its body. Routing, authentication and the content type are
        checked before any body is read."""
        path = urlsplit(target).path
        if path == self._metadata_path:
            if method in ("GET", "HEAD"):
                return _json(self.metadata)
            return error(405, f"{method} is not allowed here; use GET", ("Allow", "GET, HEAD"))
        routed = self.access.route(self._base_path, path) if self.access is not None else None
        if routed is not None:
            return self._access_request(method, routed, headers)
        handler = self._post.get(path)
        if handler is None:
            return error(404, f"no AuthZEN endpoint at {path}")
        if method != "POST":
            return error(405, f"{method} is not allowed here; use POST", ("Allow", "POST"))
        refused = self._authenticate(headers) or _content_type_problem(headers)
        if refused is not None:
            return refused
        return lambda raw: self._answer(handler, raw)

    def _access_request(
        self, method: str, routed: tuple[str, str | None], headers: Headers
    ) -> Response | Endpoint:
        """The ARS endpoints (see `authzen.access_requests`)."""
        access = self.access
        assert access is not None
        endpoint, task_id = routed
        allowed = {
            "submit": ("POST",),
            "jwks": ("GET", "HEAD"),
            "status": ("GET", "HEAD"),
            "cancel": ("POST", "DELETE"),
        }
        if method not in allowed[endpoint]:
            methods = ", ".join(allowed[endpoint])
            return error(405, f"{method} is not allowed here; use {methods}", ("Allow", methods))
        if endpoint == "jwks":
            return _json(access.signer.jwks())
        refused = self._authenticate(headers)
        if refused is not None:
            return refused
        if endpoint == "status" and task_id is not None:
            return _access_answer(lambda: access.status(task_id, self.base_url))
        if endpoint == "cancel" and task_id is not None:
            return lambda raw: _access_answer(lambda: access.cancel(task_id, self.base_url))
        refused = _content_type_problem(headers)
        if refused is not None:
            return refused
        keys = headers.get("idempotency-key", ())
        if len(keys) > 1:
            return _problem(Problem(None, "more than one Idempotency-Key"))
        key = keys[0] if keys else None
        return lambda raw: self._answer_access(raw, key)

    def _answer_access(self, raw: bytes, key: str | None) -> Response:
        access = self.access
        assert access is not None
        try:
            body = loads(raw, max_depth=self.options.max_depth)
        except JsonRejected as rejected:
            return _problem(
                Problem(None, f"the request body is not strict JSON ({rejected.reason}): {rejected.message}")
            )
        if not isinstance(body, dict):
            return _problem(Problem(None, "the request body must be a JSON object"))
        return _access_answer(lambda: access.submit(body, key, self.base_url))

    def _authenticate(self, headers: Headers) -> Response | None:
        if not self._secrets:
            return None
        given = headers.get("authorization", ())
        if not given:
            return error(401, "authentication required", ("WWW-Authenticate", 'Bearer realm="authzen"'))
        if len(given) > 1:
            return error(400, "more than one Authorization header")
        match = _BEARER.fullmatch(given[0])
        presented = match.group(1).encode("ascii") if match else b""
        # Compare against every secret, always: the time taken says nothing about which matched.
        if not sum(hmac.compare_digest(presented, secret) for secret in self._secrets):
            challenge = 'Bearer realm="authzen", error="invalid_token"'
            return error(401, "the bearer token is not accepted", ("WWW-Authenticate", challenge))
        return None

    def _answer(self, handler: Callable[[dict[str, Any]], dict[str, Any]], raw: bytes) -> Response:
        if not raw.strip(b" \t\r\n"):
            return error(400, "the request body is empty")
        try:
            body = loads(raw, max_depth=self.options.max_depth)
        except JsonRejected as rejected:
            return error(400, f"the request body is not strict JSON ({rejected.reason}): {rejected.message}")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        try:
            return _json(handler(body))
        except AuthzenRequestError as problem:
            return error(400, f"invalid request: {problem}")
        except Exception:  # a bug or an exhausted resource: fail closed, loudly
            LOG.exception("AuthZEN request failed")
            return error(500, "internal error")

    def _evaluation(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.pdp.access_evaluation(body, explain=self.options.explain)

    def _evaluations(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.pdp.access_evaluations(body, explain=self.options.explain)

    def _searcher(self, kind: SearchKind) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def answer(body: dict[str, Any]) -> dict[str, Any]:
            return search(self.pdp, kind, body, max_page_size=self.options.max_page_size)

        return answer


def _problem(problem: Problem) -> Response:
    return Response(problem.status, problem.body(), PROBLEM)


def _access_answer(answer: Callable[[], Any]) -> Response:
    """An ARS answer as a response: its JSON and Location, or its RFC 9457 problem."""
    try:
        given = answer()
    except Problem as problem:
        return _problem(problem)
    except Exception:  # a bug or a store that cannot answer: fail closed, loudly
        LOG.exception("access request failed")
        return _problem(Problem(None, "internal error", 500))
    headers = (("Location", given.location),) if given.location is not None else ()
    return Response(given.status, orjson.dumps(given.body), JSON, headers)


def _content_type_problem(headers: Headers) -> Response | None:
    given = headers.get("content-type", ())
    if len(given) != 1:
        return error(400, "more than one Content-Type" if given else "Content-Type must be application/json")
    media_type, *parameters = (part.strip().lower() for part in given[0].split(";"))
    if media_type != JSON:
        return error(400, f"Content-Type must be application/json, not {given[0][:100]!r}")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') != "utf-8":
            return error(400, "application/json is UTF-8; no other charset is accepted")
    return None


# --- Serving ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _PdpHttpServer
    protocol_version = "HTTP/1.1"  # keep-alive: a PEP keeps its connection to the PDP open
    timeout = 30  # seconds a connection may stall mid-request (slow clients hold a thread)
    server_version = "callwarden-pdp"
    sys_version = ""

    def do_POST(self) -> None:
        headers = _headers(self)
        outcome = self.server.api.accept(self.command, self.path, headers)
        if isinstance(outcome, Response):
            self._send(outcome, close=_has_body(headers))
            return
        raw = self._read_body(headers)
        if isinstance(raw, Response):
            self._send(raw, close=True)
        elif raw is not None:
            self._send(outcome(raw))

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def do_HEAD(self) -> None:
        outcome = self.server.api.accept("HEAD", self.path, _headers(self))
        self._send(outcome if isinstance(outcome, Response) else error(405, "use POST"), head=True)

    def _read_body(self, headers: Headers) -> bytes | Response | None:
        """The body, an error to answer, or None when the client went away mid-body."""
        if "transfer-encoding" in headers:
            return error(411, "send the body with a Content-Length")
        lengths = headers.get("content-length", ("0",))
        if len(lengths) != 1 or not lengths[0].isascii() or not lengths[0].isdigit():
            return error(400, "one decimal Content-Length is required")
        length, limit = int(lengths[0]), self.server.api.options.max_body_bytes
        if length > limit:
            return error(413, f"the body is {length} bytes; the limit is {limit}")
        try:
            raw = self.rfile.read(length)
        except OSError:  # the read timed out or the connection broke: nobody is left to answer
            raw = b""
        if len(raw) != length:
            self.close_connection = True
            return None
        return raw

    def parse_request(self) -> bool:
        # A keep-alive connection reuses the handler: forget the previous request's headers, so
        # an error about this request line never echoes the previous request's X-Request-ID.
        self.__dict__.pop("headers", None)
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        """Every response, the standard library's own errors included, carries X-Request-ID."""
        super().send_response(code, message)
        parsed = getattr(self, "headers", None)
        given = parsed.get_all("X-Request-ID", []) if parsed is not None else []
        self.send_header("X-Request-ID", request_id({"x-request-id": given}))

    def _send(self, response: Response, *, close: bool = False, head: bool = False) -> None:
        self.send_response(response.status)
        if response.content_type is not None:
            self.send_header("Content-Type", response.content_type)
            self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if close:  # the request's body was not read: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)


def _headers(handler: BaseHTTPRequestHandler) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in handler.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    return headers


def _has_body(headers: Headers) -> bool:
    lengths = headers.get("content-length", ())
    return "transfer-encoding" in headers or any(value.strip() not in ("", "0") for value in lengths)


class _PdpHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ssl_context = ssl_context
        self.api: AuthzenApi  # set once bound: the base URL may name the port the OS chose
        super().__init__((host, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's own thread: the TLS handshake of a slow client holds only it."""
        if self.ssl_context is not None:
            request.settimeout(_Handler.timeout)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)


@dataclass(frozen=True)
class RunningPdp:
    api: AuthzenApi
    port: int

    @property
    def base_url(self) -> str:
        return self.api.base_url


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` as (host, port); raises ValueError."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, not {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


@contextmanager
def start_pdp(
    pdp: EmbeddedPdp,
    *,
    listen: str,
    base_url: str | None = None,
    options: ApiOptions | None = None,
    ssl_context: ssl.SSLContext | None = None,
    access: AccessRequestServer | None = None,
) -> Iterator[RunningPdp]:
    """Serve the Authorization API on `listen` until the block exits.

    `base_url` is the `policy_decision_point` to publish (the URL PEPs use, e.g. behind a
    proxy); by default the scheme, listen host and bound port.
    """
    host, port = parse_listen(listen)
    server = _PdpHttpServer(host, port, ssl_context)
    bound = int(server.server_address[1])
    if base_url is None:
        scheme = "https" if ssl_context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        base_url = f"{scheme}://{shown}:{bound}"
    try:
        server.api = AuthzenApi(pdp, base_url, options, access)
    except ValueError:
        server.server_close()
        raise
    thread = threading.Thread(target=server.serve_forever, name="authzen-pdp", daemon=True)
    thread.start()
    try:
        yield RunningPdp(server.api, bound)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
