"""Queue wake-ups: one job wakes one long poll, a lease that took all it asked for wakes the next,
and a replica does not wake itself twice through its own published message (real Valkey)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.redis import connect
from services.jobs.signals import Signals

SIGNALS_DB = 7  # the queue engine's tests' database (test_queue.py): prefixes keep them apart


@pytest.fixture
async def pair(valkey_server: EmbeddedValkey) -> AsyncIterator[tuple[Signals, Signals]]:
    """Two replicas' signals on one Redis, their listeners running."""
    url = valkey_server.url.rsplit("/", 1)[0] + f"/{SIGNALS_DB}"
    prefix = f"s{uuid.uuid4().hex[:8]}:"
    clients = [connect(url), connect(url)]
    replicas = (Signals(clients[0], prefix), Signals(clients[1], prefix))
    listeners = [asyncio.create_task(r.listen_forever()) for r in replicas]
    for _ in range(200):  # until both listen
        ((_, count),) = await clients[0].pubsub_numsub(replicas[0].wake_channel)
        if count == 2:
            break
        await asyncio.sleep(0.02)
    yield replicas
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    for c in clients:
        await c.aclose()


async def _waiters(s: Signals, queues: list[str], count: int, seconds: float) -> list[asyncio.Task[bool]]:
    tasks = [asyncio.create_task(s.wait(queues, s.versions(queues), seconds)) for _ in range(count)]
    await asyncio.sleep(0.05)  # all waiting
    return tasks


async def test_one_ready_job_wakes_one_waiter_and_more_wakes_the_next(pair: tuple[Signals, Signals]) -> None:
    a, _ = pair
    waiters = await _waiters(a, ["q"], 4, 2.0)
    await a.jobs_ready(["q"])
    await asyncio.sleep(0.3)  # the replica's own published wake-up came back meanwhile: skipped
    assert [w.done() for w in waiters] == [True, False, False, False]  # the oldest, alone
    assert waiters[0].result() is True
    a.more(["q"])  # that lease took all it asked for
    await asyncio.sleep(0.05)
    assert [w.done() for w in waiters] == [True, True, False, False]
    assert await asyncio.gather(*waiters[2:]) == [False, False]  # the others time out


async def test_a_job_that_came_before_the_wait_answers_at_once(pair: tuple[Signals, Signals]) -> None:
    a, _ = pair
    seen = a.versions(["q"])
    await a.jobs_ready(["q"])  # between the caller's look and its wait
    assert await asyncio.wait_for(a.wait(["q"], seen, 5.0), 1.0) is True


async def test_another_replica_wakes_one_waiter_per_queue(pair: tuple[Signals, Signals]) -> None:
    a, b = pair
    on_q = await _waiters(b, ["q"], 2, 5.0)
    on_r = await _waiters(b, ["r", "q"], 1, 5.0)
    await a.jobs_ready(["q", "r"])
    await asyncio.wait([on_q[0], on_r[0]], timeout=5.0)  # through Valkey
    await asyncio.sleep(0.1)
    assert [w.done() for w in on_q] == [True, False]
    assert on_r[0].done() and on_r[0].result() is True
    await asyncio.gather(*on_q, return_exceptions=True)


async def test_a_woken_waiter_that_is_cancelled_passes_its_wake_up_on(pair: tuple[Signals, Signals]) -> None:
    a, _ = pair
    first, second = await _waiters(a, ["q"], 2, 2.0)
    a.more(["q"])  # wakes `first` …
    first.cancel()  # … whose caller goes away before it could look
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1.0) is True  # nobody is left waiting for nothing


async def test_a_timed_out_or_cancelled_waiter_is_forgotten(pair: tuple[Signals, Signals]) -> None:
    a, _ = pair
    assert await a.wait(["q"], a.versions(["q"]), 0.05) is False
    gone = asyncio.create_task(a.wait(["q"], a.versions(["q"]), 5.0))
    await asyncio.sleep(0.02)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    (live,) = await _waiters(a, ["q"], 1, 2.0)
    a.more(["q"])
    assert await asyncio.wait_for(live, 1.0) is True  # the wake-up went to the live one


async def test_job_events_reach_another_replicas_watcher_and_only_while_a_job_is_watched(
        pair: tuple[Signals, Signals]) -> None:
    """A batch of changes asks Valkey whether any job is watched at all (the `watched` marker,
    which `Control.watch` subscribes to with its job's channel). A watcher on another replica gets
    its own job's events from the first batch after it began, and nothing else; without the
    marker subscribed anywhere, not even a subscriber of the job's channel gets an event."""
    a, b = pair
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    async with b.subscribe(b.job_prefix + mine) as bare:  # the channel alone: no job counts as watched
        await _until_subscribed(a, b.job_prefix + mine)
        await a.jobs_changed([(mine, {"status": 1}), (other, {"status": 1})])
        async with b.subscribe(b.watched_channel):
            await _until_subscribed(a, b.watched_channel)
            await a.jobs_changed([(mine, {"status": 2}), (other, {"status": 2})])  # A had found none watched
            assert await asyncio.wait_for(bare.get(), 2.0) == {"status": 2}  # the first event it got
            await a.jobs_changed([(other, {"status": 3}), (mine, {"status": 4})])  # asked in one question now
            assert await asyncio.wait_for(bare.get(), 2.0) == {"status": 4}
        await _until_subscribed(a, b.watched_channel, 0)
        await a.jobs_changed([(mine, {"status": 5})])  # asked in full (as last time), it finds none watched
        await asyncio.sleep(0.1)
        while not bare.empty():
            bare.get_nowait()
        await a.jobs_changed([(mine, {"status": 6})])
        await asyncio.sleep(0.2)
        assert bare.empty()


async def _until_subscribed(s: Signals, channel: str, count: int = 1) -> None:
    for _ in range(200):
        ((_, n),) = await s.client.pubsub_numsub(channel)
        if n == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{channel} never had {count} subscribers")
