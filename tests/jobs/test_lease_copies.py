"""An attempt's end decided from the lease's copy of its job (services/jobs/leasecopy.py), on real
PostgreSQL, Redis and billing: one statement with no locked read when the job is as its lease left
it, and the jobs read under lock whenever anything wrote one since."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs import runsql
from services.jobs.leasecopy import LeaseCopies
from tests.jobs.jobs_world import JobsWorld

SUCCEEDED, FAILED = pb.ATTEMPT_OUTCOME_SUCCEEDED, pb.ATTEMPT_OUTCOME_FAILED
RETRY = {"max_attempts": 3, "initial_interval_seconds": 10}


@pytest.fixture
def locked_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many jobs each locked read of an ending (`runsql.lock_runs`) took."""
    calls: list[int] = []
    real = runsql.lock_runs

    async def counted(s: Any, job_ids: Any, settled_holds: Any = ()) -> Any:
        calls.append(len(job_ids))
        return await real(s, job_ids, settled_holds)

    monkeypatch.setattr(runsql, "lock_runs", counted)
    yield calls


async def complete_all(world: JobsWorld, leases: list[pb.JobLease], outcome: int, **result: Any
                       ) -> list[pb.CompletionResult]:
    out = await world.app.cases.leases.complete([pb.JobCompletion(
        job_id=x.job_id, lease_id=x.lease_id, runner_id=x.runner_id,
        result=pb.AttemptResult(outcome=outcome, **result)) for x in leases])  # type: ignore[arg-type]
    await world.app.cases.leases.settle_pending()
    return out


async def test_an_end_decided_from_the_lease_copy_needs_no_locked_read(world: JobsWorld,
                                                                       locked_reads: list[int]) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=20)
    for _ in range(3):
        await world.submit(c, jt)
    leases = await world.lease([jt.name])
    assert len(leases) == 3 and await world.available(c) == 940
    done = await complete_all(world, leases, SUCCEEDED)
    assert [r.status for r in done] == [types_pb.JOB_STATUS_SUCCEEDED] * 3
    assert not any(r.HasField("error") for r in done)
    assert locked_reads == []
    for lease in leases:
        job = await world.get(lease.job_id)
        assert job.status == types_pb.JOB_STATUS_SUCCEEDED and job.cost_cents == 20
        assert [a.outcome for a in job.attempts] == [SUCCEEDED]
    assert await world.available(c) == 940  # captured once each, at the price
    again = await complete_all(world, leases[:1], SUCCEEDED)  # a repeat finds no copy: read, and refused
    assert again[0].error.code == 9 and locked_reads == [1]


async def test_a_job_cancelled_while_running_is_read_under_lock_and_its_batch_with_it(
        world: JobsWorld, locked_reads: list[int]) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10, default_retry_policy=RETRY)
    first, second = await world.submit(c, jt), await world.submit(c, jt)
    leases = await world.lease([jt.name])
    by_job = {x.job_id: x for x in leases}
    await world.app.cases.control.cancel(c.principal, str(first.id), "not needed")  # its row changes
    done = await complete_all(world, [by_job[str(first.id)], by_job[str(second.id)]], FAILED,
                              error=pb.JobError(message="boom", type="IOError"))
    # From the copy the cancel would be unknown and the first job retried: both were read under lock.
    assert locked_reads == [2]
    assert [r.status for r in done] == [types_pb.JOB_STATUS_CANCELLED, types_pb.JOB_STATUS_SCHEDULED]
    cancelled = await world.get(str(first.id))
    assert cancelled.status == types_pb.JOB_STATUS_CANCELLED
    assert [a.outcome for a in cancelled.attempts] == [pb.ATTEMPT_OUTCOME_CANCELLED]
    retried = await world.get(str(second.id))
    assert retried.status == types_pb.JOB_STATUS_SCHEDULED and len(retried.attempts) == 1
    assert await world.available(c) == 990  # the cancelled job's hold released, the retried one's kept


async def test_a_job_written_by_another_replica_since_its_lease_is_read_under_lock(
        world: JobsWorld, locked_reads: list[int]) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10, default_retry_policy=RETRY)
    await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    async with world.app.deps.db.session() as s:  # as another replica's CancelJob writes it
        await s.execute(text("UPDATE jobs.jobs SET cancel_requested = true, cancel_reason = 'elsewhere' "
                                    "WHERE id = CAST(:id AS uuid)"), {"id": lease.job_id})
        await s.commit()
    (res,) = await complete_all(world, [lease], FAILED, error=pb.JobError(message="boom"))
    assert locked_reads == [1] and res.status == types_pb.JOB_STATUS_CANCELLED
    job = await world.get(lease.job_id)
    assert job.status == types_pb.JOB_STATUS_CANCELLED and job.status_history[-1].reason == "cancelled: elsewhere"


