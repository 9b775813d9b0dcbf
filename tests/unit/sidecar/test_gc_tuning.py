"""Garbage collection settled for serving: frozen start-up heap, cycles still freed, and a
replaced config's cyclic objects freed once it is idle."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from packgate_sidecar import gc_tuning


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Config:
    """Stands for an Active config: in a reference cycle, as policy objects often are."""

    def __init__(self) -> None:
        self.me = self
        self.retired = False


def test_settle_freezes_the_heap_and_raises_the_young_threshold() -> None:
    gc_tuning.settle()
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD


def test_cycles_made_after_settling_are_still_collected() -> None:
    gc_tuning.settle()
    cycle = Config()
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


def test_a_replaced_config_is_freed_once_idle_even_though_it_was_frozen() -> None:
    holder = {"current": Config()}
    settler = gc_tuning.Settler(lambda: holder["current"], lambda old: old.retired)
    gc_tuning.settle()  # the first config is frozen with the start-up heap
    first = weakref.ref(holder["current"])
    assert not settler.check()  # nothing changed

    holder["current"] = Config()
    assert not settler.check()  # replaced, but still in use
    old = first()
    assert old is not None
    old.retired = True
    del old
    assert not settler.check()  # idle once: its policies may still be closing
    assert settler.check()  # idle twice: settled again, the old config collected
    assert first() is None
    assert settler.settles == 1
    assert settler.settled is holder["current"]


def test_the_first_config_after_starting_without_one_is_settled() -> None:
    holder: dict[str, Config | None] = {"current": None}
    settler = gc_tuning.Settler(lambda: holder["current"], lambda old: old.retired)
    holder["current"] = Config()
    assert not settler.check()
    assert settler.check()
