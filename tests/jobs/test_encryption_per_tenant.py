"""Issue 14, item 10: the jobs service's encryption calls are bounded per customer, so one
customer's stalled key manager cannot take the slots every other customer's submits need."""

from __future__ import annotations

import asyncio

from google.protobuf import struct_pb2

from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs.encryption import PER_CUSTOMER
from tests.jobs.jobs_world import JobsWorld

# Longer than any wait below that expects progress, shorter than the encryptor's call timeout (10 s):
# past it, a blocked submit would be unblocked by the hung calls timing out, not by the bound.
PROGRESS_SECONDS = 5.0


def payload(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def test_one_customers_hanging_key_manager_does_not_block_anothers_submits(world: JobsWorld) -> None:
    slow, other = await world.customer(), await world.customer()
    world.tenancy.keys[slow.project_id] = "ck-slow"
    world.tenancy.keys[other.project_id] = "ck-fine"
    slow_type = await world.job_type(slow, price=1)
    other_type = await world.job_type(other, price=1)
    world.keys.hang.add("ck-slow")
    world.keys.unhang.clear()
    # More encryptions at once than the old process-wide semaphore had slots (32).
    batch = asyncio.create_task(world.app.cases.submission.batch_submit(slow.principal, pb.BatchSubmitJobsRequest(
        project_id=slow.project_id,
        requests=[pb.SubmitJobRequest(job_type_id=str(slow_type.id), payload=payload(n=i)) for i in range(40)])))
    try:
        await asyncio.wait_for(world.keys.wait_hung(PER_CUSTOMER), PROGRESS_SECONDS)
        job = await asyncio.wait_for(world.submit(other, other_type, payload=payload(card="4111")), PROGRESS_SECONDS)
        stored = await world.get(str(job.id))
        assert stored.encryption.key_id == "ck-fine"
        assert world.keys.hung == PER_CUSTOMER  # the stalled customer holds its own slots, no more
        assert not batch.done()
    finally:
        world.keys.unhang.set()
        world.keys.hang.discard("ck-slow")
    jobs = await asyncio.wait_for(batch, 30)
    assert len(jobs) == 40 and all(j.encryption["key_id"] == "ck-slow" for j in jobs)
    assert world.app.deps.encryptor is not None and world.app.deps.encryptor.customers_in_flight() == 0
