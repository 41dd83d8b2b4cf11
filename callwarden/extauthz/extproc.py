"""The Envoy ext_proc service: request and response body hooks for particular JSON-RPC methods.

ext_authz stays the one decision point for every request (DESIGN.md §10). Some methods need more
than a yes or no: a `tools/list` response must lose the tools this caller could never call; an
approved task's `tasks/get` becomes the original `tools/call`. That work needs the bodies, which
only Envoy's External Processing filter (envoy.service.ext_proc.v3) hands out, and ext_proc
cannot see the JSON-RPC method when the request headers arrive. So the two filters split it:

1. ext_authz (which has parsed the body) marks an allowed request whose method has a hook with
   `x-callwarden-hook: <hook name> <McpServer key>` (the server it decided the request for, so
   both filters agree on it whatever the route; a client-sent value never survives: every
   client-sent `x-callwarden-*` header is removed, and this service removes the mark before the
   request goes upstream);
2. Envoy runs the ext_proc filter only for marked requests (`ExtensionWithMatcher` keyed on that
   header, see `envoy.py`): every other request, a plain `tools/call` included, opens no ext_proc
   stream at all;
3. this service reads the hook from the headers, asks for exactly the bodies the hook needs
   (processing-mode override), and lets the hook rewrite them.

A hook is a `BodyHook`: its name, the JSON-RPC methods it engages for, which bodies it needs, and
two functions (request body in, replacement out; response body in, replacement out). Register it
in `Hooks`; `start_extauthz` hands the same `Hooks` to the Enforcer (which marks requests) and to
this service (which runs them). Everything fails closed: a hook that raises, a token that no
longer validates, a stream that breaks answers the client with a JSON-RPC error, never with the
unprocessed body; if this service is unreachable, the filter's `failure_mode_allow: false` makes
Envoy answer 500.

Threads: grpcio's sync server runs one stream on one pool thread for the stream's whole life,
upstream latency included. Streams are capped (`max_streams`, beyond that the stream is refused
and Envoy fails the request closed) and the pool is sized for checks plus streams, so slow
upstreams behind hooked requests can never take the threads that ext_authz checks run on.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import grpc
import orjson
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    HeadersResponse,
    HttpHeaders,
    ImmediateResponse,
    ProcessingRequest,
    ProcessingResponse,
)

from callwarden.extauthz import metrics
from callwarden.extauthz.token import TokenRejected
from callwarden.policy.bundle import CompiledServer

log = logging.getLogger(__name__)

HOOK_HEADER: Final = "x-callwarden-hook"
EXTERNAL_PROCESSOR_SERVICE: Final = "envoy.service.ext_proc.v3.ExternalProcessor"
# Concurrent ext_proc streams one process serves; each holds a pool thread while it lives.
DEFAULT_MAX_STREAMS: Final = 16
# JSON-RPC "internal error": a hook could not do its work, so the exchange is refused.
HOOK_FAILED: Final = -32603

_OVERWRITE: Final = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_HOOK_NAME: Final = re.compile(r"[a-z0-9-]+")


class HookFailure(Exception):
    """A hook refuses the exchange: the client gets a JSON-RPC error with `code` and `message`."""

    def __init__(self, message: str, code: int = HOOK_FAILED, request_id: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id  # the JSON-RPC id the error answers, when the hook knows it


@dataclass
class Exchange:
    """One hooked HTTP exchange, as a hook sees it; filled in as the stream goes.

    `claims` were validated again here (the token cache makes that a dictionary lookup), so a
    hook never trusts anything ext_authz did not also see. `revision` is the bundle revision the
    exchange is decided by, from the request headers on (a swap mid-exchange does not split it).
    """

    hook: BodyHook
    server: CompiledServer
    revision: str
    claims: Mapping[str, Any]
    request_headers: Mapping[str, str]
    decision_id: str | None
    request_body: bytes = b""
    response_status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def response_content_type(self) -> str:
        return self.response_headers.get("content-type", "").split(";", 1)[0].strip().lower()


class BodyHook(Protocol):
    """What a feature plugs in for the JSON-RPC methods it rewrites.

    `request_body` / `response_body` return the replacement bytes, or None to pass the body on
    unchanged; raising HookFailure answers the client with a JSON-RPC error instead.
    `response_body` is called only for 2xx responses (a 401 or 404 from the server keeps its
    meaning for the MCP client and carries no result to rewrite).
    """

    @property
    def name(self) -> str: ...  # the x-callwarden-hook value: [a-z0-9-]+

    @property
    def methods(self) -> frozenset[str]: ...  # ext_authz engages the hook for these

    @property
    def wants_request_body(self) -> bool: ...

    @property
    def wants_response_body(self) -> bool: ...

    def request_body(self, exchange: Exchange, body: bytes) -> bytes | None: ...

    def response_body(self, exchange: Exchange, body: bytes) -> bytes | None: ...


class Hooks:
    """The registered hooks, by name and by the JSON-RPC method that engages them."""

    def __init__(self, hooks: Iterable[BodyHook] = ()) -> None:
        self._by_name: dict[str, BodyHook] = {}
        self._by_method: dict[str, str] = {}
        for hook in hooks:
            if _HOOK_NAME.fullmatch(hook.name) is None:  # the mark is "<name> <server>"
                raise ValueError(f"hook name {hook.name!r} is not [a-z0-9-]+")
            if hook.name in self._by_name:
                raise ValueError(f"two hooks are named {hook.name!r}")
            self._by_name[hook.name] = hook
            for method in hook.methods:
                if method in self._by_method:
                    taken = self._by_method[method]
                    raise ValueError(f"hooks {taken!r} and {hook.name!r} both claim {method}")
                self._by_method[method] = hook.name

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def named(self, name: str) -> BodyHook | None:
        return self._by_name.get(name)

    def for_methods(self, methods: Sequence[str | None]) -> str | None:
        """The hook a body engages (its messages' methods, None for responses), or None.

        Raises ValueError when the messages engage different hooks: one exchange runs one hook.
        """
        if len(methods) == 1:  # the common body, on the path of every check: one dict lookup
            return self._by_method.get(methods[0]) if methods[0] is not None else None
        names = {self._by_method[m] for m in methods if m is not None and m in self._by_method}
        if len(names) > 1:
            raise ValueError(f"one body engages several response hooks ({', '.join(sorted(names))})")
        return names.pop() if names else None


class StateSource(Protocol):
    """Where the service reads the enforcement state (the Enforcer: one swap serves both)."""

    @property
    def state(self) -> Any: ...  # callwarden.extauthz.decide.EnforcementState (no import cycle)


def hook_mark(hook: str, server: str) -> str:
    """The `x-callwarden-hook` value ext_authz sets: the hook and the McpServer it decided for."""
    return f"{hook} {server}"


def _headers_of(message: HttpHeaders) -> dict[str, str]:
    # Envoy 1.40 sends raw_value (bytes) and leaves value empty; older ones the reverse.
    return {
        header.key.lower(): header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        for header in message.headers.headers
    }


def _status_of(headers: Mapping[str, str]) -> int | None:
    try:
        return int(headers.get(":status", ""))
    except ValueError:
        return None


def error_body(request_id: Any, code: int, message: str) -> bytes:
    """A JSON-RPC error response (what a refused exchange sends instead of the body)."""
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def _immediate(body: bytes, decision_id: str | None, status: int = 200) -> ProcessingResponse:
    response = ProcessingResponse()
    immediate: ImmediateResponse = response.immediate_response
    immediate.status.code = status  # an open enum: any HTTP status reaches the client as sent
    immediate.body = body
    headers = {"content-type": "application/json"}
    if decision_id is not None:
        headers["x-callwarden-decision-id"] = decision_id
    for name, value in headers.items():
        option = immediate.headers.set_headers.add()
        option.header.CopyFrom(HeaderValue(key=name, raw_value=value.encode()))
        option.append_action = _OVERWRITE
    return response


def _continue_headers(phase: str, remove: Sequence[str] = ()) -> ProcessingResponse:
    response = ProcessingResponse()
    answer: HeadersResponse = getattr(response, phase)
    answer.response.header_mutation.remove_headers.extend(remove)
    return response


def _body_answer(phase: str, replacement: bytes | None) -> ProcessingResponse:
    response = ProcessingResponse()
    answer: BodyResponse = getattr(response, phase)
    if replacement is not None:
        answer.response.body_mutation.body = replacement
    else:
        answer.response.SetInParent()  # CONTINUE, body unchanged
    return response


def _unmarked() -> ProcessingResponse:
    response = _continue_headers("request_headers")
    response.mode_override.CopyFrom(
        ProcessingMode(
            response_header_mode=ProcessingMode.SKIP,
            request_trailer_mode=ProcessingMode.SKIP,
            response_trailer_mode=ProcessingMode.SKIP,
        )
    )
    return response


def _mode_for(hook: BodyHook) -> ProcessingMode:
    mode = ProcessingMode(
        request_header_mode=ProcessingMode.SEND,
        response_header_mode=ProcessingMode.SEND if hook.wants_response_body else ProcessingMode.SKIP,
        request_trailer_mode=ProcessingMode.SKIP,
        response_trailer_mode=ProcessingMode.SKIP,
    )
    if hook.wants_request_body:
        mode.request_body_mode = ProcessingMode.BUFFERED
    if hook.wants_response_body:
        mode.response_body_mode = ProcessingMode.BUFFERED
    return mode


class _Refused(Exception):
    """The exchange ends now with this immediate response."""

    def __init__(self, response: ProcessingResponse, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


class ExternalProcessor:
    """envoy.service.ext_proc.v3.ExternalProcessor over the Enforcer's state and the hooks."""

    def __init__(self, source: StateSource, hooks: Hooks, *, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self._source = source
        self._hooks = hooks
        self._slots = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams

    def Process(
        self, requests: Iterator[ProcessingRequest], context: grpc.ServicerContext
    ) -> Iterator[ProcessingResponse]:
        if not self._slots.acquire(blocking=False):
            metrics.EXTPROC_STREAMS.labels(hook="", outcome="refused-busy").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent ext_proc streams")
        try:
            yield from self._process(requests)
        finally:
            self._slots.release()

    def _process(self, requests: Iterator[ProcessingRequest]) -> Iterator[ProcessingResponse]:
        exchange: Exchange | None = None
        outcome = "completed"
        try:
            for request in requests:
                phase = request.WhichOneof("request")
                if phase == "request_headers":
                    headers = _headers_of(request.request_headers)
                    if headers.get(HOOK_HEADER) is None:
                        # Unmarked: only where ext_proc is wired without the header matcher
                        # (Envoy Gateway's EnvoyExtensionPolicy, say). Let it go, ask for nothing more.
                        outcome = "unmarked"
                        yield _unmarked()
                        return
                    exchange = self._start(headers)
                    # A body the hook may rewrite changes length: Envoy re-frames it without one.
                    framing = ("content-length",) if exchange.hook.wants_request_body else ()
                    # A response the hook reads must come uncompressed: ask the server for identity.
                    encoding = ("accept-encoding",) if exchange.hook.wants_response_body else ()
                    remove = (HOOK_HEADER, *framing, *encoding)
                    answer = _continue_headers("request_headers", remove=remove)
                    answer.mode_override.CopyFrom(_mode_for(exchange.hook))
                    yield answer
                elif exchange is None:  # Envoy always sends the request headers first
                    body = error_body(None, HOOK_FAILED, "ext_proc: no request headers")
                    raise _Refused(_immediate(body, None), phase)
                elif phase == "request_body":
                    exchange.request_body = request.request_body.body
                    yield _body_answer("request_body", self._run(exchange, "request", exchange.request_body))
                elif phase == "response_headers":
                    exchange.response_headers = _headers_of(request.response_headers)
                    exchange.response_status = _status_of(exchange.response_headers)
                    # The body may change length; Envoy re-frames it (chunked) without one.
                    yield _continue_headers("response_headers", remove=("content-length",))
                elif phase == "response_body":
                    body = request.response_body.body
                    yield _body_answer("response_body", self._run(exchange, "response", body))
                else:  # trailers are never asked for; answer in kind so Envoy is not left waiting
                    response = ProcessingResponse()
                    getattr(response, phase).SetInParent()
                    yield response
        except _Refused as refused:
            outcome = f"refused-{refused.reason}"
            yield refused.response
        finally:
            hook = exchange.hook.name if exchange is not None else ""
            metrics.EXTPROC_STREAMS.labels(hook=hook, outcome=outcome).inc()

    def _start(self, headers: Mapping[str, str]) -> Exchange:
        decision_id = headers.get("x-callwarden-decision-id")
        name, _, key = headers.get(HOOK_HEADER, "").partition(" ")
        hook = self._hooks.named(name)
        if hook is None:  # only ext_authz sets the header, and only to a registered hook's name
            message = "ext_proc: request carries no known callwarden hook"
            raise _Refused(_immediate(error_body(None, HOOK_FAILED, message), decision_id), "no-hook")
        state = self._source.state
        server = state.bundle.servers.get(key)
        if server is None:  # the bundle changed between the check and now, and dropped it
            message = "ext_proc: the McpServer of this request is no longer configured"
            raise _Refused(_immediate(error_body(None, HOOK_FAILED, message), decision_id), "no-route")
        try:
            claims = state.authenticators[server.key].token_claims(headers.get("authorization"))
        except TokenRejected as rejected:  # it expired between the check and now
            message = f"ext_proc: token rejected: {rejected.description}"
            raise _Refused(_immediate(error_body(None, HOOK_FAILED, message), decision_id), "token") from None
        return Exchange(hook, server, state.bundle.revision, claims, headers, decision_id)

    def _run(self, exchange: Exchange, phase: str, body: bytes) -> bytes | None:
        hook = exchange.hook
        try:
            if phase == "request":
                return hook.request_body(exchange, body)
            status = exchange.response_status
            if status is None or not 200 <= status < 300:
                return None
            return hook.response_body(exchange, body)
        except HookFailure as failure:
            body = error_body(failure.request_id, failure.code, failure.message)
            raise _Refused(_immediate(body, exchange.decision_id), "hook") from None
        except Exception:  # a bug in a hook must refuse the exchange, never pass the body on
            log.exception("ext_proc hook %s failed on the %s body", hook.name, phase)
            body = error_body(None, HOOK_FAILED, f"callwarden: the {hook.name} hook failed")
            raise _Refused(_immediate(body, exchange.decision_id), "hook-error") from None
