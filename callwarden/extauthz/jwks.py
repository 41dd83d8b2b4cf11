"""Issuer signing keys: the JWKS store every TokenValidator of the process shares.

Keys come only from an issuer's configured `jwks_uri` (never from a URL or key named by a
token), fetched on threads of their own so that a check waits at most `timeout`. The store
refreshes in the background, refetches once for an unknown `kid` (rate-limited, single
flight), and keeps serving the last good keys through an outage until `stale_for`; after that
it fails closed (`JwksUnavailable`).

Decisions worth knowing:
- A JWKS entry that cannot be used (private members, wrong `use`, a weak or malformed key) is
  dropped with a log line; the rest of the set still counts (`jose.parse_jwk` says why).
- A `kid` that appears twice in one JWKS with different keys is ambiguous, so both are dropped.
- A key that stays in the JWKS across a refresh keeps its object, so tokens cached as verified
  with it stay valid; a key that leaves the JWKS stops validating cached tokens at once.
- No redirects, no compression, a byte cap and a deadline on every download.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx2

from callwarden.extauthz import metrics
from callwarden.extauthz.challenge import TokenRejected, invalid_token
from callwarden.extauthz.jose import Jwk, JwkIgnored, parse_jwk
from callwarden.policy import strictjson

log = logging.getLogger(__name__)

MAX_JWKS_BYTES: Final = 512 * 1024
MAX_JWKS_KEYS: Final = 100
# Checked before the recursive parser runs, whatever the interpreter's recursion limit; a JWK
# Set nests four levels, this is the bound token segments get (token.MAX_JSON_DEPTH).
MAX_JWKS_DEPTH: Final = 64


class JwksUnavailable(TokenRejected):
    """The issuer's keys cannot be had (never fetched, or older than `stale_for`): fail closed."""

    def __init__(self, description: str = "issuer keys unavailable") -> None:
        super().__init__("invalid_token", description, reason="keys-unavailable")


class JwksKey(Jwk):
    """A key as its JWKS holds it: a JWK and how long tokens verified with it may stay cached."""

    __slots__ = ("fresh_until",)

    def __init__(self, jwk: Jwk) -> None:
        super().__init__(jwk.kid, jwk.identity, jwk.verifiers)
        # Store-clock time until which tokens verified with this key may be served from the
        # token cache; -inf once the key has left its issuer's JWKS.
        self.fresh_until = -math.inf


class JwksInvalid(ValueError):
    """The document as a whole is not a usable JWKS: keep the keys we had."""


