"""WatchJobs and WatchQueueStats (issue 16: live lists without polling) — on the real database,
Redis and billing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from tests.jobs.jobs_world import JobsWorld


async def _next(stream: AsyncIterator[Any], seconds: float = 30.0) -> Any:
    return await asyncio.wait_for(stream.__anext__(), seconds)


async def test_a_watched_list_hears_of_its_own_jobs_and_of_one_leaving_its_filter(world: JobsWorld) -> None:
    c, other = await world.customer(), await world.customer()
    jt, other_jt = await world.job_type(c), await world.job_type(other)
    stream = world.app.cases.live.jobs(c.principal, pb.WatchJobsRequest(
        project_id=c.project_id, status=types_pb.JOB_STATUS_PENDING))
    try:
        assert (await _next(stream)).type == pb.JOB_EVENT_TYPE_SNAPSHOT
        await world.submit(other, other_jt)  # another tenant's job: never on this list
        job = await world.submit(c, jt)
        added = await _next(stream)
        assert (added.type, added.job.id, added.job.status) == (
            pb.JOB_EVENT_TYPE_STATUS_CHANGED, str(job.id), types_pb.JOB_STATUS_PENDING)
        (lease,) = await world.lease([jt.name])
        left = await _next(stream)  # running: no longer in a list of pending jobs
        assert (left.type, left.job.id, left.job.status) == (
            pb.JOB_EVENT_TYPE_REMOVED, lease.job_id, types_pb.JOB_STATUS_RUNNING)
    finally:
        await stream.aclose()


async def test_watched_queue_statistics_follow_a_submit(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c)
    stream = world.app.cases.live.queue_stats(c.principal, pb.GetQueueStatsRequest())
    try:
        first = await _next(stream)
        assert [q for q in first.queues if q.job_type_id == str(jt.id)] == []
        await world.submit(c, jt)
        after = await _next(stream)
        (queue,) = [q for q in after.queues if q.job_type_id == str(jt.id)]
        assert queue.pending_count == 1
    finally:
        await stream.aclose()
