"""Mapping discovery: the operator reads each opted-in McpServer's tools/list, on an interval.

An McpServer with `spec.discovery` names an MCP endpoint and a Secret key holding a bearer
token. The leader's `Discoverer` calls that endpoint with the official `mcp` client (streamable
HTTP: initialize, then tools/list page by page), bounded in time (one deadline for the whole
exchange) and size (bytes per HTTP response, pages, tools, bytes per mapping), and keeps the
latest `DiscoveryResult` per server in memory. `plan.py` receives those results as data and
`pinning.py` decides what the bundle may carry: nothing discovered is enforced before its hash is
accepted in the spec.

Each attempt runs in a small thread pool of its own, off the event loop kopf and the reconciler
use and off the reconciler's worker threads, so a slow or hostile server delays nobody else. A
failed attempt (Secret missing or forbidden, server down, listing rejected) keeps the last good
listing and is retried sooner than the interval. A result that differs from the previous one
asks the reconciler to look at the server's namespace again.

The cache is memory only: after a restart or a leader change, the bundle ConfigMaps still carry
every accepted mapping (pinning.py reads them back), and the first attempt refreshes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final

import anyio
import httpx2
from kubernetes.client.exceptions import ApiException
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation, PaginatedRequestParams
from pydantic import ValidationError

from callwarden.kube.client import Kube, describe_error
from callwarden.operator.pinning import (
    CREDENTIAL_FORBIDDEN,
    CREDENTIAL_INVALID,
    CREDENTIAL_MISSING,
    CREDENTIAL_REJECTED,
    LISTING_REJECTED,
    SERVER_UNREACHABLE,
    DiscoveryLimits,
    DiscoveryResult,
    ListingRejected,
    read_listing,
)
from callwarden.operator.status import timestamp
from callwarden.policy.model import Discovery

log = logging.getLogger(__name__)

CLIENT_INFO: Final = Implementation(name="callwarden-operator", version="0.1")
RETRY_SECONDS: Final = 30.0  # after a failure, try again this soon (or at the interval if shorter)
POLL_SECONDS: Final = 1.0
WORKERS: Final = 4
# A bearer token is one header value: visible ASCII only, so a Secret cannot smuggle a CR/LF.
_TOKEN: Final = re.compile(r"^[!-~]{1,8192}$")


class DiscoveryFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Target:
    """One McpServer to discover: what its spec asks for."""

    namespace: str
    name: str
    discovery: Discovery

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Target | None:
        """The target an McpServer object asks for, or None (no discovery, or not a valid one)."""
        wanted = (obj.get("spec") or {}).get("discovery")
        if wanted is None:
            return None
        try:
            discovery = Discovery.model_validate(wanted, strict=True, by_alias=True, by_name=False)
        except ValidationError:  # the server's status reports the schema error
            return None
        metadata = obj["metadata"]
        return cls(metadata.get("namespace", "default"), metadata["name"], discovery)


class Discoverer:
    """Discovery results per McpServer, refreshed on each server's interval while `run` runs."""

    def __init__(
        self,
        kube: Kube,
        *,
        on_change: Callable[[str], None] = lambda namespace: None,
        limits: DiscoveryLimits | None = None,
    ) -> None:
        self.kube = kube
        self.on_change = on_change  # called with a namespace, from a discovery thread
        self.limits = limits or DiscoveryLimits()
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}
        self._results: dict[str, DiscoveryResult] = {}
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="callwarden-discovery")

    # -- what the reconciler calls (from its worker thread) --

    def track(self, namespace: str, servers: Sequence[Mapping[str, Any]]) -> None:
        """The McpServers of `namespace` as they are now: start, retarget or forget discovery."""
        wanted = {t.key: t for t in map(Target.of, servers) if t is not None and t.namespace == namespace}
        with self._lock:
            for key in [k for k, t in self._targets.items() if t.namespace == namespace and k not in wanted]:
                del self._targets[key]
                self._results.pop(key, None)
                self._due.pop(key, None)
            for key, target in wanted.items():
                if self._targets.get(key) != target:  # new, or the spec changed: discover now
                    self._targets[key] = target
                    self._due[key] = 0.0
                    result = self._results.get(key)
                    if result is not None and result.url != target.discovery.url:
                        self._results.pop(key)  # a listing of another endpoint says nothing here

    def results(self, namespace: str) -> dict[str, DiscoveryResult]:
        """McpServer name -> its latest result, for the servers of `namespace` discovered so far."""
        with self._lock:
            return {
                self._targets[key].name: result
                for key, result in self._results.items()
                if key in self._targets and self._targets[key].namespace == namespace
            }

    # -- the schedule --

    async def run(self, is_leader: Callable[[], bool] = lambda: True) -> None:
        """Start each target's attempt when it is due; never more than one per target at a time."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if is_leader():
                    for target in self._due_targets():
                        future = loop.run_in_executor(self._pool, self.discover, target)
                        future.add_done_callback(partial(self._finished, target.key))
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _due_targets(self) -> list[Target]:
        now = time.monotonic()
        with self._lock:
            due = [
                target
                for key, target in self._targets.items()
                if key not in self._running and self._due.get(key, 0.0) <= now
            ]
            self._running.update(target.key for target in due)
        return due

    def _finished(self, key: str, _: object) -> None:
        with self._lock:
            self._running.discard(key)

    # -- one attempt (runs in a discovery thread; tests call it directly) --

    def discover(self, target: Target) -> DiscoveryResult:
        """Fetch `target`'s listing now, record the result, and tell the reconciler if it changed."""
        with self._lock:
            previous = self._results.get(target.key)
        problem: tuple[str, str] | None = None
        try:
            token = self._token(target)
            tools = anyio.run(list_tools, target.discovery.url, token, self.limits)
            listing = read_listing(tools, self.limits)
        except DiscoveryFailed as failure:
            problem = (failure.reason, failure.message)
        except ListingRejected as rejected:
            problem = (LISTING_REJECTED, f"listing from {target.discovery.url} rejected: {rejected}")
        except Exception as error:  # never let a server take the operator down
            log.exception("discovery of %s failed unexpectedly", target.key)
            problem = (SERVER_UNREACHABLE, f"{target.discovery.url}: {describe_error(error)}")
        if problem is not None:
            log.warning("discovery of McpServer %s: %s", target.key, problem[1])
            result = (
                replace(previous, problem=problem)
                if previous is not None
                else DiscoveryResult(target.discovery.url, None, None, problem)
            )
            retry = min(float(target.discovery.interval_seconds), RETRY_SECONDS)
        else:
            same = previous is not None and previous.tools == listing
            listed_at = previous.listed_at if same and previous is not None else timestamp()
            result = DiscoveryResult(target.discovery.url, listing, listed_at)
            retry = float(target.discovery.interval_seconds)
        with self._lock:
            if self._targets.get(target.key) != target:  # retargeted or forgotten meanwhile: stale
                return result
            self._results[target.key] = result
            self._due[target.key] = time.monotonic() + retry
        if result != previous:
            self.on_change(target.namespace)
        return result

    def _token(self, target: Target) -> str:
        ref = target.discovery.credential_secret_ref
        where = f"Secret {target.namespace}/{ref.name}"
        try:
            value = self.kube.read_secret_value(target.namespace, ref.name, ref.key)
        except ApiException as error:
            if error.status == 404:
                raise DiscoveryFailed(CREDENTIAL_MISSING, f"{where} does not exist") from None
            if error.status == 403:
                raise DiscoveryFailed(
                    CREDENTIAL_FORBIDDEN,
                    f"the operator may not read {where}: bind ClusterRole callwarden-operator-discovery "
                    f"to it in namespace {target.namespace} (see deploy/rbac/operator.yaml)",
                ) from None
            raise DiscoveryFailed(
                SERVER_UNREACHABLE, f"cannot read {where}: {describe_error(error)}"
            ) from None
        if value is None:
            raise DiscoveryFailed(CREDENTIAL_MISSING, f"{where} has no key {ref.key!r}")
        try:
            token = value.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        if not _TOKEN.match(token):
            raise DiscoveryFailed(
                CREDENTIAL_INVALID,
                f"{where} key {ref.key!r} is not a bearer token (visible ASCII, no spaces)",
            )
        return token


