"""Jobs handed by their submit straight to an idle long poll (services/jobs/handoff.py), on real
PostgreSQL, Redis and billing: leased in the submit's transaction, never in Redis, and given back
when the poll went away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import DomainError
from services.jobs import submission
from tests.jobs.jobs_world import JobsWorld


def _before_write(monkeypatch: Any, step: Callable[[], Awaitable[None]]) -> None:
    """`step` runs as a submit begins writing its rows: after its claim, before its commit."""
    write = submission.Submission._write

    async def wrapped(*args: Any) -> None:
        await step()
        await write(*args)

    monkeypatch.setattr(submission.Submission, "_write", staticmethod(wrapped))


async def _in_redis(world: JobsWorld, queue: str, job_id: str) -> bool:
    return bool(await world.redis.hexists(f"{world.app.deps.queue.base(queue)}:job", job_id))


async def test_a_submit_hands_its_job_to_an_idle_long_poll(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=20)
    marker = world.app.cases.leases._marker
    poll = await world.idle_poll([jt.name])
    before = marker.batches
    job = await world.submit(c, jt)
    (lease,) = await asyncio.wait_for(poll, 5)
    assert lease.job_id == str(job.id) and lease.attempt == 1 and lease.runner_id == "r1"
    assert lease.trace_context == dict(job.trace_context) and lease.timeout_seconds == 300
    assert job.status == types_pb.JOB_STATUS_RUNNING and str(job.lease_id) == lease.lease_id  # answered as stored
    assert marker.batches == before  # no lease transaction: the submit's own leased it
    assert not await _in_redis(world, job.queue_name, str(job.id))  # never queued
    stored = await world.get(lease.job_id)
    assert stored.status == types_pb.JOB_STATUS_RUNNING and stored.lease.lease_id == lease.lease_id
    assert [(h.status, h.attempt) for h in stored.status_history] == [
        (types_pb.JOB_STATUS_PENDING, 0), (types_pb.JOB_STATUS_RUNNING, 1)]
    assert [a.outcome for a in stored.attempts] == [pb.ATTEMPT_OUTCOME_RUNNING]
    done = await world.complete(lease, result=None)
    assert not done.HasField("error") and done.status == types_pb.JOB_STATUS_SUCCEEDED
    assert await world.available(c) == 980  # held at submit, captured at the end, as for any job


async def test_a_poll_takes_no_more_than_it_asked_for_and_the_rest_is_queued(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    poll = await world.idle_poll([jt.name], max_jobs=2)
    jobs = await world.app.cases.submission.batch_submit(c.principal, pb.BatchSubmitJobsRequest(
        project_id=c.project_id, requests=[pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(5)]))
    handed = await asyncio.wait_for(poll, 5)
    assert [x.job_id for x in handed] == [str(j.id) for j in jobs[:2]]  # the first ones, in order
    assert [j.status for j in jobs] == [types_pb.JOB_STATUS_RUNNING] * 2 + [types_pb.JOB_STATUS_PENDING] * 3
    rest = await world.lease([jt.name], max_jobs=10)
    assert sorted(x.job_id for x in rest) == sorted(str(j.id) for j in jobs[2:])


async def test_a_refused_submit_hands_nothing_and_the_poll_waits_on(world: JobsWorld) -> None:
    c, poor = await world.customer(), await world.customer(funds=5)
    jt = await world.job_type(c, price=20)
    poll = await world.idle_poll([jt.name])
    try:
        await world.submit(poor, jt)
        raise AssertionError("an unfunded submit was accepted")
    except DomainError as err:
        assert err.reason == "INSUFFICIENT_FUNDS"
    await asyncio.sleep(0.2)
    assert not poll.done()  # still waiting, and still idle: the next submit may hand it a job
    job = await world.submit(c, jt)
    (lease,) = await asyncio.wait_for(poll, 5)
    assert lease.job_id == str(job.id)


async def test_a_job_whose_poll_went_away_before_the_commit_goes_back_to_its_queue(
        world: JobsWorld, monkeypatch: Any) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    poll = await world.idle_poll([jt.name])

    async def going_away() -> None:  # the poll's caller goes away mid-submit
        poll.cancel()
        await asyncio.sleep(0)

    _before_write(monkeypatch, going_away)
    job = await world.submit(c, jt)
    monkeypatch.undo()
    assert job.status == types_pb.JOB_STATUS_RUNNING  # stored leased to the poll …
    again: list[pb.JobLease] = []
    for _ in range(50):  # … which was gone: given back in the background, Pending at the front
        again = await world.lease([jt.name], runner="r2")
        if again:
            break
        await asyncio.sleep(0.1)
    assert [x.job_id for x in again] == [str(job.id)] and again[0].attempt == 1  # the unstarted attempt is forgotten
    history = (await world.get(str(job.id))).status_history
    assert [h.status for h in history] == [types_pb.JOB_STATUS_PENDING, types_pb.JOB_STATUS_RUNNING,
                                           types_pb.JOB_STATUS_PENDING, types_pb.JOB_STATUS_RUNNING]


async def test_a_failed_commit_leaves_the_jobs_pending_and_the_poll_looking_again(
        world: JobsWorld, monkeypatch: Any) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    poll = await world.idle_poll([jt.name])
    failures = iter([True])

    async def failing_once() -> None:
        if next(failures, False):
            raise ConnectionError("the database went away")

    _before_write(monkeypatch, failing_once)
    try:
        await world.submit(c, jt)
        raise AssertionError("the submit did not fail")
    except ConnectionError:
        pass
    await asyncio.sleep(0.2)
    assert not poll.done()  # it looked again, found nothing, and waits
    job = await world.submit(c, jt)
    (lease,) = await asyncio.wait_for(poll, 5)
    assert lease.job_id == str(job.id) and job.status == types_pb.JOB_STATUS_RUNNING
