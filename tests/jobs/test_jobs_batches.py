"""BatchCancelJobs, BatchRetryJobs, ListJobs by request id and dead letters across tenants (issue 16)
— on the real database, Redis and billing."""

from __future__ import annotations

import pytest

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import InvalidArgument, NotFound
from services.jobs import batches
from tests.jobs.jobs_world import ADMIN, JobsWorld

FAILED = pb.ATTEMPT_OUTCOME_FAILED
PENDING, RUNNING = types_pb.JOB_STATUS_PENDING, types_pb.JOB_STATUS_RUNNING
CANCELLED, JOB_FAILED = types_pb.JOB_STATUS_CANCELLED, types_pb.JOB_STATUS_FAILED


async def test_batch_cancel_counts_first_then_cancels_in_batches_and_releases_holds(
        world: JobsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "BATCH", 2)  # five jobs take three transactions
    cases = world.app.cases
    c, other = await world.customer(funds=1000), await world.customer(funds=1000)
    jt, other_jt = await world.job_type(c, price=10), await world.job_type(other, price=10)
    jobs = [await world.submit(c, jt) for _ in range(5)]
    (running,) = await world.lease([jt.name], max_jobs=1)
    theirs = await world.submit(other, other_jt)
    assert await world.available(c) == 950

    with pytest.raises(InvalidArgument) as empty:
        await cases.batches.cancel(c.principal, pb.BatchCancelJobsRequest(project_id=c.project_id))
    assert (empty.value.reason, empty.value.violations[0][0]) == ("EMPTY_FILTER", "filter")
    by_type = pb.JobFilter(job_type_id=str(jt.id))
    dry = await cases.batches.cancel(c.principal, pb.BatchCancelJobsRequest(
        project_id=c.project_id, filter=by_type, validate_only=True))
    assert (dry.matched_count, dry.changed_count, dry.validate_only) == (5, 0, True)
    waiting = next(str(j.id) for j in jobs if str(j.id) != running.job_id)
    assert await world.available(c) == 950 and (await world.get(waiting)).status == PENDING

    request = pb.BatchCancelJobsRequest(project_id=c.project_id, filter=by_type, reason="spring clean",
                                        request_id="bc-1")
    done = await cases.batches.cancel(c.principal, request)
    assert (done.matched_count, done.changed_count, done.skipped_count) == (5, 5, 0)
    assert done.customer_id == c.principal.customer_id
    statuses = {str(j.id): (await world.get(str(j.id))) for j in jobs}
    assert statuses[running.job_id].status == RUNNING and statuses[running.job_id].cancel_requested
    cancelled = [j for i, j in statuses.items() if i != running.job_id]
    assert {j.status for j in cancelled} == {CANCELLED}
    assert all("spring clean" in j.status_history[-1].reason for j in cancelled)
    assert await world.available(c) == 990  # only the running job still holds its cost
    assert await world.lease([jt.name]) == []  # none left in the queue
    assert (await world.get(str(theirs.id))).status == PENDING and await world.available(other) == 990

    again = await cases.batches.cancel(c.principal, request)  # the first answer, not a recount
    assert (again.matched_count, again.changed_count) == (5, 5)
    with pytest.raises(InvalidArgument) as reused:
        await cases.batches.cancel(c.principal, pb.BatchCancelJobsRequest(
            project_id=c.project_id, filter=pb.JobFilter(status=PENDING), request_id="bc-1"))
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(NotFound):  # another tenant's project
        await cases.batches.cancel(other.principal, pb.BatchCancelJobsRequest(
            project_id=c.project_id, filter=pb.JobFilter(status=PENDING)))


