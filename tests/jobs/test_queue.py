"""The Redis queue engine against the real embedded Valkey: order, fairness, scheduling, cancel, flush."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.errors import InvalidArgument
from innosystem.kit.redis import connect
from services.jobs.queue import CRITICAL, HIGH, LOW, MEDIUM, JobQueue, QueueItem, ScheduledItem

T0 = 1_700_000_000.0
QUEUE_DB = 7  # this module's own database: its flush test must not wipe other modules' Redis state


def queue_url(server: EmbeddedValkey) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{QUEUE_DB}"


def item(job_id: str, customer: str, priority: int = MEDIUM, at: float = T0, job_type: str = "render") -> QueueItem:
    return QueueItem(job_id, job_type, customer, priority, at)


@pytest.fixture
async def queue(valkey_server: EmbeddedValkey) -> AsyncIterator[JobQueue]:
    client = connect(queue_url(valkey_server))
    yield JobQueue(client, prefix=f"t{uuid.uuid4().hex[:8]}:")
    await client.aclose()


async def drain(q: JobQueue, types: list[str], batch: int = 1, customer: str | None = None) -> list[str]:
    out: list[str] = []
    while got := await q.lease(types, batch, T0, customer_id=customer):
        out += got
    return out


# ---- property: priority first, round robin between customers, FIFO per customer -------------------

class Loop:
    """One event loop and client for every Hypothesis example (Hypothesis drives sync functions)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = connect(url)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def sync_loop(valkey_server: EmbeddedValkey) -> Iterator[Loop]:
    env = Loop(queue_url(valkey_server))
    yield env
    env.close()


jobs_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([LOW, MEDIUM, HIGH, CRITICAL]),
              st.sampled_from(["t1", "t2"])),
    min_size=1, max_size=40,
)


def check_order(jobs: dict[str, tuple[str, int, str, int]], order: list[str]) -> None:
    """jobs: id -> (customer, priority, type, seq). Checks the three queue-order rules on `order`."""
    assert sorted(order) == sorted(jobs), "every job leased exactly once"
    prios = [jobs[j][1] for j in order]
    assert prios == sorted(prios, reverse=True), "strict priority classes"
    groups: dict[tuple[str, int], list[str]] = {}
    for j in order:
        _, p, jt, _ = jobs[j]
        groups.setdefault((jt, p), []).append(j)
    for served in groups.values():
        # FIFO per customer
        for cust in {jobs[j][0] for j in served}:
            seqs = [jobs[j][3] for j in served if jobs[j][0] == cust]
            assert seqs == sorted(seqs), "FIFO per customer"
        # round robin: between two consecutive dispatches of a customer, every other customer that
        # still had jobs waiting in this class after the first of them was served exactly once
        remaining = {c: sum(1 for j in served if jobs[j][0] == c) for c in {jobs[j][0] for j in served}}
        last: dict[str, tuple[int, set[str]]] = {}
        for pos, j in enumerate(served):
            cust = jobs[j][0]
            remaining[cust] -= 1
            if cust in last:
                prev, waiting = last[cust]
                between = [jobs[k][0] for k in served[prev + 1:pos]]
                assert sorted(between) == sorted(waiting), f"round robin broken at {pos}: {between} vs {waiting}"
            last[cust] = (pos, {c for c, n in remaining.items() if n > 0 and c != cust})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=jobs_strategy, batch=st.integers(min_value=1, max_value=7))
