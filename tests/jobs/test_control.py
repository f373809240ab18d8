"""Cancel (pending and running), WatchCancellations, WatchJob, RetryJob, DeleteJob, queue stats,
pending reasons and deleting a type in use — on the real database, Redis and billing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.jobs.api import servicer
from tests.billing.billing_helpers import ADMIN as BILLING_ADMIN
from tests.jobs.jobs_world import ADMIN, JobsWorld

FAILED = pb.ATTEMPT_OUTCOME_FAILED


async def _next(stream: AsyncIterator[Any], seconds: float = 5.0) -> Any:
    return await asyncio.wait_for(stream.__anext__(), seconds)


async def test_cancel_running_notifies_and_ends_cancelled_when_the_lease_expires(world: JobsWorld) -> None:
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=30)
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    notices = world.app.cases.leases.cancellations()
    first = asyncio.ensure_future(_next(notices))
    await asyncio.sleep(0.2)  # subscribed
    asked = await world.app.cases.control.cancel(c.principal, str(job.id), "too slow")
    assert asked.status == types_pb.JOB_STATUS_RUNNING and asked.cancel_requested
    notice = await first
    assert (notice.job_id, notice.lease_id, notice.reason) == (lease.job_id, lease.lease_id, "too slow")
    again = world.app.cases.leases.cancellations()  # a new subscriber first gets the outstanding ones
    assert (await _next(again)).job_id == lease.job_id
    await notices.aclose()
    await again.aclose()
    world.clock.advance(world.config.lease_ttl_seconds + 1)
    assert await world.app.cases.leases.reap_expired() == 1
    done = await world.get(lease.job_id)
    assert done.status == types_pb.JOB_STATUS_CANCELLED and done.attempts[0].outcome == pb.ATTEMPT_OUTCOME_CANCELLED
    assert await world.available(c) == 100


async def test_watch_streams_a_snapshot_then_each_change_until_final(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    job = await world.submit(c, jt)
    stream = world.app.cases.control.watch(c.principal, str(job.id))
    snapshot = await _next(stream)
    assert snapshot.type == pb.JOB_EVENT_TYPE_SNAPSHOT and snapshot.job.status == types_pb.JOB_STATUS_PENDING
    (lease,) = await world.lease([jt.name])
    running = await _next(stream)
    assert running.type == pb.JOB_EVENT_TYPE_STATUS_CHANGED and running.status_change.status == \
        types_pb.JOB_STATUS_RUNNING
    await world.complete(lease)
    done = await _next(stream)
    assert done.status_change.status == types_pb.JOB_STATUS_SUCCEEDED and done.job.cost_cents == 10
    with pytest.raises(StopAsyncIteration):
        await _next(stream)
    other = await world.customer()
    with pytest.raises(NotFound):
        await _next(world.app.cases.control.watch(other.principal, str(job.id)))


async def test_retry_of_a_dead_letter_gets_a_new_hold_and_a_fresh_budget(world: JobsWorld) -> None:
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10, default_retry_policy={"max_attempts": 1})
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    await world.complete(lease, outcome=FAILED, error=pb.JobError(message="x"))
    assert await world.available(c) == 100
    control = world.app.cases.control
    retried = await control.retry(c.principal, str(job.id), "again-1", b"h")
    assert retried.status == types_pb.JOB_STATUS_PENDING and not retried.dead_lettered
    assert retried.hold_id == f"{job.id}:r1" and await world.available(c) == 90
    assert (await control.retry(c.principal, str(job.id), "again-1", b"h")).id == job.id  # idempotent
    assert await world.available(c) == 90
    with pytest.raises(FailedPrecondition):
        await control.retry(c.principal, str(job.id), "", b"")
    (again,) = await world.lease([jt.name])
    assert again.job_id == str(job.id) and again.attempt == 1
    await world.complete(again)
    assert await world.available(c) == 90
    assert (await world.get(str(job.id))).status == types_pb.JOB_STATUS_SUCCEEDED


async def test_delete_only_finished_jobs_and_types_without_unfinished_jobs(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c, own=True)
    job = await world.submit(c, jt)
    with pytest.raises(FailedPrecondition) as in_use:
        await world.app.types.delete_job_type(c.principal, str(jt.id))
    assert in_use.value.reason == "JOB_TYPE_IN_USE"
    with pytest.raises(FailedPrecondition):
        await world.app.cases.control.delete(c.principal, str(job.id))
    await world.app.cases.control.cancel(c.principal, str(job.id), "")
    await world.app.cases.control.delete(c.principal, str(job.id))
    with pytest.raises(NotFound):
        await world.get(str(job.id))
    await world.app.types.delete_job_type(c.principal, str(jt.id))


async def test_queue_stats_admin_sees_all_customer_only_its_own(world: JobsWorld) -> None:
    a, b = await world.customer(), await world.customer()
    ta, tb = await world.job_type(a), await world.job_type(b)
    for _ in range(3):
        await world.submit(a, ta, priority=types_pb.PRIORITY_LEVEL_HIGH)
    await world.submit(b, tb)
    await world.lease([ta.name], max_jobs=1)
    queries = world.app.cases.queries
    mine = await queries.stats(a.principal, pb.GetQueueStatsRequest())
    assert {q.customer_id for q in mine.queues} == {a.principal.customer_id}
    (row,) = mine.queues
    assert (row.pending_count, row.running_count, row.priority) == (2, 1, types_pb.PRIORITY_LEVEL_HIGH)
    everything = await queries.stats(ADMIN, pb.GetQueueStatsRequest())
    assert {a.principal.customer_id, b.principal.customer_id} <= {q.customer_id for q in everything.queues}
    one = await queries.stats(ADMIN, pb.GetQueueStatsRequest(customer_id=b.principal.customer_id))
    assert [q.job_type_id for q in one.queues] == [str(tb.id)]
    with pytest.raises(NotFound):
        await queries.stats(a.principal, pb.GetQueueStatsRequest(project_id=b.project_id))


async def test_pending_reason_queued_counts_jobs_ahead(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    await world.lease([jt.name])  # a runner asked for the type: it is online
    for _ in range(2):
        await world.submit(c, jt, priority=types_pb.PRIORITY_LEVEL_CRITICAL)
    low = await world.submit(c, jt, priority=types_pb.PRIORITY_LEVEL_LOW)
    info = (await world.get(str(low.id))).pending_info
    assert info.reason == pb.PENDING_REASON_QUEUED and info.jobs_ahead == 2


async def test_retry_and_cancel_refuse_malformed_text_with_400(world: JobsWorld) -> None:
    """Issue 14, items 2 and 19: a retry's request id over 200 characters (or with a NUL) and a cancel
    reason with a NUL are 400s naming the field; the job is untouched."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10, default_retry_policy={"max_attempts": 1})
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    await world.complete(lease, outcome=FAILED, error=pb.JobError(message="x"))
    api: Any = servicer(world.app.types, world.app.cases)
    token = principals.bind(c.principal)
    try:
        for request_id, reason in (("r" * 201, "INVALID_REQUEST_ID"), ("r\u0000", "INVALID_CHARACTER")):
            with pytest.raises(InvalidArgument) as caught:
                await api.RetryJob(pb.RetryJobRequest(job_id=str(job.id), request_id=request_id), None)
            assert caught.value.violations[0][0] == "request_id" and caught.value.reason == reason
        pending = await world.submit(c, jt)
        with pytest.raises(InvalidArgument) as bad_reason:
            await api.CancelJob(pb.CancelJobRequest(job_id=str(pending.id), reason="stop\u0000"), None)
        assert bad_reason.value.violations[0][0] == "reason"
    finally:
        principals.reset(token)
    assert (await world.get(str(job.id))).status == types_pb.JOB_STATUS_FAILED
    assert (await world.get(str(pending.id))).status == types_pb.JOB_STATUS_PENDING
    assert await world.available(c) == 90  # only the pending job's hold


