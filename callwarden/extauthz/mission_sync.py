"""Missions from the store to the `MissionBook` of one ext_authz process, off the check path.

In a cluster the Mission objects are listed, then watched (extauthz.mission_watch, the only part
that needs the kubernetes client); every change rebuilds the book's index from all objects held.
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
from typing import Final

from callwarden.extauthz.mission import MissionBook, Proposer
from callwarden.policy.model import Mission
from callwarden.stores.documents import StoreConflict
from callwarden.stores.missions import MissionRecords
from callwarden.stores.sqlite import SqliteDocuments

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.5


class MissionSync(ABC):
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
        """Always ready: until the missions load, a call naming one is denied (mission-unknown)
        while every other call is decided as usual, so a missing Mission CRD or an unreadable
        store never takes the enforcement point out of service."""
        if not self.synced.is_set():
            return True, "missions not loaded yet: calls naming a mission are denied"
        return True, f"{len(self.book.index)} mission(s) loaded"

    def _interrupt(self) -> None:  # noqa: B027 - a hook: only a watch has a blocking read to end
        """Wake the thread from a blocking read (a watch stream)."""

    @abstractmethod
    def _run(self) -> None: ...


class PollingSync(MissionSync):
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
