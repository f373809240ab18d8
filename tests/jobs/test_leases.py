"""The internal lease API: lease, complete (with fencing), extend, release, get, long poll,
retry timing, non-retryable errors, dead letters and the reaper — on real PostgreSQL, Redis and billing."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import pytest
from google.protobuf import struct_pb2

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import FailedPrecondition
from tests.jobs.jobs_world import JobsWorld

SUCCEEDED, FAILED = pb.ATTEMPT_OUTCOME_SUCCEEDED, pb.ATTEMPT_OUTCOME_FAILED


def result(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def error(message: str = "boom", type_: str = "IOError", non_retryable: bool = False) -> pb.JobError:
    return pb.JobError(message=message, type=type_, non_retryable=non_retryable)


async def test_lease_complete_captures_the_catalog_price_whatever_the_runner_reports(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=20)
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    assert lease.job_id == str(job.id) and lease.attempt == 1 and lease.timeout_seconds == 300
    assert lease.trace_context == dict(job.trace_context)
    running = await world.get(lease.job_id)
    assert running.status == types_pb.JOB_STATUS_RUNNING and running.lease.lease_id == lease.lease_id
    res = await world.complete(lease, result=result(ok=True), actual_cost_cents=500)
    assert not res.HasField("error") and res.status == types_pb.JOB_STATUS_SUCCEEDED
    done = await world.get(lease.job_id)
    assert done.result["ok"] is True and done.attempts[0].actual_cost_cents == 500 and done.cost_cents == 20
    assert [a.outcome for a in done.attempts] == [SUCCEEDED]
    assert await world.available(c) == 980  # the flat price: a runner's figure is informational


async def test_second_result_and_foreign_lease_are_rejected(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    twice = await world.app.cases.leases.complete([
        pb.JobCompletion(job_id=lease.job_id, lease_id=lease.lease_id, runner_id="r1",
                         result=pb.AttemptResult(outcome=SUCCEEDED)),
        pb.JobCompletion(job_id=lease.job_id, lease_id=lease.lease_id, runner_id="r1",
                         result=pb.AttemptResult(outcome=FAILED, error=error()))])
    assert not twice[0].HasField("error")
    assert twice[1].error.code == 9  # FAILED_PRECONDITION
    later = await world.complete(lease, outcome=FAILED, error=error())
    assert "already completed" in later.error.message
    assert (await world.get(lease.job_id)).status == types_pb.JOB_STATUS_SUCCEEDED


async def test_retry_follows_the_policy_then_dead_letters(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10, default_retry_policy={
        "max_attempts": 3, "initial_interval_seconds": 10, "backoff_multiplier": 3.0, "max_interval_seconds": 20})
    job = await world.submit(c, jt)
    loops = world.app.loops
    expected = [10.0, 20.0]  # min(10 * 3^0, 20), min(10 * 3^1, 20)
    for attempt, base in enumerate(expected, start=1):
        (lease,) = await world.lease([jt.name])
        assert lease.attempt == attempt
        res = await world.complete(lease, outcome=FAILED, error=error())
        assert res.status == types_pb.JOB_STATUS_SCHEDULED
        delay = res.next_attempt_time.ToDatetime(tzinfo=UTC).timestamp() - world.clock()
        assert base * 0.9 - 0.01 <= delay <= base + 0.01
        waiting = await world.get(lease.job_id)
        assert waiting.pending_info.reason == pb.PENDING_REASON_BACKOFF
        assert await world.lease([jt.name]) == []  # not before its time
        world.clock.advance(delay - 0.5)
        await loops.promote_once()
        assert await world.lease([jt.name]) == []
        world.clock.advance(1.0)
        await loops.promote_once()
    (last,) = await world.lease([jt.name])
    res = await world.complete(last, outcome=FAILED, error=error("still broken"))
    assert res.status == types_pb.JOB_STATUS_FAILED
    dead = await world.get(str(job.id))
    assert dead.dead_lettered and dead.error == "still broken" and dead.attempt_count == 3
    assert [a.outcome for a in dead.attempts] == [FAILED] * 3
    assert await world.available(c) == 1000  # hold released
    letters, _ = await world.app.cases.queries.dead_letters(c.principal, pb.ListDeadLetterJobsRequest(
        project_id=c.project_id))
    assert [j.id for j in letters] == [str(job.id)]


async def test_non_retryable_errors_fail_at_once(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c, default_retry_policy={"max_attempts": 5, "non_retryable_error_types": ["ValueError"]})
    for err in (error(type_="ValueError"), error(type_="IOError", non_retryable=True)):
        await world.submit(c, jt)
        (lease,) = await world.lease([jt.name])
        res = await world.complete(lease, outcome=FAILED, error=err)
        assert res.status == types_pb.JOB_STATUS_FAILED
        assert (await world.get(lease.job_id)).attempt_count == 1


async def test_fencing_a_result_from_an_expired_lease_changes_nothing(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10, default_retry_policy={"max_attempts": 3,
                                                                         "initial_interval_seconds": 0})
    await world.submit(c, jt)
    (old,) = await world.lease([jt.name], runner="slow")
    world.clock.advance(world.config.lease_ttl_seconds + 1)
    assert await world.app.cases.leases.reap_expired() == 1
    await world.app.loops.promote_once()
    (new,) = await world.lease([jt.name], runner="fast")
    assert new.job_id == old.job_id and new.attempt == 2
    before = await world.get(old.job_id)
    late = await world.complete(old, result=result(stale=True))
    assert "STALE_LEASE" in late.error.SerializeToString().decode(errors="ignore")
    after = await world.get(old.job_id)
    assert after.status == types_pb.JOB_STATUS_RUNNING and after.lease.lease_id == new.lease_id
    assert after.attempts == before.attempts and await world.available(c) == 990
    assert before.attempts[0].outcome == pb.ATTEMPT_OUTCOME_RUNNER_LOST
    ok = await world.complete(new, result=result(fresh=True))
    assert ok.status == types_pb.JOB_STATUS_SUCCEEDED
    with pytest.raises(FailedPrecondition) as caught:
        await world.app.cases.leases.get(pb.GetLeaseRequest(job_id=old.job_id, lease_id=old.lease_id))
    assert caught.value.reason == "STALE_LEASE"


async def test_extend_renews_within_the_timeout_and_reports_cancel(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c, timeout_seconds=45)
    await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    world.clock.advance(20)
    (res,) = await world.app.cases.leases.extend(pb.ExtendLeasesRequest(
        runner_id="r1", leases=[pb.LeaseExtension(job_id=lease.job_id, lease_id=lease.lease_id,
                                                  progress=pb.JobProgress(percent=40, message="half"))]))
    deadline = res.expire_time.ToDatetime(tzinfo=UTC).timestamp()
    assert abs(deadline - (lease.expire_time.ToDatetime(tzinfo=UTC).timestamp() + 15)) < 0.01  # capped at 45 s
    assert not res.cancel_requested
    assert (await world.get(lease.job_id)).progress.percent == 40
    await world.app.cases.control.cancel(c.principal, lease.job_id, "changed my mind")
    (res,) = await world.app.cases.leases.extend(pb.ExtendLeasesRequest(
        runner_id="r1", leases=[pb.LeaseExtension(job_id=lease.job_id, lease_id=lease.lease_id)]))
    assert res.cancel_requested
    done = await world.complete(lease, outcome=pb.ATTEMPT_OUTCOME_CANCELLED)
    assert done.status == types_pb.JOB_STATUS_CANCELLED


async def test_release_not_started_requeues_at_the_front_without_counting(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    first = await world.submit(c, jt)
    world.clock.advance(0.01)
    await world.submit(c, jt)
    (lease,) = await world.lease([jt.name], max_jobs=1)
    assert lease.job_id == str(first.id)
    (res,) = await world.app.cases.leases.release(pb.ReleaseLeasesRequest(
        runner_id="r1", reason=pb.LEASE_RELEASE_REASON_NOT_STARTED))
    assert res.status == types_pb.JOB_STATUS_PENDING
    (again,) = await world.lease([jt.name], max_jobs=1)
    assert again.job_id == str(first.id) and again.attempt == 1
    (lost,) = await world.app.cases.leases.release(pb.ReleaseLeasesRequest(
        runner_id="r1", reason=pb.LEASE_RELEASE_REASON_RUNNER_LOST,
        leases=[pb.LeaseRef(job_id=again.job_id, lease_id=again.lease_id)]))
    assert lost.status == types_pb.JOB_STATUS_SCHEDULED
    assert (await world.get(again.job_id)).attempt_count == 1


async def test_long_poll_wakes_on_submit(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    poll = asyncio.create_task(world.lease([jt.name], wait_ms=20_000))
    await asyncio.sleep(0.2)
    assert not poll.done()
    job = await world.submit(c, jt)
    leases = await asyncio.wait_for(poll, 5)
    assert [lease.job_id for lease in leases] == [str(job.id)]


async def test_tags_and_customer_scope_select_compatible_jobs(world: JobsWorld) -> None:
    """Customers' own types of one name run only on their own customer's runners (with matching
    tags); a catalog type of that name only on shared runners."""
    a, b = await world.customer(), await world.customer()
    name = f"gpu-{a.project_id[:6]}"
    jt_a = await world.job_type(a, own=True, name=name, required_tags=["gpu"])
    jt_b = await world.job_type(b, own=True, name=name)
    ja = await world.submit(a, jt_a)
    jb = await world.submit(b, jt_b)
    assert await world.lease([name], tags=["gpu"], max_jobs=5) == []  # a shared runner: no own types
    assert await world.lease([name], tags=["cpu"], customer_id=a.principal.customer_id) == []
    assert [x.job_id for x in await world.lease([name], tags=["gpu"], customer_id=b.principal.customer_id)] == \
        [str(jb.id)]
    assert [x.job_id for x in await world.lease([name], tags=["gpu"], customer_id=a.principal.customer_id)] == \
        [str(ja.id)]
    shared = await world.job_type(a, name=name)  # the catalog's, of the same name
    jc = await world.submit(a, shared)
    world.app.cases.leases._tags.clear()  # the runner's name → queues cache (a minute) predates the catalog type
    assert await world.lease([name], tags=["gpu"], customer_id=a.principal.customer_id) == []
    assert [x.job_id for x in await world.lease([name], max_jobs=5)] == [str(jc.id)]


async def test_cancel_pending_releases_the_hold_and_never_runs(world: JobsWorld) -> None:
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=40)
    job = await world.submit(c, jt)
    assert await world.available(c) == 60
    cancelled = await world.app.cases.control.cancel(c.principal, str(job.id), "")
    assert cancelled.status == types_pb.JOB_STATUS_CANCELLED
    assert await world.available(c) == 100
    assert await world.lease([jt.name], max_jobs=5) == []
    with pytest.raises(FailedPrecondition):
        await world.app.cases.control.cancel(c.principal, str(job.id), "")




async def test_a_queue_found_empty_is_not_popped_again_until_a_job_enters_it_or_a_second_passes(
        world: JobsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """At light load each job handed to a long poll is followed by the runner's next lease: that
    one does not ask Redis again while nothing entered the queue (as this replica knows it), and
    asks again once something did, or after EMPTY_SECONDS (another replica's wake-up may be lost)."""
    from services.jobs import leases as leases_module
    from services.jobs.queue import QueueItem

    c = await world.customer()
    jt = await world.job_type(c)
    queue = world.app.deps.queue
    pops: list[list[str]] = []
    lease = queue.lease

    async def counted(*args: Any, **kwargs: Any) -> list[str]:
        pops.append(list(args[0]))
        return await lease(*args, **kwargs)

    monkeypatch.setattr(queue, "lease", counted)
    assert await world.lease([jt.name]) == [] and len(pops) == 1  # found empty
    assert await world.lease([jt.name]) == [] and len(pops) == 1  # not asked again
    job = await world.submit(c, jt)  # enters the queue here: asked again, found
    assert [x.job_id for x in await world.lease([jt.name])] == [str(job.id)] and len(pops) == 2
    assert await world.lease([jt.name]) == [] and len(pops) == 3
    # A job that enters Redis without this replica hearing of it (another replica's wake-up lost):
    waiting = await world.submit(c, jt)
    assert await queue.remove(waiting.queue_name, [str(waiting.id)]) == [str(waiting.id)]
    assert await world.lease([jt.name]) == [] and len(pops) == 4  # found empty after the submit
    await queue.enqueue([QueueItem(str(waiting.id), waiting.queue_name, str(waiting.customer_id), waiting.priority,
                                   waiting.create_time.timestamp())])
    assert await world.lease([jt.name]) == [] and len(pops) == 4  # not heard of: not asked yet
    monkeypatch.setattr(leases_module, "EMPTY_SECONDS", 0.0)  # … until the empty pop is old enough
    assert [x.job_id for x in await world.lease([jt.name])] == [str(waiting.id)] and len(pops) == 5


async def test_concurrent_long_polls_share_commits_and_never_get_the_same_job(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    marker = world.app.cases.leases._marker
    before = marker.batches
    polls = [asyncio.create_task(world.lease([jt.name], max_jobs=3, wait_ms=10_000, runner=f"r{i}")) for i in range(8)]
    await asyncio.sleep(0.2)
    sub = world.app.cases.submission
    await sub.batch_submit(c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=[
        pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(30)]))
    got = [lease for batch in await asyncio.wait_for(asyncio.gather(*polls), 10) for lease in batch]
    assert len(got) == len({x.job_id for x in got}) == 24  # 8 runners x 3 slots, each job once
    assert {x.runner_id for x in got} == {f"r{i}" for i in range(8)}
    assert marker.batches - before <= 8
    for lease in got:
        assert (await world.get(lease.job_id)).runner_id == lease.runner_id


async def test_job_events_are_published_only_for_watched_jobs(world: JobsWorld) -> None:
    """A batch of leases and results publishes nothing for the jobs nobody watches (one NUMSUB
    for the batch); a watched job (its channel and the `watched` marker subscribed, as
    `Control.watch` does) still gets its events. A pattern subscription (which NUMSUB does not
    count) sees every event this world publishes."""
    c = await world.customer()
    jt = await world.job_type(c)
    jobs = [await world.submit(c, jt) for _ in range(6)]
    signals = world.app.deps.signals
    spy = world.redis.pubsub()
    await spy.psubscribe(signals.job_prefix + "*")
    try:
        async with signals.subscribe(signals.watched_channel), \
                signals.subscribe(signals.job_prefix + str(jobs[0].id)) as incoming:
            for lease in await world.lease([jt.name], max_jobs=6):
                await world.complete(lease, result=result(ok=True))
            events = [await asyncio.wait_for(incoming.get(), 5) for _ in range(2)]
        seen = []
        deadline = asyncio.get_running_loop().time() + 1.0
        while asyncio.get_running_loop().time() < deadline:  # None also stands for a skipped subscribe reply
            message = await spy.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                seen.append(message["channel"].decode())
    finally:
        await spy.aclose()
    assert [e["status"] for e in events] == [types_pb.JOB_STATUS_RUNNING, types_pb.JOB_STATUS_SUCCEEDED]
    assert seen == [signals.job_prefix + str(jobs[0].id)] * 2  # the watched job's lease and result only
