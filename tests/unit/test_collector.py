"""The collector policy of long-running processes (innosystem/kit/collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from innosystem.kit import collector


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_freezes_what_start_up_made_and_raises_the_young_threshold(restored: None) -> None:
    made_at_start_up = [{"n": i} for i in range(1000)]
    older = gc.get_threshold()[1:]
    collector.settle()
    assert gc.get_freeze_count() >= len(made_at_start_up)  # out of every later scan
    assert gc.get_threshold() == (collector.THRESHOLD, *older)
    assert gc.isenabled()  # cycles are still collected


def test_a_cycle_made_after_settling_is_still_collected(restored: None) -> None:
    collector.settle()

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # reference counting alone cannot free a cycle
    gc.collect()
    assert gone() is None


def test_zero_keeps_the_interpreters_defaults(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNOSYSTEM_GC_THRESHOLD", "0")
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    collector.settle()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen
