"""Background passes with the test's clock: promotion of scheduled jobs, recovery of a lost Redis
and of dead submits' holds, and retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select, text

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from services.billing.repository import BillingRepository
from services.jobs.billing import HoldRequest
from services.jobs.models import Job
from services.jobs.runtime import PENDING, SCHEDULED
from tests.jobs.jobs_world import JobsWorld


async def _forget_redis(world: JobsWorld) -> None:
    """Lose every key of this world's queues (what a FLUSHALL does to them)."""
    keys = [k async for k in world.redis.scan_iter(f"{world.app.deps.queue.prefix}*", count=1000)]
    if keys:
        await world.redis.delete(*keys)


async def test_scheduled_job_waits_for_its_time_and_promotion_wakes_a_long_poll(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    at = Timestamp()
    at.FromSeconds(int(world.clock() + 60))
    job = await world.submit(c, jt, schedule_time=at)
    assert job.status == types_pb.JOB_STATUS_SCHEDULED
    assert (await world.get(str(job.id))).pending_info.reason == pb.PENDING_REASON_SCHEDULED
    promoted, next_due = await world.app.loops.promote_once()
    assert promoted == 0 and next_due is not None and abs(next_due - at.seconds) < 1
    poll = asyncio.create_task(world.lease([jt.name], wait_ms=10_000))
    await asyncio.sleep(0.2)
    world.clock.advance(61)
    assert (await world.app.loops.promote_once())[0] == 1
    (lease,) = await asyncio.wait_for(poll, 5)
    assert lease.job_id == str(job.id)


async def test_recovery_rebuilds_lost_queues_in_order_without_duplicates(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    made = []
    for _ in range(3):
        world.clock.advance(0.01)
        made.append(await world.submit(c, jt))
    (leased,) = await world.lease([jt.name], max_jobs=1)
    await _forget_redis(world)
    assert await world.lease([jt.name], max_jobs=5) == []
    world.clock.advance(5)  # past the grace for jobs on their way to Redis
    queued, _ = await world.app.loops.recover_once()
    assert queued == 2
    assert (await world.app.loops.recover_once())[0] == 0  # idempotent
    again = await world.lease([jt.name], max_jobs=5)
    assert [x.job_id for x in again] == [str(j.id) for j in made[1:]]  # FIFO kept
    assert leased.job_id == str(made[0].id)
    assert not (await world.complete(leased)).HasField("error")  # the lease lost with Redis still completes


async def test_recovery_releases_the_hold_of_a_submit_that_died(world: JobsWorld) -> None:
    """A hold without a job (the submit died between billing's reserve and the job's commit) is
    released once past its grace; the hold of a stored job is not."""
    world.clock.t = time.time()  # billing stamps holds with the real time: this module's clock starts there
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    stored = await world.submit(c, jt)
    hold = str(uuid.uuid4())  # the dead submit's
    (err,) = await world.app.deps.billing.reserve([HoldRequest(hold, c.principal.customer_id, 25, "USD", hold)])
    assert err is None and await world.available(c) == 65
    await world.app.loops.recover_once()
    assert await world.available(c) == 65  # still within its grace
    world.past_orphan_hold_grace()
    assert (await world.app.loops.recover_once())[1] >= 1
    assert await world.available(c) == 90  # the stored job keeps its hold
    assert (await world.get(str(stored.id))).status == types_pb.JOB_STATUS_PENDING
    world.clock.advance(world.config.recovery_interval_seconds)
    await world.app.loops.recover_once()
    assert await world.available(c) == 90


async def test_retention_purges_payloads_but_never_archive(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    standard = await world.submit(c, jt, payload=_struct(secret=1))
    archive = await world.submit(c, jt, payload=_struct(secret=2),
                                 persistence_policy=types_pb.PERSISTENCE_POLICY_ARCHIVE)
    for lease in await world.lease([jt.name], max_jobs=2):
        await world.complete(lease, result=_struct(out=True))
    loops = world.app.loops
    assert await loops.retain_once() == (0, 0)
    world.clock.advance(timedelta(days=world.config.retention_days + 1).total_seconds())
    purged, _ = await loops.retain_once()
    assert purged >= 1
    kept = await world.get(str(archive.id))
    gone = await world.get(str(standard.id))
    assert kept.payload["secret"] == 2 and kept.result["out"] is True
    assert not gone.HasField("payload") or not gone.payload.fields
    assert gone.status == types_pb.JOB_STATUS_SUCCEEDED


def _struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def test_a_pop_that_never_committed_is_queued_again_only_after_its_grace(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    job = await world.submit(c, jt)
    queue = world.app.deps.queue
    assert await queue.lease([job.queue_name], 1, world.clock()) == [str(job.id)]  # popped; the lease "died"
    world.clock.advance(5)
    await world.app.loops.recover_once()
    assert await world.lease([jt.name]) == []  # a lease this young may still commit
    world.clock.advance(30)
    await world.app.loops.recover_once()
    (lease,) = await world.lease([jt.name])
    assert lease.job_id == str(job.id) and lease.attempt == 1


async def test_a_pop_too_young_at_a_full_pass_is_read_again_by_the_partial_passes(world: JobsWorld) -> None:
    """A process killed between a lease's pop and its commit: the full pass at restart finds the
    pop too young to call lost, and the partial passes after it read only recent changes, yet they
    read that job again until its lease is lost, rather than leaving it to the next full pass."""
    c = await world.customer()
    jt = await world.job_type(c)
    job = await world.submit(c, jt)
    world.clock.advance(5)
    queue = world.app.deps.queue
    assert await queue.lease([job.queue_name], 1, world.clock()) == [str(job.id)]  # popped; the lease "died"
    await world.app.loops.recover_once()  # the restart's full pass
    world.clock.advance(10)
    await world.app.loops.recover_once(full=False)
    assert await world.lease([jt.name]) == []  # still young
    world.clock.advance(25)
    await world.app.loops.recover_once(full=False)
    (lease,) = await world.lease([jt.name])
    assert lease.job_id == str(job.id) and lease.attempt == 1


async def test_recovery_between_full_passes_reads_only_jobs_that_started_waiting_since(world: JobsWorld) -> None:
    """The loop's passes between full ones cost what changed, not the backlog: a job waiting since
    before the previous pass is not read again (it was repaired then), one committed since is; a
    Redis that lost its data lost the pass's mark too, and the next pass is a full one."""
    c = await world.customer()
    jt = await world.job_type(c)
    old = await world.submit(c, jt)
    world.clock.advance(5)
    await world.app.loops.recover_once()  # full: sets the mark
    new = await world.submit(c, jt)
    queue = world.app.deps.queue
    assert sorted(await queue.remove(old.queue_name, [str(old.id), str(new.id)])) == sorted([str(old.id), str(new.id)])
    world.clock.advance(5)
    assert (await world.app.loops.recover_once(full=False))[0] == 1  # only the new one was read
    assert [x.job_id for x in await world.lease([jt.name], max_jobs=5)] == [str(new.id)]
    await _forget_redis(world)
    world.clock.advance(5)
    assert (await world.app.loops.recover_once(full=False))[0] >= 1  # no mark: a full pass
    assert str(old.id) in [x.job_id for x in await world.lease([jt.name], max_jobs=50)]


async def test_a_pass_sends_the_enqueue_script_only_the_jobs_redis_lost(world: JobsWorld,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass reads every job that started waiting, but a job Redis still holds is not sent to the
    enqueue script again (it would leave it alone): only the lost one goes, and every job is
    leased once afterwards."""
    c = await world.customer()
    jt = await world.job_type(c)
    jobs = [await world.submit(c, jt) for _ in range(5)]
    queue = world.app.deps.queue
    assert await queue.remove(jobs[0].queue_name, [str(jobs[0].id)]) == [str(jobs[0].id)]  # Redis lost it
    sent: list[str] = []
    original = queue.scripts.enqueue

    async def counting(keys: list[str], args: list[Any]) -> Any:
        sent.extend(str(a) for a in args[1::4])
        return await original(keys=keys, args=args)

    monkeypatch.setattr(queue.scripts, "enqueue", counting, raising=False)  # the script still runs
    loops = world.app.loops
    reads: list[tuple[int, int]] = []  # per read: (columns, rows)
    waiting = loops._waiting

    async def reading(stmt: Any) -> list[Any]:
        rows = await waiting(stmt)
        reads.append((len(rows[0]), len(rows)) if rows else (0, 0))
        return rows

    monkeypatch.setattr(loops, "_waiting", reading)
    world.clock.advance(5)
    queued, _ = await loops.recover_once()
    monkeypatch.undo()
    assert (queued, sent) == (1, [str(jobs[0].id)])
    # every waiting job read light (id, status, queue), only the lost one's whole row
    assert reads[0] == (3, len(await _waiting_ids(world))) and (8, 1) in reads[1:]
    leased = await world.lease([jt.name], max_jobs=10)
    assert sorted(x.job_id for x in leased) == sorted(str(j.id) for j in jobs)


async def _waiting_ids(world: JobsWorld) -> list[Any]:
    async with world.app.deps.db.session() as s:
        return list((await s.execute(select(Job.id).where(Job.status.in_([PENDING, SCHEDULED])))).scalars())


async def _hold(world: JobsWorld, hold_id: str) -> Any:
    async with world.billing.db.session() as s:
        return await BillingRepository(s).hold(hold_id)


async def test_a_hold_lives_as_long_as_its_job_waits(world: JobsWorld) -> None:
    """A job that waits longer than its hold was made for (no runner for six days) keeps its hold:
    the renewal pass moves the hold's deadline, the billing sweeper does not expire it at the old
    one, and the job is charged when it finally runs. Before, the hold lapsed after 7 days and the
    capture failed, while the job showed a cost the ledger never posted."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    job = await world.submit(c, jt)
    first = await _hold(world, job.hold_id)
    await world.app.loops.renew_holds_once()
    assert (await _hold(world, job.hold_id)).expire_time == first.expire_time  # not about to lapse yet
    world.clock.advance(timedelta(days=6).total_seconds())
    assert await world.app.loops.renew_holds_once() >= 1
    renewed = await _hold(world, job.hold_id)
    assert renewed.expire_time > first.expire_time + timedelta(days=5)
    assert await world.billing.expire_due(first.expire_time + timedelta(days=1)) == 0  # past the old deadline
    (lease,) = await world.lease([jt.name])
    assert not (await world.complete(lease)).HasField("error")
    assert (await _hold(world, job.hold_id)).status == 2  # CAPTURED
    assert await world.available(c) == 90


async def test_a_capture_billing_refuses_stays_in_the_outbox_and_the_job_says_so(world: JobsWorld) -> None:
    """A capture billing refuses (here: the hold lapsed while the renewal loop was away) is never
    dropped: it stays in the outbox with billing's reason, is tried again later (backing off), and
    the job shows `billing_pending` meanwhile."""
    from services.jobs.leases import settle_outbox_once

    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    hold = await _hold(world, job.hold_id)
    assert await world.billing.expire_due(hold.expire_time + timedelta(seconds=1)) >= 1  # lapsed under it
    assert not (await world.complete(lease)).HasField("error")  # the job's end does not wait on billing
    shown = await world.get(str(job.id))
    assert shown.status == types_pb.JOB_STATUS_SUCCEEDED and shown.billing_pending and shown.cost_cents == 10
    async with world.app.deps.db.session() as s:
        attempts, reason = (await s.execute(text(
            "SELECT attempts, last_error FROM jobs.billing_outbox WHERE hold_id = :h"), {"h": job.hold_id})).one()
    assert attempts == 1 and reason
    assert await settle_outbox_once(world.app.deps, grace_seconds=0) == 0  # backing off: not yet
    world.clock.advance(120)
    assert await settle_outbox_once(world.app.deps, grace_seconds=0) >= 1  # tried again
    async with world.app.deps.db.session() as s:
        attempts = (await s.execute(text("SELECT attempts FROM jobs.billing_outbox WHERE hold_id = :h"),
                                    {"h": job.hold_id})).scalar_one()
    assert attempts == 2 and (await world.get(str(job.id))).billing_pending
    assert job.id in await world.app.loops.report_unsettled()  # reported: gauge jobs.billing.unsettled, an error
    assert world.app.loops.unsettled[0] >= 1
