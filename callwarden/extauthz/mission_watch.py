"""In a cluster: the Mission objects listed, then watched, into a `MissionBook` (extauthz.mission_sync).

The list-then-watch loop is the bundle watcher's (kube.follow): a watch that ends is resumed, 410
Gone relists, connection failures back off. An object that is not a valid Mission binds nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from kubernetes import watch as _watch
from pydantic import ValidationError

from callwarden.extauthz.mission import MissionBook
from callwarden.extauthz.mission_sync import MissionSync
from callwarden.kube.client import Kube, describe_error
from callwarden.kube.follow import follow
from callwarden.policy.model import API_GROUP, API_VERSION, Mission
from callwarden.stores.missions import PLURAL, mission_of

log = logging.getLogger(__name__)
watch: Any = _watch  # kubernetes.watch has no type hints

WATCH_SECONDS: Final = 240


class KubeWatchSync(MissionSync):
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

    def try_first_list(self) -> None:
        """One list before serving, so a replica starts with the missions it will enforce; a
        failure (no Mission CRD yet, the API server away) is left to the watch loop's retries."""
        try:
            self.relist()
        except Exception as error:
            log.warning("mission watch: cannot list Missions yet (%s); retrying", describe_error(error))

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