async def test_batch_retry_takes_new_holds_and_skips_jobs_the_wallet_cannot_hold(world: JobsWorld) -> None:
    cases = world.app.cases
    c = await world.customer(funds=25)
    jt = await world.job_type(c, price=10, default_retry_policy={"max_attempts": 1})
    failed = [await world.submit(c, jt) for _ in range(2)]
    for lease in await world.lease([jt.name]):
        await world.complete(lease, outcome=FAILED, error=pb.JobError(message="boom"))
    await world.submit(c, jt)  # waits: 15 left, enough for one retry
    assert await world.available(c) == 15
    only_failed = pb.JobFilter(status=JOB_FAILED)
    dry = await cases.batches.retry(c.principal, pb.BatchRetryJobsRequest(
        project_id=c.project_id, filter=only_failed, validate_only=True))
    assert dry.matched_count == 2 and dry.changed_count == 0

    done = await cases.batches.retry(c.principal, pb.BatchRetryJobsRequest(
        project_id=c.project_id, filter=only_failed, request_id="br-1"))
    assert (done.matched_count, done.changed_count, done.skipped_count) == (2, 1, 1)
    assert await world.available(c) == 5
    after = [await world.get(str(j.id)) for j in failed]
    (retried,) = [j for j in after if j.status == PENDING]
    (left,) = [j for j in after if j.status == JOB_FAILED]
    assert not retried.dead_lettered and retried.attempt_count == 0 and not retried.attempts
    assert "batch" in retried.status_history[-1].reason and left.dead_lettered
    leased = await world.lease([jt.name])
    assert str(retried.id) in {lease.job_id for lease in leased}


async def test_list_jobs_finds_a_job_by_its_request_id_within_the_callers_scope(world: JobsWorld) -> None:
    queries = world.app.cases.queries
    c, other = await world.customer(), await world.customer()
    jt, other_jt = await world.job_type(c), await world.job_type(other)
    mine = await world.submit(c, jt, request_id="order-42")
    await world.submit(c, jt, request_id="order-43")
    theirs = await world.submit(other, other_jt, request_id="order-42")
    found, _ = await queries.list_jobs(c.principal, pb.ListJobsRequest(project_id="-", request_id="order-42"))
    assert [j.id for j in found] == [str(mine.id)]
    everyone, _ = await queries.list_jobs(ADMIN, pb.ListJobsRequest(project_id="-", request_id="order-42"))
    assert {j.id for j in everyone} >= {str(mine.id), str(theirs.id)}
    with pytest.raises(InvalidArgument) as bad:
        await queries.list_jobs(c.principal, pb.ListJobsRequest(project_id="-", request_id="x" * 201))
    assert (bad.value.reason, bad.value.violations[0][0]) == ("INVALID_REQUEST_ID", "request_id")


async def test_admin_pages_dead_letters_across_tenants_and_a_customer_sees_its_own(world: JobsWorld) -> None:
    queries = world.app.cases.queries
    owners = [await world.customer(), await world.customer()]
    dead = set()
    for c in owners:
        jt = await world.job_type(c, default_retry_policy={"max_attempts": 1})
        job = await world.submit(c, jt)
        (lease,) = await world.lease([jt.name])
        await world.complete(lease, outcome=FAILED, error=pb.JobError(message=f"boom {c.project_id}"))
        world.clock.advance(1)  # distinct dead-letter times
        dead.add(str(job.id))
    seen: list[pb.Job] = []
    token = ""
    while True:  # one job a page: the keyset token carries the operator through every tenant
        page, token = await queries.dead_letters(ADMIN, pb.ListDeadLetterJobsRequest(
            project_id="-", page_size=1, page_token=token))
        seen += page
        if not token or dead <= {j.id for j in seen}:
            break
    mine = [j for j in seen if j.id in dead]
    assert len(mine) == 2 and mine[0].dead_letter_time.ToDatetime() >= mine[1].dead_letter_time.ToDatetime()
    assert {j.customer_id for j in mine} == {c.principal.customer_id for c in owners}
    assert all(j.error.startswith("boom") and j.job_type_name for j in mine)
    own, _ = await queries.dead_letters(owners[0].principal, pb.ListDeadLetterJobsRequest(project_id="-"))
    assert {j.customer_id for j in own} == {owners[0].principal.customer_id}
