"""`DocumentStore` in one SQLite file: the standalone store (no cluster).

WAL mode lets the CLI approve while ext_authz reads, from other processes; every write is one
`BEGIN IMMEDIATE` transaction; a status write is `UPDATE ... WHERE version = ?`, so of two
writers that read the same version exactly one wins, across threads and processes alike.
Each thread gets its own connection (sqlite3 connections are not shared between threads).
"""

from __future__ import annotations

import copy
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from callwarden.stores.documents import StoreConflict, labels_match

__all__ = ["SqliteDocuments"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS objects (
    plural TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, created REAL NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (plural, namespace, name));
CREATE TABLE IF NOT EXISTS labels (
    plural TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (plural, namespace, name, key));
CREATE INDEX IF NOT EXISTS labels_by_value ON labels (plural, key, value);
CREATE TABLE IF NOT EXISTS events (
    time TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
"""
_BUSY_TIMEOUT_MS: Final = 5000


class SqliteDocuments:
    """Objects in the SQLite file at `path` (created with its schema when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)  # idempotent; executescript manages its own transaction

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._local.connection = connection
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def create(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(body))
        metadata = stored.setdefault("metadata", {})
        namespace, name = metadata["namespace"], metadata["name"]
        now = datetime.now(UTC)
        metadata["creationTimestamp"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        metadata["resourceVersion"] = "1"
        try:
            with self._write() as connection:
                connection.execute(
                    "INSERT INTO objects VALUES (?, ?, ?, 1, ?, ?)",
                    (plural, namespace, name, now.timestamp(), orjson.dumps(stored)),
                )
                connection.executemany(
                    "INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                    [(plural, namespace, name, k, v) for k, v in (metadata.get("labels") or {}).items()],
                )
        except sqlite3.IntegrityError as error:
            raise StoreConflict(f"{plural} {namespace}/{name} already exists") from error
        return stored

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        row = (
            self._connection()
            .execute(
                "SELECT body FROM objects WHERE plural = ? AND namespace = ? AND name = ?",
                (plural, namespace, name),
            )
            .fetchone()
        )
        return None if row is None else _loaded(row[0])

    def select(
        self, plural: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        query = "SELECT o.body FROM objects o WHERE o.plural = ?"
        parameters: list[Any] = [plural]
        if namespace is not None:
            query += " AND o.namespace = ?"
            parameters.append(namespace)
        for key, value in (labels or {}).items():  # every label must match: one EXISTS each, indexed
            query += (
                " AND EXISTS (SELECT 1 FROM labels l WHERE l.plural = o.plural AND l.namespace = o.namespace"
                " AND l.name = o.name AND l.key = ? AND l.value = ?)"
            )
            parameters += [key, value]
        rows = self._connection().execute(query + " ORDER BY o.created, o.name", parameters).fetchall()
        found = [_loaded(row[0]) for row in rows]
        return [body for body in found if labels_match(body["metadata"], labels)]

    def replace_status(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        expected = int(metadata.get("resourceVersion") or 0)
        with self._write() as connection:
            row = connection.execute(
                "SELECT body, version FROM objects WHERE plural = ? AND namespace = ? AND name = ?",
                (plural, namespace, name),
            ).fetchone()
            if row is None or row[1] != expected:
                raise StoreConflict(f"{plural} {namespace}/{name} changed (or vanished) since it was read")
            stored = _loaded(row[0])
            stored["status"] = copy.deepcopy(body.get("status"))
            stored["metadata"]["resourceVersion"] = str(expected + 1)
            connection.execute(
                "UPDATE objects SET body = ?, version = ?"
                " WHERE plural = ? AND namespace = ? AND name = ? AND version = ?",
                (orjson.dumps(stored), expected + 1, plural, namespace, name, expected),
            )
        return stored

    def delete(self, plural: str, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        key = (plural, metadata["namespace"], metadata["name"])
        with self._write() as connection:
            deleted = connection.execute(
                "DELETE FROM objects WHERE plural = ? AND namespace = ? AND name = ? AND version = ?",
                (*key, int(metadata.get("resourceVersion") or 0)),
            ).rowcount
            if deleted != 1:
                raise StoreConflict(f"{plural} {key[1]}/{key[2]} changed (or vanished) since it was read")
            connection.execute("DELETE FROM labels WHERE plural = ? AND namespace = ? AND name = ?", key)

    def event(self, body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        metadata = body["metadata"]
        with self._write() as connection:
            connection.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(),
                    body.get("kind", ""),
                    metadata["namespace"],
                    metadata["name"],
                    "Warning" if warning else "Normal",
                    reason,
                    message,
                ),
            )

    def events(self, namespace: str, name: str) -> list[dict[str, str]]:
        """The events recorded for one object, oldest first."""
        rows = self._connection().execute(
            "SELECT time, type, reason, message FROM events WHERE namespace = ? AND name = ? ORDER BY rowid",
            (namespace, name),
        )
        return [{"time": t, "type": k, "reason": r, "message": m} for t, k, r, m in rows]


def _loaded(raw: bytes) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(raw)
    return body