def test_lease_order_priority_round_robin_fifo(sync_loop: Loop, spec: list[tuple[str, int, str]], batch: int) -> None:
    q = JobQueue(sync_loop.client, prefix=f"p{uuid.uuid4().hex[:8]}:")
    jobs = {f"j{i}": (c, p, jt, i) for i, (c, p, jt) in enumerate(spec)}
    items = [QueueItem(j, jt, c, p, T0 + seq) for j, (c, p, jt, seq) in jobs.items()]
    # enqueue in two halves (two round trips) to exercise appending to existing queues and rotations
    sync_loop.run(q.enqueue(items[: len(items) // 2]))
    sync_loop.run(q.enqueue(items[len(items) // 2:]))
    # one type at a time: the full rules hold for a single-type runner
    for jt in ("t1", "t2"):
        sub = {j: v for j, v in jobs.items() if v[2] == jt}
        order = sync_loop.run(drain(q, [jt], batch))
        if sub:
            check_order(sub, order)
        else:
            assert order == []
    # both types: strict priority across types too; rotation and FIFO per (type, class)
    sync_loop.run(q.finish("t1", list(jobs)))
    sync_loop.run(q.finish("t2", list(jobs)))
    sync_loop.run(q.enqueue(items))
    order = sync_loop.run(drain(q, ["t1", "t2"], batch))
    check_order(jobs, order)


# ---- fairness -------------------------------------------------------------------------------------

async def test_flood_from_one_customer_delays_another_by_at_most_one_dispatch(queue: JobQueue) -> None:
    flood = [item(f"a{i}", "A", at=T0 + i) for i in range(10_000)]
    for start in range(0, len(flood), 2500):
        await queue.enqueue(flood[start:start + 2500])
    await queue.enqueue([item("b0", "B", at=T0 + 20_000)])
    first = await queue.lease(["render"], 1, T0) + await queue.lease(["render"], 1, T0)
    assert "b0" in first
    assert first[0] == "a0"
    assert (await queue.depth("render"))[MEDIUM] == 9_999


async def test_higher_class_always_first_even_behind_a_flood(queue: JobQueue) -> None:
    await queue.enqueue([item(f"a{i}", "A", LOW, T0 + i) for i in range(500)])
    await queue.enqueue([item("crit", "B", CRITICAL, T0 + 999)])
    assert await queue.lease(["render"], 3, T0) == ["crit", "a0", "a1"]


# ---- scheduling -----------------------------------------------------------------------------------

async def test_scheduled_job_is_not_leasable_before_due_and_promoted_at_due(queue: JobQueue) -> None:
    await queue.schedule([ScheduledItem("s1", "render", "A", HIGH, T0 + 10),
                          ScheduledItem("s2", "render", "A", HIGH, T0 + 30)])
    assert await queue.promote_due(["render"], T0 + 5) == (0, T0 + 10)
    assert await queue.lease(["render"], 10, T0 + 5) == []
    assert await queue.promote_due(["render"], T0 + 10) == (1, T0 + 30)
    assert await queue.lease(["render"], 10, T0 + 10) == ["s1"]
    assert await queue.promote_due(["render"], T0 + 31) == (1, None)
    assert await queue.promote_due(["render", "other"], T0 + 40) == (0, None)
    assert await queue.lease(["render"], 10, T0 + 31) == ["s2"]


async def test_promote_due_is_bounded_per_call(queue: JobQueue) -> None:
    await queue.schedule([ScheduledItem(f"s{i}", "render", "A", LOW, T0 + i) for i in range(5)])
    assert await queue.promote_due(["render"], T0 + 100, limit=3) == (3, T0 + 3)  # next due <= now: call again
    assert await queue.promote_due(["render"], T0 + 100, limit=3) == (2, None)
    assert await drain(queue, ["render"], 10) == [f"s{i}" for i in range(5)]


async def test_retry_schedules_a_leased_job_and_queued_jobs_are_not_rescheduled(queue: JobQueue) -> None:
    await queue.enqueue([item("j1", "A"), item("j2", "A", at=T0 + 1)])
    assert await queue.lease(["render"], 1, T0) == ["j1"]
    retry = [ScheduledItem("j1", "render", "A", MEDIUM, T0 + 60), ScheduledItem("j2", "render", "A", MEDIUM, T0 + 60)]
    assert await queue.schedule(retry) == 1  # j1 (leased) goes to backoff; j2 stays queued
    assert await queue.lease(["render"], 5, T0) == ["j2"]
    assert await queue.promote_due(["render"], T0 + 60) == (1, None)
    assert await queue.lease(["render"], 5, T0 + 60) == ["j1"]


# ---- scope, types, idempotency, cancel, stats -----------------------------------------------------

async def test_customer_scoped_lease_and_job_types(queue: JobQueue) -> None:
    await queue.enqueue([item("a1", "A", HIGH), item("b1", "B", CRITICAL), item("a2", "A", LOW, T0 + 1),
                         item("x1", "A", CRITICAL, job_type="other")])
    assert await queue.lease(["render"], 10, T0, customer_id="A") == ["a1", "a2"]
    assert await queue.lease(["nothing"], 10, T0) == []
    assert await queue.lease(["render"], 10, T0) == ["b1"]
    assert await queue.lease(["render", "other"], 10, T0, customer_id="B") == []
    assert await queue.lease(["other"], 10, T0) == ["x1"]


async def test_enqueue_is_idempotent_for_queued_and_leased_jobs(queue: JobQueue) -> None:
    assert await queue.enqueue([item("j1", "A"), item("j2", "A", at=T0 + 1)]) == 2
    assert await queue.enqueue([item("j1", "A", CRITICAL), item("j2", "A")]) == 0
    assert await queue.lease(["render"], 1, T0) == ["j1"]
    assert await queue.enqueue([item("j1", "A")]) == 0  # leased: unchanged
    assert await drain(queue, ["render"]) == ["j2"]
    assert await queue.finish("render", ["j1"]) == 1  # lease expired: forget, then re-enqueue
    assert await queue.enqueue([item("j1", "A")]) == 1
    assert await queue.lease(["render"], 5, T0) == ["j1"]


async def test_remove_queued_and_scheduled_but_not_leased(queue: JobQueue) -> None:
    await queue.enqueue([item("a1", "A"), item("a2", "A", at=T0 + 1), item("b1", "B")])
    await queue.schedule([ScheduledItem("s1", "render", "A", MEDIUM, T0 + 5)])
    assert await queue.lease(["render"], 1, T0) == ["a1"]
    assert sorted(await queue.remove("render", ["a1", "a2", "s1", "missing"])) == ["a2", "s1"]
    assert await queue.promote_due(["render"], T0 + 10) == (0, None)
    # A's queue emptied by the cancel: A leaves the rotation lazily, B is still served
    assert await drain(queue, ["render"], 5) == ["b1"]
    assert await queue.enqueue([item("a3", "A"), item("b2", "B", at=T0 + 1)]) == 2
    assert sorted(await queue.lease(["render"], 5, T0)) == ["a3", "b2"]


async def test_stats_depth_oldest_and_ahead_of(queue: JobQueue) -> None:
    await queue.enqueue([item("c1", "A", CRITICAL, T0 + 3), item("h1", "A", HIGH, T0 + 1),
                         item("h2", "B", HIGH, T0 + 2), item("l1", "A", LOW, T0 + 4), item("l2", "A", LOW, T0 + 5)])
    await queue.schedule([ScheduledItem("s1", "render", "A", LOW, T0 + 50)])
    (stats,) = await queue.stats(["render"])
    assert [(c.priority, c.depth, c.oldest_enqueued_at) for c in stats.classes] == [
        (CRITICAL, 1, T0 + 3), (HIGH, 2, T0 + 1), (MEDIUM, 0, None), (LOW, 2, T0 + 4)]
    assert (stats.scheduled, stats.next_due) == (1, T0 + 50)
    assert await queue.depth("render") == {CRITICAL: 1, HIGH: 2, MEDIUM: 0, LOW: 2}
    pos = await queue.ahead_of("render", "l2")
    assert (pos.state, pos.higher_priority, pos.ahead_in_class) == ("queued", 3, 1)
    assert (await queue.ahead_of("render", "s1")).state == "scheduled"
    assert (await queue.ahead_of("render", "nope")).state == "unknown"
    await queue.lease(["render"], 1, T0)
    assert (await queue.ahead_of("render", "c1")).state == "leased"
    assert (await queue.ahead_of("render", "l2")).higher_priority == 2


async def test_bad_input_is_rejected_before_and_inside_the_script(queue: JobQueue) -> None:
    with pytest.raises(InvalidArgument):
        await queue.enqueue([item("j", "A", priority=5)])
    with pytest.raises(InvalidArgument):
        await queue.enqueue([item("j", "A", job_type="bad{tag}")])
    with pytest.raises(InvalidArgument) as err:  # the script's error reply maps to the domain error
        await queue.scripts.enqueue(keys=queue._keys("render"), args=[queue.base("render"), "j", 7, "A", T0])
    assert err.value.reason == "INVALID_ARGUMENT"
    assert await queue.depth("render") == {CRITICAL: 0, HIGH: 0, MEDIUM: 0, LOW: 0}


async def test_flush_mid_way_then_rebuild(queue: JobQueue) -> None:
    await queue.enqueue([item(f"a{i}", "A", at=T0 + i) for i in range(5)] + [item("b0", "B")])
    await queue.schedule([ScheduledItem("s1", "render", "A", HIGH, T0 + 5)])
    assert await queue.lease(["render"], 2, T0) == ["a0", "b0"]
    assert (await queue.client.client_info())["db"] == QUEUE_DB
    await queue.client.flushdb()
    await queue.client.script_flush()
    assert await queue.lease(["render"], 5, T0) == []
    assert await queue.promote_due(["render"], T0 + 10) == (0, None)
    assert await queue.remove("render", ["a1"]) == []
    assert await queue.finish("render", ["a0"]) == 0
    assert await queue.depth("render") == {CRITICAL: 0, HIGH: 0, MEDIUM: 0, LOW: 0}
    assert (await queue.ahead_of("render", "a1")).state == "unknown"
    # the recovery loop re-enqueues what PostgreSQL says is pending or scheduled
    restored = await queue.rebuild([item(f"a{i}", "A", at=T0 + i) for i in range(2, 5)],
                                   [ScheduledItem("s1", "render", "A", HIGH, T0 + 5)])
    assert restored == 4
    assert await queue.promote_due(["render"], T0 + 10) == (1, None)
    assert await drain(queue, ["render"], 2) == ["s1", "a2", "a3", "a4"]


# ---- a one-type lease is one script call over every class -----------------------------------------

async def test_one_type_lease_takes_classes_in_strict_order_in_one_call(queue: JobQueue) -> None:
    await queue.enqueue([item("l1", "A", LOW, T0), item("m1", "B", MEDIUM, T0 + 1), item("h1", "C", HIGH, T0 + 2),
                         item("c1", "A", CRITICAL, T0 + 3), item("l2", "B", LOW, T0 + 4),
                         item("h2", "A", HIGH, T0 + 5)])
    assert await queue.lease(["render"], 10, T0) == ["c1", "h1", "h2", "m1", "l1", "l2"]
    assert await queue.depth("render") == {CRITICAL: 0, HIGH: 0, MEDIUM: 0, LOW: 0}


async def test_one_type_lease_rotates_customers_inside_a_class_across_calls(queue: JobQueue) -> None:
    await queue.enqueue([item("a1", "A", at=T0), item("a2", "A", at=T0 + 1), item("a3", "A", at=T0 + 2),
                         item("b1", "B", at=T0 + 3), item("b2", "B", at=T0 + 4), item("c1", "C", at=T0 + 5),
                         item("h1", "B", HIGH, T0 + 9)])
    assert await queue.lease(["render"], 3, T0) == ["h1", "a1", "b1"]
    assert await queue.lease(["render"], 10, T0) == ["c1", "a2", "b2", "a3"]  # the rotation goes on from C


async def test_one_type_customer_scoped_lease_walks_that_customers_classes(queue: JobQueue) -> None:
    await queue.enqueue([item("a-low", "A", LOW, T0), item("b-high", "B", HIGH, T0 + 1),
                         item("a-crit", "A", CRITICAL, T0 + 2), item("a-med", "A", MEDIUM, T0 + 3)])
    assert await queue.lease(["render"], 10, T0, customer_id="A") == ["a-crit", "a-med", "a-low"]
    assert await queue.lease(["render"], 10, T0, customer_id="A") == []
    # A's emptied queues leave the rotations lazily; B is served
    assert await queue.lease(["render"], 10, T0) == ["b-high"]


async def test_one_type_lease_max_spans_classes(queue: JobQueue) -> None:
    await queue.enqueue([item("c1", "A", CRITICAL, T0 + 10), item("c2", "B", CRITICAL, T0 + 11),
                         item("l1", "A", LOW, T0), item("l2", "B", LOW, T0 + 1), item("l3", "A", LOW, T0 + 2)])
    assert await queue.lease(["render"], 4, T0) == ["c1", "c2", "l1", "l2"]
    assert await queue.lease(["render"], 4, T0) == ["l3"]


async def test_lease_script_rejects_a_bad_class_list(queue: JobQueue) -> None:
    with pytest.raises(InvalidArgument):
        await queue.scripts.lease(keys=[f"{queue.base('render')}:job"], args=[queue.base("render"), "45", 1, "", T0])


async def command_calls(q: JobQueue) -> dict[str, int]:
    stats = await q.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_one_type_lease_is_one_redis_command_and_several_types_probe(own_valkey: EmbeddedValkey) -> None:
    client = connect(own_valkey.url)
    q = JobQueue(client, prefix="n:")
    try:
        await q.enqueue([item("c1", "A", CRITICAL), item("l1", "B", LOW), item("o1", "A", HIGH, job_type="other")])
        await q.lease(["empty"], 1, T0)  # loads the script (NOSCRIPT, SCRIPT LOAD) before counting
        for types, max_jobs, customer, want in [(["empty"], 5, None, []), (["render"], 5, None, ["c1", "l1"]),
                                                (["other"], 5, "A", ["o1"]), (["render"], 5, "B", [])]:
            before = await command_calls(q)
            assert await q.lease(types, max_jobs, T0, customer_id=customer) == want
            after = await command_calls(q)
            assert after.get("evalsha", 0) - before.get("evalsha", 0) == 1, (types, customer)
            assert after.get("zcard", 0) == before.get("zcard", 0), (types, customer)
        # several types keep the depth probe: one ZCARD per (type, class)
        await q.enqueue([item("r2", "A", LOW), item("o2", "A", LOW, job_type="other")])
        before = await command_calls(q)
        assert await q.lease(["render", "other"], 5, T0) == ["r2", "o2"]
        after = await command_calls(q)
        assert after["zcard"] - before.get("zcard", 0) == 8
        assert after["evalsha"] - before["evalsha"] == 2
    finally:
        await client.aclose()


async def test_the_scripts_write_a_batch_with_a_command_per_key_not_per_job(own_valkey: EmbeddedValkey) -> None:
    """A script's cost is its commands: enqueuing, leasing and finishing 1,500 jobs of one customer
    takes a handful of commands inside the scripts (Valkey counts those too), not a few per job,
    and repeats in one call count once."""
    client = connect(own_valkey.url)
    q = JobQueue(client, prefix="b:")
    jobs = [item(f"j{i:04d}", "A", at=T0 + i) for i in range(1500)]
    try:
        await q.enqueue([item("warm", "W", job_type="warm")])  # loads the scripts before counting
        await q.lease(["warm"], 1, T0)
        await q.finish("warm", ["warm"])
        before = await command_calls(q)
        assert await q.enqueue([*jobs[:998], jobs[0], jobs[1]]) == 998  # one script call; repeats count once
        assert await q.enqueue(jobs[998:]) == 502
        leased = await q.lease(["render"], 1200, T0)
        assert leased == [j.job_id for j in jobs[:1200]]
        assert await q.finish("render", [*leased, leased[0]]) == 1200
        after = await command_calls(q)
        counts = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        # an enqueue: one HMGET, then a ZADD for the customer's queue, one for the class and an HSET
        # of the records, each a thousand values at a time (998 jobs: 1,996 values, two each); the
        # lease: one ZPOPMIN, a ZREM and an HSET a thousand values at a time; the finish: an HMGET
        # and an HDEL a thousand ids at a time
        assert counts["hmget"] == 2 + 2, counts
        assert counts["zadd"] == 4 + 4 and counts["zpopmin"] == 1 and counts["zrem"] == 2, counts
        assert counts["hset"] == 2 + 2 + 3 and counts["hdel"] == 2, counts
        assert sum(counts.values()) < 40, counts
        assert await q.depth("render") == {CRITICAL: 0, HIGH: 0, MEDIUM: 300, LOW: 0}
        assert await q.lease(["render"], 1000, T0) == [j.job_id for j in jobs[1200:]]
        assert await q.lease(["render"], 1, T0) == []
        assert await client.scard(f"{q.base('render')}:rrset:{MEDIUM}") == 0  # the customer left its rotation
    finally:
        await client.aclose()


async def test_scheduling_promoting_and_removing_a_batch_is_a_command_per_key(own_valkey: EmbeddedValkey) -> None:
    client = connect(own_valkey.url)
    q = JobQueue(client, prefix="s:")
    later = [ScheduledItem(f"s{i:04d}", "render", "AB"[i % 2], MEDIUM, T0 + i) for i in range(900)]
    try:
        await q.schedule([ScheduledItem("warm", "warm", "W", LOW, T0)])  # the scripts loaded before counting
        await q.promote_due(["warm"], T0)
        await q.remove("warm", ["warm"])
        before = await command_calls(q)
        assert await q.schedule([*later, later[0]]) == 900  # a repeat counts once
        assert await q.promote_due(["render"], T0 + 599, limit=1000) == (600, T0 + 600)
        removed = await q.remove("render", [f"s{i:04d}" for i in range(0, 900, 3)] + ["s0000", "missing"])
        assert removed == [f"s{i:04d}" for i in range(0, 900, 3)]  # queued and scheduled alike, once each
        after = await command_calls(q)
        counts = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        # schedule: an HMGET, then a ZADD of the set and an HSET of the records a thousand values
        # at a time (900 jobs, 1,800 values: two each); promote (600 jobs): a ZREM of the set and an
        # HMGET, a ZADD per customer's queue (600 values each), the class's and the records' HSET
        # (1,200 values: two each); remove: an HMGET, a ZREM per key it removes from, an HDEL
        assert counts["hmget"] == 1 + 1 + 1 and counts["hdel"] == 1, counts
        assert counts["zadd"] == 2 + 4 and counts["hset"] == 2 + 2, counts
        assert counts["zrem"] == 1 + 4, counts  # promote's; remove's: A's and B's queues, the class, the set
        assert sum(counts.values()) < 40, counts
        assert await q.depth("render") == {CRITICAL: 0, HIGH: 0, MEDIUM: 400, LOW: 0}
        assert (await q.stats(["render"]))[0].scheduled == 200
        # A joined the rotation first (s0000 was due first); each customer's queue by due time
        assert await q.lease(["render"], 3, T0 + 599) == ["s0002", "s0001", "s0004"]
    finally:
        await client.aclose()


async def test_a_lease_rotation_that_shrinks_to_one_customer_takes_the_rest_at_once(queue: JobQueue) -> None:
    await queue.enqueue([item("a1", "A"), item("b1", "B", at=T0 + 1), item("b2", "B", at=T0 + 2),
                         item("b3", "B", at=T0 + 3), item("c1", "C", at=T0 + 4)])
    assert await queue.lease(["render"], 4, T0) == ["a1", "b1", "c1", "b2"]
    assert await queue.enqueue([item("a2", "A", at=T0 + 5)]) == 1  # A rejoins behind B
    assert await queue.lease(["render"], 5, T0) == ["b3", "a2"]
    assert await queue.lease(["render"], 5, T0) == []


# ---- after an ending: the leases' scripts and the watchers' question in one round trip ---------------

async def test_an_endings_redis_work_is_one_round_trip_and_survives_lost_scripts(
        queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """`outcomes.settle_queue` forgets the ended leases of every queue and asks which jobs are watched
    in one pipeline; a watched job's event is published; and when Redis has lost the scripts (a
    restart) the leases are still forgotten."""
    from types import SimpleNamespace

    from redis.asyncio.client import Pipeline

    from services.jobs.outcomes import Settlement, settle_queue
    from services.jobs.signals import Signals

    signals = Signals(queue.client, prefix=queue.prefix)
    deps = SimpleNamespace(queue=queue, signals=signals)
    await queue.enqueue([item("r1", "A"), item("r2", "B"), item("p1", "A", job_type="paint")])
    assert sorted(await queue.lease(["render"], 5, T0) + await queue.lease(["paint"], 5, T0)) == ["p1", "r1", "r2"]
    sent: list[list[str]] = []
    execute = Pipeline.execute

    async def counting(pipe: Any, raise_on_error: bool = True) -> list[Any]:
        sent.append([str(c[0][0]) for c in pipe.command_stack])
        return await execute(pipe, raise_on_error=raise_on_error)

    events = [("r1", {"status": "SUCCEEDED"}), ("r2", {"status": "SUCCEEDED"}), ("p1", {"status": "FAILED"})]
    async with signals.subscribe(signals.watched_channel), signals.subscribe(signals.job_prefix + "r1") as watched:
        await queue.client.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
        with monkeypatch.context() as patch:
            patch.setattr(Pipeline, "execute", counting)
            await settle_queue(deps, Settlement(finished={"render": ["r1", "r2"], "paint": ["p1"]}),  # type: ignore[arg-type]
                               events)
        assert (await asyncio.wait_for(watched.get(), 2))["status"] == "SUCCEEDED"
    assert sent[0] == ["EVALSHA", "EVALSHA", "PUBSUB NUMSUB"]  # both queues and the question: one round trip
    assert await queue.finish("render", ["r1", "r2"]) == 0  # forgotten despite the lost scripts
    assert await queue.finish("paint", ["p1"]) == 0


async def test_a_read_waits_for_an_enqueue_still_landing(queue: JobQueue) -> None:
    """A lone submit or a large batch is answered before its enqueue lands (services/jobs/submission.py):
    this replica's depth, position and lease wait for it, so a job answered is a job they find."""
    async def enqueue_when(go: asyncio.Event, job_id: str) -> None:
        await go.wait()
        await queue.enqueue([item(job_id, "c1")])

    first, second = asyncio.Event(), asyncio.Event()
    queue.landing(enqueue_when(first, "j1"))
    reads = asyncio.gather(queue.depth("render"), queue.ahead_of("render", "j1"))
    await asyncio.sleep(0.05)
    assert not reads.done()  # they wait for the enqueue under way
    first.set()
    depth, position = await reads
    assert depth[MEDIUM] == 1 and position.state == "queued"
    queue.landing(enqueue_when(second, "j2"))
    lease = asyncio.ensure_future(queue.lease(["render"], 5, T0))
    await asyncio.sleep(0.05)
    assert not lease.done()
    second.set()
    assert await lease == ["j1", "j2"]
