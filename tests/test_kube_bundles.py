"""operator.configmaps: the bundle ConfigMap format shared by the operator and ext_authz."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.kube.bundles import (
    DATA_KEY,
    MAX_SHARD_BYTES,
    SHARD_TARGET_BYTES,
    ServerBundle,
    ShardTooLarge,
    assemble,
    build_configmaps,
    merge_objects,
    pack,
    read_shard,
    server_label,
    shard_name,
)

NS = "team-a"


def obj(kind: str, name: str, size: int = 10, generation: int = 1, namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "callwarden.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "generation": generation, "uid": f"uid-{name}"},
        "spec": {"padding": "x" * size},
    }


def live_server(name: str = "finance") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"}}


def configmaps(
    objects: list[dict[str, Any]], revision: str = "r1", name: str = "finance"
) -> list[dict[str, Any]]:
    return build_configmaps(live_server(name), objects, revision)


@pytest.mark.parametrize(
    ("first", "second"),
    [(("a", 1), ("a-1", 0)), (("a-1", 0), ("a", 1)), (("a", 10), ("a-1", 0)), (("a.b", 0), ("a", 0))],
    ids=["suffix-vs-name", "name-vs-suffix", "two-digits", "dotted"],
)
def test_shard_names_of_different_servers_never_collide(
    first: tuple[str, int], second: tuple[str, int]
) -> None:
    assert shard_name(*first) != shard_name(*second)


def test_a_long_server_name_gets_a_valid_hashed_shard_name() -> None:
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    names = {shard_name(long_a, 0), shard_name(long_b, 0)}
    assert len(names) == 2
    assert all(len(name) <= 253 for name in names)


@pytest.mark.parametrize(
    "name", ["finance", "a" * 63, "a" * 64, "a." * 40 + "b"], ids=["short", "63", "64", "dots"]
)
def test_the_server_label_is_a_valid_label_value(name: str) -> None:
    label = server_label(name)
    assert len(label) <= 63
    assert label[0].isalnum() and label[-1].isalnum()
    assert (label == name) == (len(name) <= 63)


def test_a_shard_reads_back_what_was_written() -> None:
    objects = [obj("McpServer", "finance"), obj("ToolPolicy", "p")]
    (configmap,) = configmaps(objects)
    shard = read_shard(configmap)
    assert shard.problem is None
    assert (shard.server_key, shard.revision, shard.index, shard.count) == (f"{NS}/finance", "r1", 0, 1)
    assert list(shard.objects) == objects


def _with(configmap: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(configmap)
    target = result
    for key in path[:-1]:
        target = target[key]
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return result


ANNOTATIONS = ("metadata", "annotations")


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ((*ANNOTATIONS, "callwarden.io/revision"), None, "are required"),
        ((*ANNOTATIONS, "callwarden.io/server-key"), None, "are required"),
        ((*ANNOTATIONS, "callwarden.io/shard-index"), "zero", "not an integer"),
        ((*ANNOTATIONS, "callwarden.io/shard-index"), "5", "out of range"),
        ((*ANNOTATIONS, "callwarden.io/shard-count"), "100000", "out of range"),
        (
            (*ANNOTATIONS, "callwarden.io/server-key"),
            "kube-system/finance",
            "not in the ConfigMap's namespace",
        ),
        (("data", DATA_KEY), None, "is missing"),
        (("data", DATA_KEY), '[{"a": 1}', "not JSON"),
        (("data", DATA_KEY), '{"kind": "McpServer"}', "JSON array of objects"),
        (("data", DATA_KEY), '[1, "two"]', "JSON array of objects"),
        (("data", DATA_KEY), json.dumps([obj("ToolPolicy", "p", namespace="kube-system")]), "namespace"),
        (("data", DATA_KEY), json.dumps([{"kind": "ToolPolicy", "metadata": {"name": "p"}}]), "namespace"),
    ],
    ids=[
        "no-revision",
        "no-server-key",
        "index-not-integer",
        "index-past-count",
        "count-too-large",
        "server-of-another-namespace",
        "no-data",
        "truncated-json",
        "not-an-array",
        "array-of-non-objects",
        "object-of-another-namespace",
        "object-without-namespace",
    ],
)
def test_a_malformed_shard_is_reported_never_raised(path: tuple[str, ...], value: Any, problem: str) -> None:
    (configmap,) = configmaps([obj("McpServer", "finance")])
    shard = read_shard(_with(configmap, path, value))
    assert shard.problem is not None and problem in shard.problem
    assert shard.objects == ()


def test_assemble_joins_the_shards_of_a_server_in_order() -> None:
    objects = [obj("McpServer", "finance")] + [obj("ToolPolicy", f"p{i}", size=200_000) for i in range(4)]
    written = configmaps(objects)
    assert len(written) > 1
    complete, broken = assemble(read_shard(cm) for cm in reversed(written))
    assert broken == {}
    assert list(complete[f"{NS}/finance"].objects) == objects


def test_a_server_missing_a_shard_is_not_assembled() -> None:
    objects = [obj("McpServer", "finance")] + [obj("ToolPolicy", f"p{i}", size=200_000) for i in range(4)]
    written = configmaps(objects)
    complete, broken = assemble(read_shard(cm) for cm in written[:-1])
    assert complete == {}
    assert broken[f"{NS}/finance"].in_progress


def test_shards_of_two_revisions_are_not_mixed() -> None:
    objects = [obj("McpServer", "finance")] + [obj("ToolPolicy", f"p{i}", size=200_000) for i in range(4)]
    old, new = configmaps(objects, "old"), configmaps(objects, "new")
    complete, broken = assemble([read_shard(new[0]), *(read_shard(cm) for cm in old[1:])])
    assert complete == {}
    assert "revision new is incomplete" in broken[f"{NS}/finance"].reason


def test_surplus_shards_of_an_older_revision_are_ignored() -> None:
    bigger = [obj("McpServer", "finance")] + [obj("ToolPolicy", f"p{i}", size=200_000) for i in range(4)]
    smaller = [obj("McpServer", "finance")]
    shards = [read_shard(cm) for cm in configmaps(smaller, "new") + configmaps(bigger, "old")[1:]]
    complete, _ = assemble(shards)
    assert complete[f"{NS}/finance"].revision == "new"


def test_shard_zero_must_start_with_its_own_server() -> None:
    (configmap,) = configmaps([obj("McpServer", "payroll")])
    complete, broken = assemble([read_shard(configmap)])
    assert complete == {}
    assert "does not start with the McpServer team-a/finance" in broken[f"{NS}/finance"].reason
    assert not broken[f"{NS}/finance"].in_progress


def test_merging_bundles_keeps_the_highest_generation_of_a_shared_policy() -> None:
    first = ServerBundle("a", "r", (obj("McpServer", "a"), obj("ToolPolicy", "p", generation=2)), ())
    second = ServerBundle("b", "r", (obj("McpServer", "b"), obj("ToolPolicy", "p", generation=3, size=1)), ())
    merged = merge_objects([first, second])
    assert [(o["kind"], o["metadata"]["name"]) for o in merged] == [
        ("McpServer", "a"),
        ("McpServer", "b"),
        ("ToolPolicy", "p"),
    ]
    assert merged[2]["metadata"]["generation"] == 3


def test_an_object_over_the_shard_limit_is_refused() -> None:
    with pytest.raises(ShardTooLarge, match="ToolPolicy team-a/huge"):
        pack([obj("McpServer", "finance"), obj("ToolPolicy", "huge", size=MAX_SHARD_BYTES)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=12))
def test_packing_keeps_every_object_in_order_within_the_shard_budget(sizes: list[int]) -> None:
    objects = [obj("ToolPolicy", f"p{i}", size=size) for i, size in enumerate(sizes)]
    shards = pack(objects)
    assert [o for shard in shards for o in shard] == objects
    for shard in shards:
        encoded = len(json.dumps(shard, separators=(",", ":")).encode())
        assert len(shard) == 1 or encoded <= SHARD_TARGET_BYTES
