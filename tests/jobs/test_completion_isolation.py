"""Each completion in a CompleteJobs batch is decided on its own (hardening: one tenant's result
that cannot be stored never fails another tenant's), and billing is settled only for endings that
committed, through the billing outbox — on real PostgreSQL, Redis and billing."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from sqlalchemy import text

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs.leases import settle_outbox_once
from tests.billing.billing_helpers import ADMIN as BILLING_ADMIN
from tests.jobs.jobs_world import JobsWorld

SUCCEEDED = pb.ATTEMPT_OUTCOME_SUCCEEDED


def struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def done(lease: pb.JobLease, result: struct_pb2.Struct) -> pb.JobCompletion:
    return pb.JobCompletion(job_id=lease.job_id, lease_id=lease.lease_id, runner_id=lease.runner_id,
                            result=pb.AttemptResult(outcome=SUCCEEDED, result=result))


async def test_unstorable_results_fail_their_own_attempts_and_no_other(world: JobsWorld) -> None:
    """In one batch: A's result with a NUL, A's result over the size limit, A's result whose key
    is disabled, and B's ordinary results. B's all succeed on their first attempt; each of A's fails
    with its reason and is retried by its policy; A's holds stay held, B's are captured."""
    a, b = await world.customer(funds=1000), await world.customer(funds=1000)
    world.tenancy.keys[a.project_id] = "ck-a"
    world.keys.disabled.add("ck-a")
    ta = await world.job_type(a, price=10)
    tb = await world.job_type(b, price=10)
    for _ in range(3):
        world.keys.disabled.discard("ck-a")  # the key works at submit …
        await world.submit(a, ta)
    world.keys.disabled.add("ck-a")  # … and is disabled mid-run
    for _ in range(5):
        await world.submit(b, tb)
    leases_a = await world.lease([ta.name], max_jobs=10)
    leases_b = await world.lease([tb.name], max_jobs=10)
    assert len(leases_a) == 3 and len(leases_b) == 5
    big = "x" * (world.config.max_result_bytes + 10)
    batch = [done(leases_a[0], struct(text="a\u0000b")), done(leases_b[0], struct(ok=1)),
             done(leases_a[1], struct(text=big)), done(leases_b[1], struct(ok=2)),
             done(leases_a[2], struct(ok=3)),  # encrypted under the disabled key
             *(done(x, struct(ok=9)) for x in leases_b[2:])]
    results = await world.app.cases.leases.complete(batch)
    assert [r.HasField("error") for r in results] == [False] * len(batch)
    by_job = {r.job_id: r for r in results}
    for x in leases_b:
        assert by_job[x.job_id].status == types_pb.JOB_STATUS_SUCCEEDED
        job = await world.get(x.job_id)
        assert job.status == types_pb.JOB_STATUS_SUCCEEDED and job.attempt_count == 1 and job.cost_cents == 10
    kinds = []
    for x in leases_a:
        assert by_job[x.job_id].status == types_pb.JOB_STATUS_SCHEDULED  # retried by its policy
        job = await world.get(x.job_id)
        assert job.status == types_pb.JOB_STATUS_SCHEDULED and not job.result
        kinds.append((job.error_type, job.attempts[0].error.type))
    assert [k for k, _ in kinds] == ["RESULT_INVALID", "RESULT_TOO_LARGE", "RESULT_NOT_STORED"]
    assert [k for _, k in kinds] == ["RESULT_INVALID", "RESULT_TOO_LARGE", "RESULT_NOT_STORED"]
    assert await world.available(b) == 1000 - 5 * 10  # captured
    assert await world.available(a) == 1000 - 3 * 10  # still held while A's jobs wait to retry
    async with world.app.deps.db.session() as s:
        left = (await s.execute(text("SELECT count(*) FROM jobs.billing_outbox"))).scalar_one()
    assert left == 5  # B's captures: settled after the commit, their rows go with the next commit …
    await world.app.cases.leases.flush_settled()  # … or within a second without one
    async with world.app.deps.db.session() as s:
        left = (await s.execute(text("SELECT count(*) FROM jobs.billing_outbox"))).scalar_one()
    assert left == 0


async def test_billing_down_at_completion_is_settled_later_from_the_outbox(world: JobsWorld) -> None:
    """Billing unreachable when a job ends: the job's end commits, its capture waits in the outbox
    (nothing charged yet), and the outbox sweeper charges it exactly once when billing is back."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=7)
    job = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    billing = world.app.deps.billing
    real_capture = billing.capture

    async def unreachable(*_: Any) -> Any:
        raise ConnectionError("billing is down")

    billing.capture = unreachable  # type: ignore[method-assign]
    try:
        res = await world.complete(lease, result=struct(ok=True))
    finally:
        billing.capture = real_capture  # type: ignore[method-assign]
    assert res.status == types_pb.JOB_STATUS_SUCCEEDED
    assert (await world.get(str(job.id))).cost_cents == 7
    assert await world.available(c) == 1000 - 7  # held, not yet captured
    wallet = await world.billing.get_wallet(BILLING_ADMIN, c.principal.customer_id)
    assert wallet.held == 7
    assert await settle_outbox_once(world.app.deps, grace_seconds=0) == 1
    assert await settle_outbox_once(world.app.deps, grace_seconds=0) == 0  # once
    wallet = await world.billing.get_wallet(BILLING_ADMIN, c.principal.customer_id)
    assert wallet.held == 0 and wallet.balance == 1000 - 7


async def test_a_result_json_cannot_hold_fails_its_own_attempt_and_no_other(world: JobsWorld) -> None:
    """A's result holds a NaN and A's other result an infinity in its details: protobuf carries
    both, JSON cannot. That result's attempt fails (RESULT_INVALID, retried by its policy), the
    details are left out of the other's record, and B's result in the same batch succeeds."""
    a, b = await world.customer(funds=1000), await world.customer(funds=1000)
    ta, tb = await world.job_type(a, price=10), await world.job_type(b, price=10)
    for _ in range(2):
        await world.submit(a, ta)
    await world.submit(b, tb)
    leases_a = await world.lease([ta.name], max_jobs=10)
    (lease_b,) = await world.lease([tb.name], max_jobs=10)
    odd = done(leases_a[1], struct(ok=1))
    odd.result.details.update({"ratio": float("inf")})
    results = await world.app.cases.leases.complete(
        [done(leases_a[0], struct(score=float("nan"))), done(lease_b, struct(ok=2)), odd])
    assert [r.HasField("error") for r in results] == [False, False, False]
    assert [r.status for r in results] == [types_pb.JOB_STATUS_SCHEDULED, types_pb.JOB_STATUS_SUCCEEDED,
                                           types_pb.JOB_STATUS_SUCCEEDED]
    failed = await world.get(leases_a[0].job_id)
    assert failed.error_type == "RESULT_INVALID" and "NaN" in failed.error and not failed.result
    kept = await world.get(leases_a[1].job_id)
    assert kept.status == types_pb.JOB_STATUS_SUCCEEDED and not kept.attempts[0].HasField("details")
    assert (await world.get(lease_b.job_id)).status == types_pb.JOB_STATUS_SUCCEEDED
