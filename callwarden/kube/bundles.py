"""The bundle ConfigMaps: the contract between the operator (writer) and ext_authz (reader).

Pure data in, data out (no Kubernetes client, no kopf), so the data path can import it.

Layout, per McpServer `<ns>/<name>`:
- ConfigMaps `callwarden-bundle-<name>-<i>` in the McpServer's own namespace (an ownerReference
  can only point at an owner in the same namespace, so that is where garbage collection works).
- Labels `callwarden.io/bundle=true` (what ext_authz watches), `callwarden.io/server=<name>`
  and `app.kubernetes.io/managed-by=callwarden-operator`.
- Annotations `callwarden.io/server-key=<ns>/<name>` (the authoritative owner: label values are
  limited to 63 characters), `callwarden.io/revision` (content address of the whole server
  bundle, `policy.loader`'s revision of its objects), `callwarden.io/shard-index` and
  `callwarden.io/shard-count`.
- One data key, `objects.json`: a JSON array of CRD-shaped objects (the McpServer first, in
  shard 0, then the ToolPolicies that target it), each `{apiVersion, kind, metadata: {name,
  namespace, generation, uid}, spec}` exactly as the API server stores the spec.

Objects are packed into shards of at most `SHARD_TARGET_BYTES` (an object larger than that gets
a shard of its own); a shard above `MAX_SHARD_BYTES` is refused (etcd's object limit is ~1.5 MiB
and a ConfigMap's 1 MiB, so this keeps a margin for metadata).

A reader takes a server's bundle only when it is complete and consistent: shards 0..count-1
all present and all carrying shard 0's revision. Shards are written one at a time, so a reader
can see a mix for a moment; it then keeps what it had for that server.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from callwarden.policy.model import GROUP_VERSION

BUNDLE_LABEL: Final = "callwarden.io/bundle"
SERVER_LABEL: Final = "callwarden.io/server"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "callwarden-operator"
BUNDLE_SELECTOR: Final = f"{BUNDLE_LABEL}=true"

SERVER_KEY_ANNOTATION: Final = "callwarden.io/server-key"
REVISION_ANNOTATION: Final = "callwarden.io/revision"
SHARD_INDEX_ANNOTATION: Final = "callwarden.io/shard-index"
SHARD_COUNT_ANNOTATION: Final = "callwarden.io/shard-count"
DATA_KEY: Final = "objects.json"
NAME_PREFIX: Final = "callwarden-bundle-"

SHARD_TARGET_BYTES: Final = 512 * 1024
MAX_SHARD_BYTES: Final = 900 * 1024
MAX_SHARDS: Final = 64

_MAX_NAME: Final = 253
_MAX_LABEL: Final = 63
_LABEL_VALUE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class ShardTooLarge(Exception):
    """One object alone is larger than a ConfigMap can safely hold."""

    def __init__(self, kind: str, key: str, size: int) -> None:
        self.kind = kind
        self.key = key
        self.size = size
        super().__init__(
            f"{kind} {key} is {size} bytes as JSON, over the {MAX_SHARD_BYTES}-byte bundle shard limit"
        )


def bundle_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Kubernetes object a bundle carries: identity and spec, no status."""
    metadata = obj.get("metadata") or {}
    kept = {key: metadata[key] for key in ("name", "namespace", "generation", "uid") if key in metadata}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": kept,
        "spec": obj.get("spec"),
    }


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def shard_name(server_name: str, index: int) -> str:
    """`callwarden-bundle-<name>-<i>`; a name too long for that is cut and tagged with its hash."""
    suffix = f"-{index}"
    if len(NAME_PREFIX) + len(server_name) + len(suffix) <= _MAX_NAME:
        return f"{NAME_PREFIX}{server_name}{suffix}"
    keep = _MAX_NAME - len(NAME_PREFIX) - len(suffix) - 9
    return f"{NAME_PREFIX}{server_name[:keep].rstrip('.-')}-{_digest(server_name)}{suffix}"