async def test_an_extended_lease_is_read_under_lock(world: JobsWorld, locked_reads: list[int]) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    (ext,) = await world.app.cases.leases.extend(pb.ExtendLeasesRequest(
        runner_id=lease.runner_id, leases=[pb.LeaseExtension(job_id=lease.job_id, lease_id=lease.lease_id)]))
    assert not ext.HasField("error")
    locked_reads.clear()  # the extension's own read
    res = await world.complete(lease)
    assert locked_reads == [1] and res.status == types_pb.JOB_STATUS_SUCCEEDED


async def test_a_job_handed_to_a_long_poll_by_its_submit_ends_from_what_the_submit_stored(
        world: JobsWorld, locked_reads: list[int]) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=20, default_retry_policy=RETRY)
    poll = await world.idle_poll([jt.name])
    job = await world.submit(c, jt)
    (lease,) = await asyncio.wait_for(poll, 5)
    assert lease.job_id == str(job.id)
    res = await world.complete(lease, outcome=FAILED, error=pb.JobError(message="boom", type="IOError"))
    assert locked_reads == [] and res.status == types_pb.JOB_STATUS_SCHEDULED  # the submit's copy decided it
    retried = await world.get(lease.job_id)
    assert retried.status == types_pb.JOB_STATUS_SCHEDULED and retried.attempts[0].outcome == FAILED
    assert retried.attempts[0].runner_id == "r1" and await world.available(c) == 980  # its hold kept

    poll = await world.idle_poll([jt.name])  # the same, cancelled while it runs: read under lock
    job = await world.submit(c, jt)
    (lease,) = await asyncio.wait_for(poll, 5)
    await world.app.cases.control.cancel(c.principal, str(job.id), "")
    res = await world.complete(lease, outcome=FAILED, error=pb.JobError(message="boom", type="IOError"))
    assert locked_reads == [1] and res.status == types_pb.JOB_STATUS_CANCELLED
    assert await world.available(c) == 980


NOW = datetime(2026, 12, 7, tzinfo=UTC)


class Leased:
    """A row as a lease returns it (`runsql.LEASED_COLUMNS`)."""

    def __init__(self, job_id: str, lease_id: str = "l1", runner_id: str = "r1", expires: float = 60) -> None:
        names = runsql.LEASED_COLUMNS.split(", ")
        values: dict[str, Any] = dict.fromkeys(names)
        values.update(id=job_id, lease_id=lease_id, runner_id=runner_id, xmin="7",
                      lease_expire_time=NOW + timedelta(seconds=expires))
        self.row = tuple(values[n] for n in names)
        self.id = job_id

    def __getitem__(self, index: slice) -> tuple[Any, ...]:
        return self.row[index]


def test_copies_are_taken_whole_or_not_at_all_and_used_up() -> None:
    copies = LeaseCopies()
    copies.keep([Leased("a"), Leased("b")], NOW)
    taken = copies.take([("a", "l1", "r1"), ("b", "l1", "")], NOW)
    assert taken is not None and taken["a"].xmin == "7" and taken["b"].runner_id == "r1" and len(copies) == 0
    assert copies.take([("a", "l1", "r1")], NOW) is None  # used up
    for refused in ([("a", "l1", "r1"), ("b", "other lease", "r1")], [("a", "l1", "r1"), ("b", "l1", "r2")],
                    [("a", "l1", "r1"), ("a", "l1", "r1")]):
        copies.keep([Leased(job_id) for job_id, _, _ in refused], NOW)
        assert copies.take(refused, NOW) is None and len(copies) == 0  # none taken, none left
    copies.keep([Leased("a", expires=1)], NOW)
    assert copies.take([("a", "l1", "r1")], NOW + timedelta(seconds=2)) is None  # expired: read under lock


def test_copies_of_leases_that_never_end_here_do_not_pile_up() -> None:
    copies = LeaseCopies(limit=3)
    copies.keep([Leased(f"old{i}", expires=1) for i in range(2)], NOW)
    copies.keep([Leased("new")], NOW + timedelta(seconds=5))  # the expired ones leave
    assert len(copies) == 1
    copies.keep([Leased(f"j{i}") for i in range(5)], NOW)  # beyond the limit the oldest leave
    assert len(copies) == 3 and copies.take([("j4", "l1", "r1")], NOW) is not None
    copies.drop(["j2", "j3"])
    assert len(copies) == 0
