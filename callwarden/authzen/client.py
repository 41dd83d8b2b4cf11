"""A remote AuthZEN 1.0 PDP as the PEP's PDP (`McpServer.spec.pdp.authzen`).

`RemoteAuthzenPdp` implements `callwarden.policy.remote.Pdp` over HTTP:

- Discovery (AuthZEN §Policy Decision Point Metadata): `GET <origin>/.well-known/authzen-
  configuration<path>`. The metadata is used only if its `policy_decision_point` is identical to
  the configured URL; otherwise every call fails. Endpoints come from the metadata, else the
  default paths under the base URL. A PDP that publishes no metadata (404) is asked through the
  Access Evaluation API alone, the one every PDP has. The metadata is cached.
- One request per mapped message: a single Access Evaluation for one SARC request; for several,
  one Access Evaluations request with `deny_on_first_deny`, or, when the metadata names no
  evaluations endpoint, one evaluation after another until the first deny (COAZ-MCP binding:
  a PEP whose PDP lacks the evaluations API MAY fan out).
- Fail closed: a transport error, a timeout, a status other than 200, a body that is not strict
  JSON, a decision that is not a boolean, an evaluations array that is longer than asked or that
  stops short on a permit: `RemotePdpError` (the caller answers JSON-RPC -32603). A short
  array that ends on a deny is a short-circuited deny, as `deny_on_first_deny` allows.
- A circuit breaker: after `failure_threshold` consecutive failures, calls fail at once for
  `cool_down` seconds; then one call probes, and its outcome closes or reopens the circuit.
- An optional decision cache (`decisionCacheSeconds`), keyed by the exact requests.
- ARAP (standards.md §4): a denial with `context.access_request` (with `expires_at` and binding
  material) is requestable; it stays a denial. `submit_access_request` sends it, echoed, to the
  endpoint it names (or the metadata's `access_request_endpoint`); `access_request_status` polls.

`RemotePdps` is the factory the data path compiles bundles with: one client per distinct PDP
setting, kept across bundle swaps so its pooled connections, breaker and caches survive a reload.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx2
import orjson

from callwarden.policy.model import McpServer
from callwarden.policy.pdp import Decision
from callwarden.policy.remote import PdpUnavailable
from callwarden.policy.strictjson import JsonRejected, loads

__all__ = ["RemoteAuthzenPdp", "RemotePdpError", "RemotePdps"]

_T = TypeVar("_T")

WELL_KNOWN: Final = "/.well-known/authzen-configuration"
EVALUATION_PATH: Final = "/access/v1/evaluation"
EVALUATIONS_PATH: Final = "/access/v1/evaluations"
MAX_RESPONSE_BYTES: Final = 1 << 20
MAX_DEPTH: Final = 64
# What a decision's context may contribute to an audit line; a PDP's context is free-form.
MAX_REASONS: Final = 32
MAX_TEXT: Final = 300
# An action search answered over more pages than this is refused (a PDP looping its tokens).
MAX_SEARCH_PAGES: Final = 64


class PdpObserver(Protocol):
    """Where a remote PDP's latency and failures are reported (the data path's metrics).

    Injected rather than imported so AuthZEN over HTTP stays below the data path.
    """

    def request_seconds(self, api: str, seconds: float) -> None: ...

    def error(self, reason: str) -> None: ...


class _Unobserved:
    def request_seconds(self, api: str, seconds: float) -> None:
        pass

    def error(self, reason: str) -> None:
        pass


class RemotePdpError(PdpUnavailable):
    """The remote PDP did not give a usable answer. `reason` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _malformed(what: str) -> RemotePdpError:
    return RemotePdpError("malformed", f"the AuthZEN PDP answered a malformed response: {what}")


@dataclass(frozen=True)
class _Endpoints:
    evaluation: str
    evaluations: str | None  # None: the PDP has no Access Evaluations API; fan out
    access_requests: str | None = None  # ARAP access_request_endpoint, when published
    action_search: str | None = None  # None: no Action Search API (tools/list passes unfiltered)