def server_label(server_name: str) -> str:
    """The `callwarden.io/server` label value: the name, or a cut name and its hash if too long."""
    if len(server_name) <= _MAX_LABEL and _LABEL_VALUE.match(server_name):
        return server_name
    return f"{server_name[: _MAX_LABEL - 9].rstrip('.-')}-{_digest(server_name)}"


def _encode(objects: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(objects), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pack(objects: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Objects in order, greedily packed into shards; raises ShardTooLarge."""
    shards: list[list[Mapping[str, Any]]] = [[]]
    size = 2
    for obj in objects:
        own = len(_encode([obj]).encode())
        if own > MAX_SHARD_BYTES:
            raise ShardTooLarge(str(obj.get("kind")), f"{namespace_of(obj)}/{name_of(obj)}", own)
        if shards[-1] and size + own + 1 > SHARD_TARGET_BYTES:
            shards.append([])
            size = 2
        shards[-1].append(obj)
        size += own + 1
    return shards


def build_configmaps(
    server: Mapping[str, Any], objects: Sequence[Mapping[str, Any]], revision: str
) -> list[dict[str, Any]]:
    """The ConfigMaps of one McpServer's bundle (`objects[0]` is the server itself).

    `server` is the live McpServer object: its uid makes it the ConfigMaps' owner.
    """
    metadata = server["metadata"]
    name, namespace = metadata["name"], metadata.get("namespace", "default")
    shards = pack(objects)
    if len(shards) > MAX_SHARDS:
        raise ShardTooLarge("McpServer", f"{namespace}/{name}", sum(len(_encode(s)) for s in shards))
    owner = {
        "apiVersion": GROUP_VERSION,
        "kind": "McpServer",
        "name": name,
        "uid": metadata["uid"],
        "controller": True,
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": shard_name(name, index),
                "namespace": namespace,
                "labels": {BUNDLE_LABEL: "true", SERVER_LABEL: server_label(name), MANAGED_BY_LABEL: MANAGER},
                "annotations": {
                    SERVER_KEY_ANNOTATION: f"{namespace}/{name}",
                    REVISION_ANNOTATION: revision,
                    SHARD_INDEX_ANNOTATION: str(index),
                    SHARD_COUNT_ANNOTATION: str(len(shards)),
                },
                "ownerReferences": [owner],
            },
            "data": {DATA_KEY: _encode(shard)},
        }
        for index, shard in enumerate(shards)
    ]


# --- Reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One bundle ConfigMap as read back; `problem` is set when it cannot be used."""

    namespace: str
    name: str
    server_key: str
    revision: str
    index: int
    count: int
    objects: tuple[dict[str, Any], ...]
    problem: str | None = None


def read_shard(configmap: Mapping[str, Any]) -> Shard:
    """Parse one ConfigMap (as a JSON dict from the API); never raises."""
    metadata = configmap.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
    server_key = str(annotations.get(SERVER_KEY_ANNOTATION, ""))
    revision = str(annotations.get(REVISION_ANNOTATION, ""))
    try:
        index = int(annotations.get(SHARD_INDEX_ANNOTATION, ""))
        count = int(annotations.get(SHARD_COUNT_ANNOTATION, ""))
    except ValueError:
        return Shard(
            namespace, name, server_key, revision, 0, 0, (), "shard index or count is not an integer"
        )
    base = Shard(namespace, name, server_key, revision, index, count, ())
    if not server_key or not revision:
        return _with_problem(
            base, f"annotations {SERVER_KEY_ANNOTATION} and {REVISION_ANNOTATION} are required"
        )
    if not server_key.startswith(f"{namespace}/"):
        # A bundle speaks only for servers of its own namespace: whoever may write ConfigMaps in
        # one namespace must not be able to set the policy of another's servers.
        return _with_problem(base, f"server {server_key!r} is not in the ConfigMap's namespace {namespace!r}")
    if not 0 <= index < count <= MAX_SHARDS:
        return _with_problem(base, f"shard {index} of {count} is out of range")
    raw = (configmap.get("data") or {}).get(DATA_KEY)
    if not isinstance(raw, str):
        return _with_problem(base, f"data key {DATA_KEY} is missing")
    try:
        objects = json.loads(raw)
    except ValueError as error:
        return _with_problem(base, f"{DATA_KEY} is not JSON: {error}")
    if not isinstance(objects, list) or not all(isinstance(obj, dict) for obj in objects):
        return _with_problem(base, f"{DATA_KEY} must be a JSON array of objects")
    strays = [obj for obj in objects if (obj.get("metadata") or {}).get("namespace") != namespace]
    if strays:
        return _with_problem(
            base, f"{len(strays)} object(s) do not name the ConfigMap's namespace {namespace!r}"
        )
    return Shard(namespace, name, server_key, revision, index, count, tuple(objects))


def _with_problem(shard: Shard, problem: str) -> Shard:
    return Shard(
        shard.namespace, shard.name, shard.server_key, shard.revision, shard.index, shard.count, (), problem
    )


@dataclass(frozen=True)
class ServerBundle:
    """One McpServer's complete, consistent bundle: its revision and objects (server first)."""

    server_key: str
    revision: str
    objects: tuple[dict[str, Any], ...]
    configmaps: tuple[str, ...]


@dataclass(frozen=True)
class Unusable:
    """Why a server's shards do not make a bundle. `in_progress`: some shards of its newest
    revision are not there yet (they are written one by one), which is no error."""

    reason: str
    in_progress: bool = False


def assemble(shards: Iterable[Shard]) -> tuple[dict[str, ServerBundle], dict[str, Unusable]]:
    """Group shards by server: (complete bundles, server key -> why its shards are not usable)."""
    by_server: dict[str, list[Shard]] = {}
    for shard in shards:
        by_server.setdefault(shard.server_key or f"{shard.namespace}/?{shard.name}", []).append(shard)
    complete: dict[str, ServerBundle] = {}
    broken: dict[str, Unusable] = {}
    for key, group in sorted(by_server.items()):
        bundle = _consistent(key, group)
        if isinstance(bundle, ServerBundle):
            complete[key] = bundle
        else:
            broken[key] = bundle
    return complete, broken


def _consistent(key: str, shards: Sequence[Shard]) -> ServerBundle | Unusable:
    problems = [f"ConfigMap {s.namespace}/{s.name}: {s.problem}" for s in shards if s.problem]
    if problems:
        return Unusable("; ".join(problems))
    first = next((s for s in shards if s.index == 0), None)
    if first is None:
        return Unusable("shard 0 is missing", in_progress=True)
    chosen = {s.index: s for s in shards if s.revision == first.revision and s.count == first.count}
    missing = [i for i in range(first.count) if i not in chosen]
    if missing:
        reason = (
            f"revision {first.revision} is incomplete (shards {missing} of {first.count} missing or older)"
        )
        return Unusable(reason, in_progress=True)
    objects = tuple(obj for i in range(first.count) for obj in chosen[i].objects)
    server = objects[0] if objects else {}
    if server.get("kind") != "McpServer" or f"{namespace_of(server)}/{name_of(server)}" != key:
        return Unusable(f"shard 0 does not start with the McpServer {key}")
    names = tuple(chosen[i].name for i in range(first.count))
    return ServerBundle(key, first.revision, objects, names)


def merge_objects(bundles: Iterable[ServerBundle]) -> list[dict[str, Any]]:
    """Every object of every server bundle, each once.

    A ToolPolicy aimed at several servers sits in each of their bundles. The operator writes
    them one after another, so for a moment two bundles may hold different generations of the
    same policy: the highest generation wins (it is the one every bundle is about to carry).
    """
    chosen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for bundle in bundles:
        for obj in bundle.objects:
            key = (str(obj.get("kind")), namespace_of(obj), name_of(obj))
            held = chosen.get(key)
            if held is None or _generation(obj) > _generation(held):
                chosen[key] = obj
    return [chosen[key] for key in sorted(chosen)]


def _generation(obj: Mapping[str, Any]) -> int:
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else 0


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace", "default"))


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))
