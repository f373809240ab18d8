"""Redis lost after a submit's commit (issue 14, item 3): the submit answers success, since the job is
durable in PostgreSQL and recovery puts it in Redis; an error would invite a duplicate submit.

Its own Valkey, stopped and started by the test (the session's is shared with other tests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from innosystem.embedded import EmbeddedValkey
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from tests.jobs.jobs_world import JobsWorld, make_world


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey", persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def lonely_world(database_url: str, valkey: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey.url):
        yield w


async def test_work_committed_while_redis_is_down_answers_success_and_is_recovered(
        lonely_world: JobsWorld, valkey: EmbeddedValkey) -> None:
    """Submit, retry and cancel while Redis is down: each answers success once committed."""
    world = lonely_world
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10, default_retry_policy={"max_attempts": 1})
    failed = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    await world.complete(lease, outcome=pb.ATTEMPT_OUTCOME_FAILED, error=pb.JobError(message="x"))
    doomed = await world.submit(c, jt)
    valkey.stop()
    started = time.monotonic()
    job = await world.submit(c, jt, request_id="while-redis-is-down")  # no error: the job is committed
    retried = await world.app.cases.control.retry(c.principal, str(failed.id), "", b"")
    cancelled = await world.app.cases.control.cancel(c.principal, str(doomed.id), "")
    assert time.monotonic() - started < 10
    assert (await world.get(str(job.id))).status == types_pb.JOB_STATUS_PENDING
    assert retried.status == types_pb.JOB_STATUS_PENDING and cancelled.status == types_pb.JOB_STATUS_CANCELLED
    valkey.start()  # an empty Redis: the jobs are only in PostgreSQL
    world.clock.advance(5)
    assert (await world.app.loops.recover_once())[0] == 2
    leased = await world.lease([jt.name], max_jobs=5)
    assert {x.job_id for x in leased} == {str(job.id), str(failed.id)}
    again = await world.submit(c, jt, request_id="while-redis-is-down")  # a repeat finds the same job
    assert again.id == job.id and await world.available(c) == 1000 - 20