class _Breaker:
    """Closed until `threshold` consecutive failures; open for `cool_down`; then one probe."""

    def __init__(self, threshold: int, cool_down: float, clock: Callable[[], float]) -> None:
        self._threshold = threshold
        self._cool_down = cool_down
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    def admit(self) -> None:
        """Raises RemotePdpError while the circuit is open (or another call is probing it)."""
        with self._lock:
            if self._open_until is None:
                return
            if self._probing or self._clock() < self._open_until:
                raise RemotePdpError("circuit-open", "the AuthZEN PDP is failing; not asking it for a while")
            self._probing = True  # half-open: this call is the probe

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._open_until = None
            self._probing = False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self._threshold:
                self._open_until = self._clock() + self._cool_down
            self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None


class _DecisionCache:
    """Decisions by exact request, each kept `ttl` seconds; the oldest go first when full."""

    def __init__(self, ttl: float, capacity: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, tuple[Decision, ...]]] = OrderedDict()

    def get(self, key: bytes) -> list[Decision] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[0]:
                del self._entries[key]
                return None
            return list(entry[1])

    def put(self, key: bytes, decisions: Sequence[Decision]) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (self._clock() + self._ttl, tuple(decisions))
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


class RemoteAuthzenPdp:
    """A remote AuthZEN PDP; safe to share between threads (one pooled HTTP/1.1 client)."""

    def __init__(
        self,
        url: str,
        timeout: float,
        *,
        decision_cache_seconds: float = 0,
        failure_threshold: int = 5,
        cool_down: float = 5.0,
        metadata_seconds: float = 300.0,
        max_connections: int = 64,
        cache_capacity: int = 10_000,
        verify: Any = True,
        clock: Callable[[], float] = time.monotonic,
        observer: PdpObserver | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"the PDP URL must be http(s), without query or fragment: {url!r}")
        if failure_threshold < 1 or cool_down < 0 or metadata_seconds < 0:
            raise ValueError("failure_threshold must be at least 1; cool_down, metadata_seconds >= 0")
        self.url = url
        self._observer: PdpObserver = observer or _Unobserved()
        base = url.rstrip("/")
        self._metadata_url = f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{parts.path.rstrip('/')}"
        self._defaults = _Endpoints(base + EVALUATION_PATH, base + EVALUATIONS_PATH)
        self._metadata_seconds = metadata_seconds
        self._clock = clock
        self._metadata_lock = threading.Lock()
        self._metadata: tuple[float, _Endpoints] | None = None
        self._breaker = _Breaker(failure_threshold, cool_down, clock)
        self._cache: _DecisionCache | None = None
        if decision_cache_seconds > 0:
            self._cache = _DecisionCache(decision_cache_seconds, cache_capacity, clock)
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(timeout),
            limits=httpx2.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            http1=True,
            http2=False,
            trust_env=False,
            follow_redirects=False,
            verify=verify,
            headers={"accept": "application/json"},
        )

    @property
    def circuit_open(self) -> bool:
        return self._breaker.is_open

    def close(self) -> None:
        self._client.close()

    def evaluate(self, request: Mapping[str, Any]) -> Decision:
        decisions = self.evaluate_mapped([request])
        return decisions[0]

    def evaluate_mapped(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """The decisions for `requests` (allowed only if all allow); raises RemotePdpError."""
        if not requests:
            return []
        key = orjson.dumps(list(requests), option=orjson.OPT_SORT_KEYS) if self._cache is not None else b""
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        decisions = self._guarded(lambda: self._ask(requests))
        if self._cache is not None:
            self._cache.put(key, decisions)
        return decisions

    def search_actions(self, request: Mapping[str, Any]) -> frozenset[str] | None:
        """The action names the PDP's Action Search API permits for `request` (subject,
        resource, context), every page of them; None when its metadata names no action search
        endpoint (only metadata can: there is no default path to guess). Raises RemotePdpError."""
        return self._guarded(lambda: self._search(dict(request)))

    def _guarded(self, exchange: Callable[[], _T]) -> _T:
        """Run one exchange through the circuit breaker, observing every failure."""
        try:
            self._breaker.admit()
        except RemotePdpError as error:
            self._observer.error(error.reason)
            raise
        try:
            answer = exchange()
        except RemotePdpError as error:
            self._breaker.failed()
            self._observer.error(error.reason)
            raise
        except Exception:
            self._breaker.failed()
            self._observer.error("internal")
            raise
        self._breaker.succeeded()
        return answer

    # -- the exchanges --

    def _search(self, request: dict[str, Any]) -> frozenset[str] | None:
        endpoint = self._endpoints().action_search
        if endpoint is None:
            return None
        return _search_pages(lambda body: self._post(endpoint, body, "search_action"), request)

    def _ask(self, requests: Sequence[Mapping[str, Any]]) -> list[Decision]:
        endpoints = self._endpoints()
        if len(requests) == 1:
            return [_decision(self._post(endpoints.evaluation, requests[0], "evaluation"), "the answer")]
        if endpoints.evaluations is None:
            decisions = []
            for request in requests:
                decision = _decision(self._post(endpoints.evaluation, request, "evaluation"), "the answer")
                decisions.append(decision)
                if not decision.allowed:
                    break
            return decisions
        body = {
            "evaluations": [dict(request) for request in requests],
            "options": {"evaluations_semantic": "deny_on_first_deny"},
        }
        return _decisions(self._post(endpoints.evaluations, body, "evaluations"), len(requests))

    def _endpoints(self) -> _Endpoints:
        with self._metadata_lock:  # one discovery at a time; the others wait for its result
            now = self._clock()
            if self._metadata is not None and now < self._metadata[0]:
                return self._metadata[1]
            endpoints = self._discover()
            self._metadata = (now + self._metadata_seconds, endpoints)
            return endpoints

    def _discover(self) -> _Endpoints:
        status, value = self._exchange("GET", self._metadata_url, None, "metadata", accept_404=True)
        if status == 404:  # metadata is RECOMMENDED, not required: the evaluation API alone
            return _Endpoints(self._defaults.evaluation, None)
        if not isinstance(value, dict):
            raise RemotePdpError("metadata", "the AuthZEN PDP's metadata is not a JSON object")
        if value.get("policy_decision_point") != self.url:
            # §Policy Decision Point Metadata: "the data contained in the response MUST NOT be used"
            raise RemotePdpError(
                "metadata", "the AuthZEN PDP's metadata names another policy_decision_point; not used"
            )
        evaluation = _endpoint(value, "access_evaluation_endpoint") or self._defaults.evaluation
        return _Endpoints(
            evaluation,
            _endpoint(value, "access_evaluations_endpoint"),
            _endpoint(value, "access_request_endpoint"),
            _endpoint(value, "search_action_endpoint"),
        )

    # -- ARAP: access requests at the PDP's ARS --

    def submit_access_request(self, request: Mapping[str, Any], denial: Mapping[str, Any]) -> dict[str, Any]:
        """Submit the requestable denial of `request` (its decision context `denial`) to the ARS;
        returns the task (`id`, `status`, `status_endpoint`). Raises RemotePdpError."""
        access_request = denial["access_request"]
        endpoint = access_request.get("endpoint") or self._endpoints().access_requests
        if not isinstance(endpoint, str) or _endpoint({"endpoint": endpoint}, "endpoint") is None:
            raise RemotePdpError("ars", "the requestable denial names no access request endpoint")
        echoed = {k: denial[k] for k in ("evaluation_id", "evaluated_at", "reason") if k in denial}
        echoed.update(
            {k: access_request[k] for k in ("expires_at", "binding_token", "template") if k in access_request}
        )
        body = {
            **{k: request[k] for k in ("subject", "resource", "action", "context") if k in request},
            "denial": echoed,
        }
        # One key per submission: a retry of this exchange (not of the denial) is answered the same.
        key = str(uuid.uuid4())
        answer = self._exchange(
            "POST", endpoint, orjson.dumps(body), "access-request", ok=_SUBMITTED, idempotency_key=key
        )[1]
        return _task(answer)

    def cancel_access_request(self, cancel_endpoint: str) -> None:
        """Cancel a task at the ARS (its `links.cancel`); raises RemotePdpError (409: already decided)."""
        if _endpoint({"cancel": cancel_endpoint}, "cancel") is None:
            raise RemotePdpError("ars", "no cancel endpoint")
        self._exchange("POST", cancel_endpoint, None, "access-request-cancel")

    def access_request_status(self, status_endpoint: str) -> dict[str, Any]:
        """The ARS's answer for a task (`task`, and `result` once approved); raises RemotePdpError."""
        if _endpoint({"status_endpoint": status_endpoint}, "status_endpoint") is None:
            raise RemotePdpError("ars", "no status endpoint")
        answer = self._exchange("GET", status_endpoint, None, "access-request-status")[1]
        _task(answer)
        result: dict[str, Any] = answer
        return result

    def _post(self, url: str, body: Mapping[str, Any], api: str) -> Any:
        return self._exchange("POST", url, orjson.dumps(body), api)[1]

    def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None,
        api: str,
        *,
        accept_404: bool = False,
        ok: frozenset[int] = frozenset({200}),
        idempotency_key: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"x-request-id": str(uuid.uuid4())}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        if body is not None:
            headers["content-type"] = "application/json"
        started = time.perf_counter()
        try:
            with self._client.stream(method, url, content=body, headers=headers) as response:
                if accept_404 and response.status_code == 404:
                    return 404, None
                if response.status_code not in ok:
                    raise RemotePdpError(
                        "status", f"the AuthZEN PDP answered HTTP {response.status_code} ({api})"
                    )
                media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if media_type != "application/json":
                    raise _malformed(f"content type {media_type or 'missing'!r} ({api})")
                raw = _read_capped(response)
        except httpx2.TimeoutException as error:
            raise RemotePdpError("timeout", f"the AuthZEN PDP did not answer in time ({api})") from error
        except httpx2.HTTPError as error:
            raise RemotePdpError("transport", f"the AuthZEN PDP cannot be reached ({api})") from error
        finally:
            self._observer.request_seconds(api, time.perf_counter() - started)
        try:
            return 200, loads(raw, max_depth=MAX_DEPTH)
        except JsonRejected as error:
            raise _malformed(f"not strict JSON: {error.reason} ({api})") from error


