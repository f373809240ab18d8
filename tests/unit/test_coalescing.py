"""Coalescing (innosystem.kit.coalescing): a coalescer's orphan hand-back, its answer before the work that
follows it, a backlog's turns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from innosystem.kit.coalescing import Answer, Backlog, Coalescer, Lanes


async def test_coalescer_hands_back_a_result_whose_caller_left() -> None:
    orphans: list[int] = []
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return [i * 10 for i in items]

    async def orphaned(result: int) -> None:
        orphans.append(result)

    c: Coalescer[int, int] = Coalescer(handler, orphaned=orphaned)
    stays = asyncio.create_task(c.submit(1))
    leaves = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0.05)
    leaves.cancel()
    gate.set()
    assert await stays == 10
    await asyncio.sleep(0.05)
    assert orphans == [20]  # 2 was in the running batch when its caller left: handed back


async def test_a_backlog_takes_what_arrived_meanwhile_in_one_turn_and_outlives_a_failing_turn() -> None:
    turns: list[list[int]] = []
    gate = asyncio.Event()

    async def handler(items: list[int]) -> None:
        turns.append(items)
        if items == [1]:
            await gate.wait()
            raise RuntimeError("the first turn fails")

    backlog: Backlog[int] = Backlog(handler, "test")
    backlog.add(1)
    await asyncio.sleep(0)  # the first turn is under way
    backlog.add(2)
    backlog.add(3)
    gate.set()
    await backlog.drained()
    assert turns == [[1], [2, 3]]  # the failure was logged, the next turn still ran
    backlog.add(4)
    await backlog.drained()
    assert turns[-1] == [4]


async def test_a_backlog_with_a_window_takes_a_quiet_stream_of_items_in_few_turns() -> None:
    async def stream(window: float) -> list[list[int]]:
        turns: list[list[int]] = []

        async def handler(items: list[int]) -> None:
            turns.append(items)

        backlog: Backlog[int] = Backlog(handler, "test", window=window)
        for item in (1, 2, 3):  # one every 20 ms, as results come at a moderate rate
            backlog.add(item)
            await asyncio.sleep(0.02)
        await backlog.drained()
        backlog.add(4)  # after the turn: the next one
        await backlog.drained()
        return turns

    assert await stream(0.0) == [[1], [2], [3], [4]]  # each turn as soon as its item came
    # the first at once, the next two in the window after it; then idle: the fourth at once again
    assert await stream(0.5) == [[1], [2, 3], [4]]


async def test_a_second_batch_starts_beside_a_small_one_only() -> None:
    batches: list[list[int]] = []
    gates: list[asyncio.Event] = []

    async def handler(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        gates.append(gate := asyncio.Event())
        await gate.wait()
        return list(items)

    c: Coalescer[int, int] = Coalescer(handler, concurrency=2, overlap_below=3)
    first = [asyncio.create_task(c.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert batches == [[1, 2]]  # under way, smaller than 3
    beside = asyncio.create_task(c.submit(3))
    await asyncio.sleep(0.01)
    assert batches == [[1, 2], [3]]  # started beside it at once
    for gate in gates:
        gate.set()
    assert await asyncio.gather(*first, beside) == [1, 2, 3]

    batches.clear()
    gates.clear()
    big = [asyncio.create_task(c.submit(i)) for i in (4, 5, 6)]
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(c.submit(i)) for i in (7, 8)]
    await asyncio.sleep(0.01)
    assert batches == [[4, 5, 6]]  # not beside a batch of 3: they wait for it …
    gates[0].set()
    await asyncio.sleep(0.01)
    assert batches == [[4, 5, 6], [7, 8]]  # … and then go together
    gates[1].set()
    assert await asyncio.gather(*big, *later) == [4, 5, 6, 7, 8]


async def test_callers_have_their_answer_before_the_work_that_follows_it(caplog: pytest.LogCaptureFixture) -> None:
    after = asyncio.Event()
    done: list[list[int]] = []
    batches: list[list[int]] = []

    async def follow(items: list[int]) -> None:
        await after.wait()
        done.append(items)
        if items == [1]:
            raise RuntimeError("the work after the first batch fails")

    async def handler(items: Sequence[int]) -> Answer[int]:
        batches.append(list(items))
        return Answer([i * 10 for i in items], follow(list(items)))

    c: Coalescer[int, int] = Coalescer(handler, concurrency=2)
    assert await asyncio.wait_for(c.submit(1), 1) == 10  # answered while its follow-up still waits
    assert done == []
    # the worker is busy with it: a new item starts a second worker rather than wait behind it
    assert await asyncio.wait_for(c.submit(2), 1) == 20
    assert batches == [[1], [2]]
    after.set()
    await asyncio.sleep(0.01)
    assert sorted(done) == [[1], [2]]
    assert "the work after a batch of 1 failed" in caplog.text  # logged; the coalescer goes on
    assert await asyncio.wait_for(c.submit(3), 1) == 30


async def test_with_one_worker_the_next_batch_waits_for_the_work_that_follows_the_last() -> None:
    after = asyncio.Event()
    order: list[str] = []

    async def follow(items: list[int]) -> None:
        await after.wait()
        order.append(f"after {items}")

    async def handler(items: Sequence[int]) -> Answer[int]:
        order.append(f"batch {list(items)}")
        return Answer(list(items), follow(list(items)))

    c: Coalescer[int, int] = Coalescer(handler)
    assert await c.submit(1) == 1
    second = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0.01)
    assert order == ["batch [1]"]  # one worker: it finishes what follows the first batch first
    after.set()
    assert await second == 2
    assert order[:3] == ["batch [1]", "after [1]", "batch [2]"]


async def test_lanes_keep_keys_apart_and_forget_the_least_recently_used() -> None:
    batches: list[list[tuple[str, int]]] = []
    gate = asyncio.Event()

    async def handler(items: Sequence[tuple[str, int]]) -> list[int]:
        batches.append(list(items))
        await gate.wait()
        return [n for _, n in items]

    lanes: Lanes[str, tuple[str, int], int] = Lanes(handler, limit=2)
    first = [asyncio.create_task(lanes(key).submit((key, n))) for key, n in (("a", 1), ("b", 2))]
    await asyncio.sleep(0.01)
    assert lanes("a").idle() is False  # its batch is under way
    queued = [asyncio.create_task(lanes(key).submit((key, n))) for key, n in (("a", 3), ("b", 4), ("a", 5))]
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*first, *queued) == [1, 2, 3, 4, 5]
    assert all(len({key for key, _ in batch}) == 1 for batch in batches)  # never two keys in one batch
    assert [("a", 3), ("a", 5)] in batches  # what came meanwhile went together
    assert lanes("a").idle()
    a = lanes("a")
    lanes("c")  # a third key: the least recently used ("b") is forgotten, "a" was used just now
    assert lanes("a") is a and len(lanes._lanes) == 2 and "b" not in lanes._lanes
