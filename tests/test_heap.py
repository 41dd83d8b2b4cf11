"""heap.settle: a serving process's long-lived heap leaves the collector's full passes, and what
an earlier settle froze is still collected once it becomes garbage (a swapped-out bundle)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from callwarden.extauthz import heap
from callwarden.extauthz.service import start_extauthz
from callwarden.policy.bundle import compile_bundle
from callwarden.policy.loader import config_from_objects


class Node:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Leave the test process's heap as it was: nothing frozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def cyclic_garbage_to_be() -> tuple[Node, weakref.ref[Node]]:
    node = Node()
    return node, weakref.ref(node)


def test_settle_moves_the_surviving_heap_to_the_permanent_generation() -> None:
    heap.settle()
    assert gc.get_freeze_count() > 1000


def test_settle_collects_garbage_that_an_earlier_settle_froze() -> None:
    node, alive = cyclic_garbage_to_be()
    heap.settle()  # the node is frozen now
    del node
    gc.collect()
    assert alive() is not None  # frozen cyclic garbage: a plain collection never frees it
    heap.settle()
    assert alive() is None


def test_extauthz_settles_its_heap_once_serving_only_when_asked() -> None:
    bundle = compile_bundle(config_from_objects([]))
    with start_extauthz(bundle):
        assert gc.get_freeze_count() == 0
    with start_extauthz(bundle, settle_heap=True):
        assert gc.get_freeze_count() > 1000


def test_a_swap_frees_what_the_previous_settle_froze() -> None:
    bundle = compile_bundle(config_from_objects([]))
    with start_extauthz(bundle, settle_heap=True) as running:
        node, alive = cyclic_garbage_to_be()
        heap.settle()
        del node  # garbage inside the permanent generation, as an old bundle is after a swap
        running.swap(compile_bundle(config_from_objects([])))
        assert alive() is None