def _read_capped(response: httpx2.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _malformed(f"larger than {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _endpoint(metadata: Mapping[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise RemotePdpError("metadata", f"the AuthZEN PDP's metadata has an invalid {name}")
    return str(value)


_SUBMITTED: Final = frozenset({201, 202})


def _task(answer: Any) -> dict[str, Any]:
    """The `task` of an ARS answer, checked: an id, a status, an http(s) status endpoint."""
    task = answer.get("task") if isinstance(answer, dict) else None
    if (
        not isinstance(task, dict)
        or not isinstance(task.get("id"), str)
        or not isinstance(task.get("status"), str)
        or not isinstance(task.get("status_endpoint"), str)
    ):
        raise _malformed("the access request answer has no task with id, status and status_endpoint")
    _endpoint(task, "status_endpoint")
    return task


def _requestable(allowed: bool, context: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ARAP members of a requestable denial, or None when the denial is not requestable: the
    signal is `access_request` with `expires_at` and binding material (a token or an evaluation id)."""
    access = context.get("access_request")
    if allowed or not isinstance(access, dict) or not isinstance(access.get("expires_at"), str):
        return None
    if not isinstance(access.get("binding_token"), str) and not isinstance(context.get("evaluation_id"), str):
        return None
    return {
        k: context[k] for k in ("evaluation_id", "evaluated_at", "reason", "access_request") if k in context
    }


def _search_pages(post: Callable[[Mapping[str, Any]], Any], request: dict[str, Any]) -> frozenset[str]:
    """Every `results[].name` of an Action Search, following `page.next_token` (bounded)."""
    names: set[str] = set()
    body = request
    for _ in range(MAX_SEARCH_PAGES):
        answer = post(body)
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or not all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in results
        ):
            raise _malformed("the action search answer has no results array of {name} objects")
        names.update(item["name"] for item in results)
        page = answer.get("page")
        token = page.get("next_token") if isinstance(page, dict) else None
        if not token:
            return frozenset(names)
        if not isinstance(token, str):
            raise _malformed("the action search answer's page.next_token is not a string")
        body = {**request, "page": {"token": token}}
    raise _malformed(f"the action search answer runs past {MAX_SEARCH_PAGES} pages")


def _decision(value: Any, where: str) -> Decision:
    """A Decision from one AuthZEN decision object, read strictly: `decision` must be a boolean."""
    if not isinstance(value, dict):
        raise _malformed(f"{where} is not an object")
    allowed = value.get("decision")
    if not isinstance(allowed, bool):
        raise _malformed(f"{where}: decision is not a boolean")
    context = value.get("context", {})
    if not isinstance(context, dict):
        raise _malformed(f"{where}: context is not an object")
    # The context is free-form (AuthZEN §Decision): take what reads as reasons, ignore the rest.
    given = context.get("reasons")
    reasons: tuple[str, ...] = ()
    if isinstance(given, list) and all(isinstance(item, str) for item in given):
        reasons = tuple(item[:MAX_TEXT] for item in given[:MAX_REASONS])
    reason = context.get("reason")
    if isinstance(reason, str) and reason:
        message = reason[:MAX_TEXT]
    else:
        message = "allowed by the AuthZEN PDP" if allowed else "denied by the AuthZEN PDP"
    requestable = _requestable(allowed, context)
    return Decision(allowed, reasons, message, requestable is not None, requestable)


def _decisions(value: Any, asked: int) -> list[Decision]:
    """The decisions of an Access Evaluations answer to `asked` requests (deny_on_first_deny)."""
    if not isinstance(value, dict):
        raise _malformed("the answer is not an object")
    items = value.get("evaluations")
    if not isinstance(items, list) or not items:
        raise _malformed("no evaluations array")
    if len(items) > asked:
        raise _malformed(f"{len(items)} evaluations for {asked} requests")
    decisions = [_decision(item, f"evaluations[{index}]") for index, item in enumerate(items)]
    if len(decisions) < asked and decisions[-1].allowed:
        # deny_on_first_deny stops only at a deny: an array cut short after a permit is not an answer.
        raise _malformed(f"{len(items)} evaluations for {asked} requests, the last a permit")
    return decisions


class RemotePdps:
    """The `RemotePdpFactory` of the data path: one RemoteAuthzenPdp per distinct PDP setting."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cool_down: float = 5.0,
        metadata_seconds: float = 300.0,
        verify: Any = True,
        observer: PdpObserver | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "cool_down": cool_down,
            "metadata_seconds": metadata_seconds,
            "verify": verify,
            "observer": observer,
        }
        self._lock = threading.Lock()
        self._pdps: dict[tuple[str, float, float], RemoteAuthzenPdp] = {}

    def __call__(self, server: McpServer) -> RemoteAuthzenPdp:
        settings = server.spec.pdp.authzen
        if settings is None:
            raise ValueError(f"McpServer {server.key} names no remote AuthZEN PDP")
        key = (settings.url, settings.timeout_seconds, settings.decision_cache_seconds)
        with self._lock:
            pdp = self._pdps.get(key)
            if pdp is None:
                pdp = self._pdps[key] = RemoteAuthzenPdp(
                    settings.url,
                    settings.timeout_seconds,
                    decision_cache_seconds=settings.decision_cache_seconds,
                    **self._options,
                )
            return pdp

    def close(self) -> None:
        with self._lock:
            pdps, self._pdps = list(self._pdps.values()), {}
        for pdp in pdps:
            pdp.close()

    def __enter__(self) -> RemotePdps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