def parse_jwks(body: bytes) -> tuple[list[JwksKey], list[str]]:
    """The usable keys of a JWKS document and a note for every entry that was dropped."""
    try:
        document = strictjson.loads(body, max_depth=MAX_JWKS_DEPTH)
    except strictjson.JsonRejected as error:
        raise JwksInvalid(f"not JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksInvalid("not a JWK Set: 'keys' is not a list")
    entries = document["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise JwksInvalid(f"{len(entries)} keys; at most {MAX_JWKS_KEYS} accepted")
    keys: list[JwksKey] = []
    dropped: list[str] = []
    for index, entry in enumerate(entries):
        try:
            keys.append(JwksKey(parse_jwk(entry)))
        except JwkIgnored as error:
            dropped.append(f"key {index}: {error}")
    by_kid: dict[str, list[JwksKey]] = {}
    for key in keys:
        if key.kid is not None:
            by_kid.setdefault(key.kid, []).append(key)
    ambiguous = {kid for kid, same in by_kid.items() if len({key.identity for key in same}) > 1}
    dropped.extend(f"kid {kid!r} names different keys" for kid in sorted(ambiguous))
    unique: list[JwksKey] = []
    seen: set[tuple[str | None, tuple[Any, ...]]] = set()
    for key in keys:
        if key.kid in ambiguous or (key.kid, key.identity) in seen:
            continue
        seen.add((key.kid, key.identity))
        unique.append(key)
    return unique, dropped


@dataclass(frozen=True)
class JwksStatus:
    """What the store knows about one JWKS URI (for /readyz and metrics)."""

    jwks_uri: str
    keys: int
    fetches: int
    failures: int
    last_success: float | None  # store clock
    last_error: str | None


class _KeySet:
    """The keys of one JWKS URI and the state of fetching them. Guarded by `lock`."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lock = threading.Lock()
        self.named: dict[str, JwksKey] = {}
        self.keys: tuple[JwksKey, ...] = ()
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None  # last fetch started
        self.inflight: threading.Event | None = None
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None

    def find(self, kid: str | None, alg: str) -> JwksKey | None:
        if kid is not None:
            return self.named.get(kid)
        # No kid: acceptable only when exactly one key could have made this signature.
        candidates = [key for key in self.keys if alg in key.verifiers]
        return candidates[0] if len(candidates) == 1 else None

    def install(self, keys: list[JwksKey], fresh_until: float) -> None:
        previous = {(key.kid, key.identity): key for key in self.keys}
        kept: list[JwksKey] = []
        for key in keys:
            # An unchanged key keeps its object, so cached tokens verified with it stay valid.
            same = previous.pop((key.kid, key.identity), key)
            same.fresh_until = fresh_until
            kept.append(same)
        for retired in previous.values():
            retired.fresh_until = -math.inf
        self.keys = tuple(kept)
        self.named = {key.kid: key for key in kept if key.kid is not None}


class JwksStore:
    """Issuer signing keys, fetched over HTTP and shared by every TokenValidator in the process.

    Keys are fetched on first use and refreshed in the background once older than
    `refresh_interval`; an unknown `kid` triggers one synchronous refetch, at most once per
    `min_refetch_interval` per URI, and concurrent misses share one fetch (single flight).
    A check never waits longer than `timeout` for a fetch. While an issuer is unreachable or
    serves garbage, its last good keys keep working until `stale_for` after they were
    fetched; after that every token of that issuer is rejected until a fetch succeeds.
    `clock` is monotonic time (injectable for tests).
    """

    def __init__(
        self,
        *,
        timeout: float = 2.0,
        refresh_interval: float = 300,
        min_refetch_interval: float = 10,
        stale_for: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        if timeout <= 0 or refresh_interval <= 0 or min_refetch_interval < 0:
            raise ValueError("timeout and refresh_interval must be positive, min_refetch_interval >= 0")
        if stale_for < refresh_interval:
            raise ValueError("stale_for must be at least refresh_interval")
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self.stale_for = stale_for
        self.clock = clock
        self.max_bytes = max_bytes
        # No redirects (the configured URI is the trust anchor), no compression (the size cap
        # must apply to what is parsed, and a small gzip body can inflate enormously).
        self._client = httpx2.Client(
            timeout=timeout,
            follow_redirects=False,
            headers={"accept": "application/jwk-set+json, application/json", "accept-encoding": "identity"},
        )
        self._sets: dict[str, _KeySet] = {}
        self._lock = threading.Lock()

    def _set(self, uri: str) -> _KeySet:
        key_set = self._sets.get(uri)
        if key_set is None:
            with self._lock:
                key_set = self._sets.setdefault(uri, _KeySet(uri))
        return key_set

    def key(self, jwks_uri: str, kid: str | None, alg: str) -> JwksKey:
        """The key `kid` of that JWKS (or its only key for `alg` when kid is None)."""
        key_set = self._set(jwks_uri)
        now = self.clock()
        with key_set.lock:
            usable = key_set.fetched_at is not None and now < key_set.fetched_at + self.stale_for
            key = key_set.find(kid, alg) if usable else None
            fetch_due = self._fetch_due(key_set, now)
            if key is not None:
                assert key_set.fetched_at is not None
                if now >= key_set.fetched_at + self.refresh_interval and fetch_due and not key_set.inflight:
                    self._start_fetch(key_set, now)  # serve this key; refresh behind it
                return key
            wait_for = key_set.inflight
            if wait_for is None and fetch_due:
                wait_for = self._start_fetch(key_set, now)
        if wait_for is not None:
            wait_for.wait(self.timeout)
            with key_set.lock:
                now = self.clock()
                usable = key_set.fetched_at is not None and now < key_set.fetched_at + self.stale_for
                key = key_set.find(kid, alg) if usable else None
            if key is not None:
                return key
        if not usable:
            raise JwksUnavailable()
        if kid is None:
            raise invalid_token(
                "token has no key id and the issuer keys do not single one out", "unknown-key"
            )
        raise invalid_token("unknown key id", "unknown-key")

    def prefetch(self, jwks_uri: str) -> None:
        """Start fetching a JWKS in the background (if due), so the first check need not wait."""
        key_set = self._set(jwks_uri)
        now = self.clock()
        with key_set.lock:
            if self._fetch_due(key_set, now) and key_set.inflight is None:
                self._start_fetch(key_set, now)

    def status(self, jwks_uri: str) -> JwksStatus:
        key_set = self._set(jwks_uri)
        with key_set.lock:
            return JwksStatus(
                jwks_uri=jwks_uri,
                keys=len(key_set.keys),
                fetches=key_set.fetches,
                failures=key_set.failures,
                last_success=key_set.fetched_at,
                last_error=key_set.last_error,
            )

    def close(self) -> None:
        self._client.close()

    def _fetch_due(self, key_set: _KeySet, now: float) -> bool:
        """At most one fetch per `min_refetch_interval`, however many tokens ask for one."""
        return key_set.attempted_at is None or now - key_set.attempted_at >= self.min_refetch_interval

    def _start_fetch(self, key_set: _KeySet, now: float) -> threading.Event:
        """Called with key_set.lock held. The fetch runs on its own thread so that a check
        waits at most `timeout` even when the issuer answers slowly byte by byte."""
        done = threading.Event()
        key_set.inflight = done
        key_set.attempted_at = now
        key_set.fetches += 1
        thread = threading.Thread(
            target=self._fetch, args=(key_set, done), name="callwarden-jwks-fetch", daemon=True
        )
        thread.start()
        return done

    def _fetch(self, key_set: _KeySet, done: threading.Event) -> None:
        try:
            keys, dropped = parse_jwks(self._download(key_set.uri))
        except Exception as error:  # any failure, even an unexpected one, keeps the old keys
            message = f"{type(error).__name__}: {error}"
            log.warning("fetching JWKS %s failed: %s", key_set.uri, message)
            metrics.JWKS_FETCHES.labels(outcome="error").inc()
            with key_set.lock:
                key_set.failures += 1
                key_set.last_error = message
        else:
            for note in dropped:
                log.warning("JWKS %s: ignored %s", key_set.uri, note)
            metrics.JWKS_FETCHES.labels(outcome="ok").inc()
            with key_set.lock:
                fetched_at = self.clock()
                key_set.install(keys, fetched_at + self.refresh_interval)
                key_set.fetched_at = fetched_at
                key_set.last_error = None
        finally:
            with key_set.lock:
                key_set.inflight = None
            done.set()

    def _download(self, uri: str) -> bytes:
        deadline = time.monotonic() + self.timeout * 4  # a drip-feeding server is cut off
        with self._client.stream("GET", uri) as response:
            if response.status_code != 200:
                raise JwksInvalid(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise JwksInvalid(f"{declared} bytes; at most {self.max_bytes} accepted")
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise JwksInvalid(f"more than {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise JwksInvalid("response too slow")
            return bytes(body)
