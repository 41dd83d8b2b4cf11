"""The `tools-list` body hook: a `tools/list` response lists only the tools the caller could call.

ext_authz lets a `tools/list` request through and marks it; Envoy hands the whole response to
this hook (extproc.py), which removes every tool the catalog question (`policy.catalog`) says this
subject and agent could never be allowed to call, and passes everything else on untouched: other
tools byte-identical in meaning, `nextCursor` and every other member as sent, every other message
of an event stream byte for byte. A response with nothing to remove goes out exactly as received.
The bundle revision of the exchange decides (the one ext_authz decides the following calls by),
and every call, listed or not, is still decided by ext_authz.

The response is untrusted input, parsed as strictly as a request (strictjson, the JSON-RPC
shape, SSE framing): one that cannot be parsed, that answers no `tools/list` request of the body
or answers one twice, whose result is not `{tools: [{name, ...}, ...], nextCursor?: string}`, or
that is larger than the limit, is replaced by a JSON-RPC error (-32603). It never passes
unfiltered. The exceptions are deliberate: a non-2xx response (it carries no result; 401 and 404
mean something to the MCP client) and a server whose PDP is remote and cannot answer the catalog
question here (the list passes as is and `callwarden_catalog_responses_total{outcome="unfiltered"}`
counts it).

Mapping integrity: the tools that pass are where a gateway learns the mappings servers declare.
Each listed tool's declared mapping is hashed like the operator's discovery does; one that differs
from the platform's pin (`acceptedMappingHash`, or the `declared` object the bundle carries) is
drift: counted in `callwarden_mapping_drift_total` and named in the list's decision-log line. It
is never enforced: the PEP enforces only what the bundle carries.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from callwarden.authzen.client import RemoteAuthzenPdp
from callwarden.extauthz import metrics
from callwarden.extauthz.audit import DecisionLog, log_time, new_decision_id
from callwarden.extauthz.extproc import Exchange, HookFailure
from callwarden.extauthz.jsonrpc import BodyRejected, parse_body, parse_value
from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.sse import Event, StreamRejected, parse_events, render_event
from callwarden.policy import strictjson
from callwarden.policy.catalog import Lister, Listing, SearchedCatalog, catalog_for
from callwarden.policy.mapping import AuthorizationRequests
from callwarden.policy.mapping.digest import declared_mapping, mapping_sha256
from callwarden.policy.model import McpServer
from callwarden.policy.remote import PdpUnavailable

log = logging.getLogger(__name__)

TOOLS_LIST: Final = "tools/list"
HOOK_NAME: Final = "tools-list"
# A whole response as Envoy buffers it; a larger one is refused, never passed unfiltered.
DEFAULT_MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
MAX_DEPTH: Final = 128  # inputSchemas nest; far below strictjson's own ceiling
# The decision-log line names at most this many removed tools (and always counts them all).
MAX_NAMED: Final = 100
RESPONSE_REJECTED: Final = -32603
_NO_CONTENT: Final = frozenset({202, 204})


class _Rejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Filtered:
    """What filtering one response did, for the log line and the metrics."""

    listed: int = 0
    removed: list[tuple[str, str]] | None = None  # (tool, reason)
    drift: list[dict[str, str | None]] | None = None

    def remove(self, tool: str, reason: str) -> None:
        if self.removed is None:
            self.removed = []
        self.removed.append((tool, reason))

    def drifted(self, entry: dict[str, str | None]) -> None:
        if self.drift is None:
            self.drift = []
        self.drift.append(entry)


def _json(value: Any) -> str:
    # The standard encoder: strictjson may hand back integers beyond 64 bits, which orjson refuses.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class _Pins:
    """What the platform pinned: a hash per tool a declaration may decide (None: not pinned),
    and the tools whose own platform `mapping` makes any declaration irrelevant."""

    hashes: Mapping[str, str | None]
    platform: frozenset[str]

    @classmethod
    def of(cls, server: McpServer) -> _Pins:
        hashes: dict[str, str | None] = {}
        for tool in server.spec.tools:
            pinned = tool.accepted_mapping_hash
            if pinned is None and tool.declared is not None:
                declared = declared_mapping(tool.declared.get("inputSchema") or {})
                pinned = mapping_sha256(declared) if declared is not None else None
            hashes[tool.name] = pinned
        platform = frozenset(tool.name for tool in server.spec.tools if tool.mapping is not None)
        return cls(hashes, platform)

    def compare(self, tool: Mapping[str, Any], out: _Filtered) -> None:
        """Record drift when `tool` declares a mapping other than the pinned one."""
        schema = tool.get("inputSchema")
        declared = declared_mapping(schema) if type(schema) is dict else None
        name = tool["name"]
        if declared is None or name in self.platform:
            return
        digest = mapping_sha256(declared)
        pinned = self.hashes.get(name)
        if digest != pinned:
            out.drifted({"tool": name, "sha256": digest, "pinned": pinned})


class ToolsListHook:
    """Filters `tools/list` responses by the catalog question; see the module docstring."""

    name: Final = HOOK_NAME
    methods: Final = frozenset({TOOLS_LIST})
    wants_request_body: Final = True  # the request ids: which response answers the tools/list
    wants_response_body: Final = True

    def __init__(
        self,
        decision_log: DecisionLog,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        missions: MissionBook | None = None,
    ) -> None:
        self._log = decision_log
        self._max_response_bytes = max_response_bytes
        self._missions = missions  # a list under a mission shows only what it can reach

    def request_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        return None

    def response_body(self, exchange: Exchange, body: bytes) -> bytes | None:
        started = time.perf_counter()
        server = exchange.server.key
        ids, answerable = _request_ids(exchange)
        if not ids:  # a tools/list notification: nothing answers it
            return None
        if exchange.response_status in _NO_CONTENT and not body:  # no content, nothing to list
            return None
        filtered = _Filtered()
        try:
            catalog, how = _catalog(exchange)
            if self._missions is not None:
                catalog = self._missions.narrow(
                    exchange.server, exchange.request_headers, exchange.claims, catalog
                )
            replacement = self._rewrite(exchange, body, _Rewrite(ids, answerable, catalog, filtered))
        except Exception as error:  # _Rejected, or a bug: either way refused, and logged
            reason, detail = (
                (error.reason, error.message) if isinstance(error, _Rejected) else ("internal-error", "")
            )
            if not isinstance(error, _Rejected):
                log.exception("the tools-list hook failed on a response of %s", server)
            metrics.CATALOG_RESPONSES.labels(server=server, outcome="rejected").inc()
            self._record(exchange, filtered, started, f"rejected:{reason}", detail)
            message = f"callwarden refused the tools/list answer ({reason})"
            raise HookFailure(message, RESPONSE_REJECTED, ids[0] if len(ids) == 1 else None) from None
        metrics.CATALOG_RESPONSES.labels(server=server, outcome=how).inc()
        if filtered.removed:
            metrics.CATALOG_TOOLS_REMOVED.labels(server=server).inc(len(filtered.removed))
        if filtered.drift:
            metrics.MAPPING_DRIFT.labels(server=server).inc(len(filtered.drift))
        self._record(exchange, filtered, started, f"catalog:{how}", "")
        return replacement

    # -- parsing and rewriting ----------------------------------------------------------

    def _rewrite(self, exchange: Exchange, body: bytes, rewrite: _Rewrite) -> bytes | None:
        limit = self._max_response_bytes
        if len(body) > limit:
            raise _Rejected("too-large", f"response is {len(body)} bytes; the limit is {limit}")
        encoding = exchange.response_headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # the request asked for identity (extproc.py)
            raise _Rejected("content-encoding", f"the response is {encoding!r}-encoded")
        content_type = exchange.response_content_type
        rewrite.pins = _Pins.of(exchange.server.server)
        if content_type == "application/json":
            return rewrite.json(body)
        if content_type == "text/event-stream":
            return rewrite.stream(body)
        raise _Rejected(
            "content-type", f"a tools/list response is JSON or an event stream, not {content_type!r}"
        )

    def _record(self, exchange: Exchange, out: _Filtered, started: float, reason: str, message: str) -> None:
        removed = out.removed or []
        now_ns = time.time_ns()
        self._log.record(
            {
                "time": log_time(now_ns),
                "decision_id": new_decision_id(now_ns),
                "server": exchange.server.key,
                "http_method": "POST",
                "calls": [],
                "method": TOOLS_LIST,
                "tool": None,
                "requests": [],
                "decision": "deny" if reason.startswith("rejected") else "allow",
                "code": RESPONSE_REJECTED if reason.startswith("rejected") else 200,
                "reasons": [reason],
                "message": message,
                "revision": exchange.revision,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "catalog": {
                    "check_decision_id": exchange.decision_id,
                    "listed": out.listed,
                    "removed_count": len(removed),
                    "removed": [{"tool": tool, "reason": why} for tool, why in removed[:MAX_NAMED]],
                    "drift": out.drift or [],
                },
            }
        )


def _catalog(exchange: Exchange) -> tuple[Lister | None, str]:
    """Who answers the catalog question for this exchange, and how (the metric's outcome).

    The embedded PDP answers it itself. A remote PDP is asked its Action Search API with the
    tools/list request's subject, resource and context, when its metadata offers one; one that
    offers none leaves the list unfiltered (counted). A search that fails refuses the list.
    """
    local = catalog_for(exchange.server, exchange.claims)
    if local is not None:
        return local, "filtered"
    pdp = exchange.server.pdp
    if not isinstance(pdp, RemoteAuthzenPdp):
        return None, "unfiltered"
    mapped = exchange.server.mapping.map(TOOLS_LIST, {}, exchange.claims)
    if not isinstance(mapped, AuthorizationRequests) or len(mapped.requests) != 1:
        raise _Rejected("mapping", "the tools/list request maps to no single AuthZEN request")
    request = {key: value for key, value in mapped.requests[0].items() if key != "action"}
    try:
        actions = pdp.search_actions(request)
    except PdpUnavailable as error:
        raise _Rejected("pdp", f"the AuthZEN PDP's action search failed: {error}") from None
    return (None, "unfiltered") if actions is None else (SearchedCatalog(actions), "filtered-action-search")


def _request_ids(exchange: Exchange) -> tuple[list[str | int], set[str | int]]:
    """The ids of the body's tools/list requests, and of all its requests (ext_authz parsed this
    body already)."""
    try:
        body = parse_body(exchange.request_body, max_bytes=exchange.server.server.spec.max_request_bytes)
    except BodyRejected as rejected:  # cannot be: ext_authz allowed it; stay closed anyway
        raise HookFailure(f"callwarden: the tools/list request does not parse ({rejected.reason})") from None
    requests = [m for m in body.messages if m.kind == "request" and m.id is not None]
    listed = [m.id for m in requests if m.method == TOOLS_LIST and m.id is not None]
    return listed, {m.id for m in requests if m.id is not None}


def _loads(raw: bytes) -> Any:
    try:
        value = strictjson.loads(raw, max_depth=MAX_DEPTH)
        parse_value(value)
    except strictjson.JsonRejected as rejected:
        raise _Rejected(rejected.reason, rejected.message) from None
    except BodyRejected as rejected:
        raise _Rejected(rejected.reason, rejected.message) from None
    return value


_UNFILTERED: Final = Listing(True, "unfiltered")


class _Rewrite:
    """One response's rewrite: the tools/list answers it must hold (once each) and filters, and
    the other requests of the body, whose answers pass as they are."""

    def __init__(
        self, ids: Sequence[str | int], answerable: set[str | int], catalog: Lister | None, out: _Filtered
    ) -> None:
        self._ids = ids
        self._answerable = answerable
        self._answered: set[str | int] = set()
        self._catalog = catalog
        self._out = out
        self.pins = _Pins({}, frozenset())

    def json(self, body: bytes) -> bytes | None:
        value = _loads(body)
        changed = self._message(value)
        self._check_answered()
        return _json(value).encode() if changed else None

    def stream(self, body: bytes) -> bytes | None:
        try:
            events = parse_events(body)
        except StreamRejected as rejected:
            raise _Rejected(rejected.reason, rejected.message) from None
        parts: list[bytes] = []
        copied = 0  # every byte outside a rewritten event goes out as it came, separators too
        for event in events:
            replacement = self._event(event)
            if replacement is not None:
                parts += [body[copied : event.start], replacement]
                copied = event.end
        self._check_answered()
        return b"".join([*parts, body[copied:]]) if parts else None

    def _event(self, event: Event) -> bytes | None:
        """The event rewritten, or None when it stays as it is."""
        if not event.data:  # a priming event (id, retry) or a comment carries no message
            return None
        value = _loads(event.data.encode())
        return render_event(event, _json(value)) if self._message(value) else None

    def _check_answered(self) -> None:
        missing = [request_id for request_id in self._ids if request_id not in self._answered]
        if missing:
            raise _Rejected("unanswered", f"no response answers tools/list request id {missing[0]!r}")

    def _message(self, value: Any) -> bool:
        """Filter the responses in one JSON-RPC value (a message or a batch) in place; True if a
        tool was removed. Server requests and notifications pass as they are."""
        changed = False
        for message in value if type(value) is list else [value]:
            if "method" in message:
                continue
            response_id = message.get("id")
            if response_id not in self._answerable:
                raise _Rejected(
                    "unexpected-response", f"a response answers id {response_id!r}, not tools/list"
                )
            if response_id in self._answered:
                raise _Rejected("duplicate-response", f"tools/list id {response_id!r} is answered twice")
            self._answered.add(response_id)
            if "result" in message and response_id in self._ids:
                changed |= self._result(message["result"])
        return changed

    def _result(self, result: dict[str, Any]) -> bool:
        tools = result.get("tools")
        if type(tools) is not list:
            raise _Rejected("bad-result", "result.tools must be an array")
        if "nextCursor" in result and type(result["nextCursor"]) is not str:
            raise _Rejected("bad-result", "result.nextCursor must be a string")
        kept = []
        seen: set[str] = set()
        for index, tool in enumerate(tools):
            if type(tool) is not dict or type(tool.get("name")) is not str:
                raise _Rejected("bad-tool", f"result.tools[{index}] must be an object with a string name")
            name = tool["name"]
            if name in seen:  # which of the two would a client keep? Refuse to guess.
                raise _Rejected("duplicate-tool", f"result.tools lists {name!r} twice")
            seen.add(name)
            listing = self._catalog.listing(name) if self._catalog is not None else _UNFILTERED
            if not listing.listed:
                self._out.remove(name, listing.reason)
                continue
            kept.append(tool)
            self.pins.compare(tool, self._out)
        self._out.listed += len(kept)
        if len(kept) == len(tools):
            return False
        result["tools"] = kept
        return True
