"""Missions from the store to the `MissionBook` of one ext_authz process, off the check path.

In a cluster the Mission objects are listed, then watched from the list's resourceVersion (a
watch that ends is resumed; 410 Gone relists; connection failures back off), like the bundle
ConfigMaps (extauthz.watch); every change rebuilds the book's index from all objects held.
Standalone, the SQLite file is read every `interval` seconds (the CLI writes it from another
process; reading a few rows costs far less than the file-change notification it would need).
Either way a revocation reaches every replica within one watch event or one interval, and a
check never waits for the store.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from kubernetes import watch as _watch
from pydantic import ValidationError

from callwarden.extauthz.mission import MissionBook, Proposer
from callwarden.kube.client import Kube
from callwarden.kube.follow import follow
from callwarden.policy.model import API_GROUP, API_VERSION, Mission
from callwarden.stores.documents import StoreConflict
from callwarden.stores.missions import PLURAL, MissionRecords, mission_of
from callwarden.stores.sqlite import SqliteDocuments

log = logging.getLogger(__name__)
watch: Any = _watch  # kubernetes.watch has no type hints

POLL_SECONDS: Final = 0.5
WATCH_SECONDS: Final = 240


class _Sync(ABC):
    """A daemon thread that keeps `book` current until `stop`."""

    def __init__(self, book: MissionBook, name: str) -> None:
        self.book = book
        self.synced = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def readiness(self) -> tuple[bool, str]:
        if not self.synced.is_set():
            return False, "missions not loaded from the store yet"
        return True, f"{len(self.book.index)} mission(s) loaded"

    def _interrupt(self) -> None:  # noqa: B027 - a hook: only a watch has a blocking read to end
        """Wake the thread from a blocking read (a watch stream)."""

    @abstractmethod
    def _run(self) -> None: ...


class PollingSync(_Sync):
    """Standalone: the store read every `interval` seconds; the book rebuilt when it changed."""

    def __init__(self, records: MissionRecords, book: MissionBook, interval: float = POLL_SECONDS) -> None:
        super().__init__(book, "callwarden-mission-poll")
        self.records = records
        self.interval = interval

    def sync_once(self) -> None:
        missions = self.records.all()
        self.book.update(missions)
        self.synced.set()

    def _run(self) -> None:
        seen: tuple[tuple[str, str | None], ...] | None = None
        while not self._stopped.is_set():
            try:
                missions = self.records.all()
                version = tuple((m.key, m.metadata.resource_version) for m in missions)
                if version != seen:
                    self.book.update(missions)
                    seen = version
                self.synced.set()
            except Exception:  # the store may be locked or gone a moment; keep the last book
                log.exception("mission poll failed; keeping the missions loaded before")
            self._stopped.wait(self.interval)


class KubeWatchSync(_Sync):
    """In a cluster: list the Missions (of one namespace or all), then watch them."""

    def __init__(self, kube: Kube, book: MissionBook, namespace: str | None = None) -> None:
        super().__init__(book, "callwarden-mission-watch")
        self.kube = kube
        self.namespace = namespace
        self._objects: dict[tuple[str, str], Mission] = {}
        self._resource_version: str | None = None
        self._stream: Any = None

    def _interrupt(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.stop()

    def _list_call(self) -> tuple[Any, tuple[Any, ...]]:
        custom = self.kube.custom
        if self.namespace is None:
            return custom.list_cluster_custom_object, (API_GROUP, API_VERSION, PLURAL)
        return custom.list_namespaced_custom_object, (API_GROUP, API_VERSION, self.namespace, PLURAL)

    def relist(self) -> None:
        function, arguments = self._list_call()
        listed = function(*arguments, _request_timeout=(5.0, 30.0))
        self._objects = {}
        for item in listed.get("items") or []:
            self._hold("ADDED", item)
        self._resource_version = listed["metadata"]["resourceVersion"]
        self.book.update(self._objects.values())
        self.synced.set()

    def _hold(self, kind: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        if kind == "DELETED":
            self._objects.pop(key, None)
            return
        try:
            self._objects[key] = mission_of(obj)
        except ValidationError as error:  # binds nothing; the previous version is forgotten too
            self._objects.pop(key, None)
            log.warning("ignoring mission %s/%s: %s", key[0], key[1], error)

    def _run(self) -> None:
        follow(
            self._stopped,
            listed=lambda: self._resource_version is not None,
            relist=self.relist,
            watch_once=self._watch_once,
            forget=self._forget_resource_version,
            what="mission watch",
        )

    def _forget_resource_version(self) -> None:
        self._resource_version = None

    def _watch_once(self) -> None:
        function, arguments = self._list_call()
        self._stream = stream = watch.Watch()
        events = stream.stream(
            function,
            *arguments,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(5.0, WATCH_SECONDS + 30.0),
        )
        for event in events:
            if self._stopped.is_set():
                stream.stop()
                return
            obj = event["raw_object"]
            self._resource_version = (obj.get("metadata") or {}).get(
                "resourceVersion"
            ) or self._resource_version
            if event["type"] == "BOOKMARK":
                continue
            self._hold(event["type"], obj)
            self.book.update(self._objects.values())


# Who an expansion that ext_authz proposes is proposed by, in the mission's history.
PROPOSER: Final = "callwarden-extauthz"


def proposer_for(records: MissionRecords) -> Proposer:
    """Proposes a child mission in `records`; False when it is already there (another replica)."""

    def propose(mission: Mission) -> bool:
        try:
            records.propose(mission, PROPOSER)
        except StoreConflict:
            return False
        return True

    return propose


@contextmanager
def follow_mission_file(path: str | Path, interval: float = POLL_SECONDS) -> Iterator[PollingSync]:
    """Standalone: the missions of the SQLite file at `path`, loaded, then followed until the
    block exits (`sync.book` goes to `start_extauthz(missions=...)`)."""
    documents = SqliteDocuments(path)
    records = MissionRecords(documents)
    sync = PollingSync(records, MissionBook(proposer=proposer_for(records)), interval)
    sync.sync_once()
    sync.start()
    try:
        yield sync
    finally:
        sync.stop()
        documents.close()