async def test_cancel_releases_the_hold_only_after_its_commit(world: JobsWorld) -> None:
    """Issue 14, item 9: a cancel whose commit fails leaves the job pending with its hold live (the
    commit is made to fail by a trigger in the real PostgreSQL); the next cancel releases it."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=30)
    job = await world.submit(c, jt)
    assert await world.available(c) == 70
    async with world.app.deps.db.session() as s:
        await s.execute(text("""
            CREATE FUNCTION jobs.fail_marked_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'the commit of this cancel fails'; END $$;
            CREATE TRIGGER fail_marked_cancel BEFORE INSERT ON jobs.job_status_changes FOR EACH ROW
            WHEN (NEW.reason = 'cancelled: commit fails') EXECUTE FUNCTION jobs.fail_marked_cancel();"""))
    try:
        with pytest.raises(DBAPIError):
            await world.app.cases.control.cancel(c.principal, str(job.id), "commit fails")
        assert (await world.get(str(job.id))).status == types_pb.JOB_STATUS_PENDING
        assert await world.available(c) == 70  # the live job's hold was not released
    finally:
        async with world.app.deps.db.session() as s:
            await s.execute(text("DROP TRIGGER fail_marked_cancel ON jobs.job_status_changes;"
                                 "DROP FUNCTION jobs.fail_marked_cancel()"))
    done = await world.app.cases.control.cancel(c.principal, str(job.id), "")
    assert done.status == types_pb.JOB_STATUS_CANCELLED and await world.available(c) == 100


async def test_two_concurrent_retries_one_wins_and_its_hold_stays(world: JobsWorld) -> None:
    """Issue 14, item 8: of two concurrent retries of one dead-lettered job, one wins, the other is
    FAILED_PRECONDITION, and the winner's hold stays live (the job is then charged from it)."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10, default_retry_policy={"max_attempts": 1})
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    await world.complete(lease, outcome=FAILED, error=pb.JobError(message="x"))
    assert await world.available(c) == 100
    control = world.app.cases.control
    results = await asyncio.gather(control.retry(c.principal, str(job.id), "", b""),
                                   control.retry(c.principal, str(job.id), "", b""), return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], FailedPrecondition) and lost[0].reason == "JOB_NOT_FAILED"
    assert await world.available(c) == 90  # the winner's hold is live
    (again,) = await world.lease([jt.name])
    await world.complete(again)
    done = await world.get(str(job.id))
    assert done.status == types_pb.JOB_STATUS_SUCCEEDED and done.cost_cents == 10
    wallet = await world.billing.get_wallet(BILLING_ADMIN, c.principal.customer_id)
    assert (wallet.balance, wallet.held) == (90, 0)  # charged from the hold, once