async def list_tools(url: str, token: str, limits: DiscoveryLimits) -> list[dict[str, Any]]:
    """Every tool `url` lists (JSON-shaped, as on the wire), within `limits`.

    Raises DiscoveryFailed (the server cannot be reached, refuses, answers too slowly or too much)
    or ListingRejected (too many tools or pages).
    """
    refused: list[int] = []  # HTTP error statuses seen: the SDK reports them only as a generic error

    async def note_status(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            refused.append(response.status_code)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        event_hooks={"response": [note_status]},
        timeout=httpx2.Timeout(limits.timeout_seconds),
        transport=_CappedTransport(httpx2.AsyncHTTPTransport(), limits.max_response_bytes),
        trust_env=False,  # the endpoint is named by the spec; no proxy from the environment
    )
    try:
        with anyio.fail_after(limits.timeout_seconds):
            async with (
                http,
                streamable_http_client(
                    url, http_client=http, max_sse_event_size=limits.max_response_bytes
                ) as (read, write),
                ClientSession(
                    read, write, client_info=CLIENT_INFO, read_timeout_seconds=limits.timeout_seconds
                ) as session,
            ):
                await session.initialize()
                return await _all_pages(session, limits)
    except Exception as error:
        raise _failure(url, error, limits, refused) from None


async def _all_pages(session: ClientSession, limits: DiscoveryLimits) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(limits.max_pages):
        page = await session.list_tools(
            params=PaginatedRequestParams(cursor=cursor) if cursor is not None else None
        )
        tools.extend(tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in page.tools)
        if len(tools) > limits.max_tools:
            raise ListingRejected(f"the server lists more than {limits.max_tools} tools")
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise ListingRejected(f"the listing has more than {limits.max_pages} pages")


def _failure(url: str, error: BaseException, limits: DiscoveryLimits, refused: Sequence[int]) -> Exception:
    """What a failed exchange means. anyio task groups wrap the transport's exception: the first
    leaf names what went wrong."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, ListingRejected | DiscoveryFailed):
        return error
    if isinstance(error, ResponseTooLarge):
        return ListingRejected(str(error))
    if 401 in refused or 403 in refused:
        status = 401 if 401 in refused else 403
        return DiscoveryFailed(CREDENTIAL_REJECTED, f"{url} answered HTTP {status}: it refuses the token")
    if refused:
        return DiscoveryFailed(SERVER_UNREACHABLE, f"{url} answered HTTP {refused[-1]}")
    if isinstance(error, TimeoutError):
        return DiscoveryFailed(
            SERVER_UNREACHABLE, f"{url} did not list its tools within {limits.timeout_seconds:g}s"
        )
    text = str(error) or type(error).__name__
    return DiscoveryFailed(SERVER_UNREACHABLE, f"{url}: {type(error).__name__}: {text}"[:500])


class ResponseTooLarge(Exception):
    pass


class _CappedTransport(httpx2.AsyncBaseTransport):
    """Fails a response whose body goes past `limit` bytes while it is read."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream, self._limit),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseTooLarge(f"a response is larger than {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
