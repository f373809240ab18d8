"""Pure rules, without services: backoff, the retry decision, queue names, encryption paths, and
the coalescer's orphan hand-back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from services.jobs.batcher import Backlog, Coalescer
from services.jobs.encryption import paths_for
from services.jobs.retry import JITTER, Policy, backoff_seconds, why_final
from services.jobs.runtime import queue_name

POLICY = Policy(max_attempts=5, initial_interval_seconds=2, backoff_multiplier=3.0, max_interval_seconds=30,
                non_retryable_error_types=("ValueError",))


def test_backoff_grows_by_the_multiplier_up_to_the_maximum_with_early_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 2.0), (2, 6.0), (3, 18.0), (4, 30.0), (9, 30.0)]:
        for _ in range(50):
            delay = backoff_seconds(POLICY, attempt, rng)
            assert base * (1 - JITTER) <= delay <= base


def test_why_final() -> None:
    assert why_final(POLICY, 1, "IOError", False) is None
    assert why_final(POLICY, 1, "ValueError", False) == "error type ValueError is non-retryable"
    assert why_final(POLICY, 1, "", True) == "the processor marked the error non-retryable"
    assert why_final(POLICY, 5, "IOError", False) == "no attempts left (5 of 5)"


def test_queue_names_separate_tag_sets_and_escape_reserved_characters() -> None:
    assert queue_name("resize", []) == "resize"
    assert queue_name("resize", ["gpu", "eu", "gpu"]) == "resize~eu,gpu"
    assert queue_name("a:b", ["x|y"]) == "a%3Ab~x%7Cy"
    assert queue_name("a:b", []) != queue_name("a", ["b"])


def test_encryption_paths() -> None:
    doc = {"card": {"number": "4111", "exp": "1"}, "amount": 5}
    assert paths_for("payload", doc, ["payload.card.number", "payload.missing", "result.x"]) == ["payload.card.number"]
    assert paths_for("payload", doc, []) == ["payload.card", "payload.amount"]
    assert paths_for("result", {"token": "t"}, ["payload.card.number"]) == []


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
