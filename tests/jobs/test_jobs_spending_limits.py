"""A submit that would pass a monthly spending limit is refused and nothing is held or stored
(the jobs service against real billing over gRPC, PostgreSQL and Valkey)."""

from __future__ import annotations

import asyncio

import pytest

from innosystem.kit.errors import FailedPrecondition
from services.billing.limits import SpendingLimits
from tests.billing.billing_helpers import ADMIN
from tests.jobs.jobs_world import JobsWorld


async def test_project_and_customer_limits_refuse_the_submit(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    limits = SpendingLimits(world.billing)
    await limits.set(ADMIN, c.principal.customer_id, c.project_id, 25, False, "")
    await world.submit(c, jt)
    await world.submit(c, jt)
    with pytest.raises(FailedPrecondition) as caught:
        await world.submit(c, jt, request_id="third")
    assert caught.value.reason == "SPENDING_LIMIT_REACHED" and caught.value.violations[0][0] == "project_id"
    assert caught.value.metadata["limit_cents"] == "25"
    assert await world.available(c) == 980  # the two jobs' holds only
    # The refused request stored nothing: the same request id with room to spare makes a new job.
    await limits.set(ADMIN, c.principal.customer_id, c.project_id, 30, False, "")
    job = await world.submit(c, jt, request_id="third")
    assert job.estimated_cost_cents == 10 and await world.available(c) == 970
    # A customer-wide limit covers every project; concurrent submits never pass it together.
    await limits.set(ADMIN, c.principal.customer_id, "", 60, False, "")
    results = await asyncio.gather(*(world.submit(c, jt) for _ in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(refused) == 6 and {r.reason for r in refused} == {"SPENDING_LIMIT_REACHED"}  # project: 30 used
    await limits.set(ADMIN, c.principal.customer_id, c.project_id, 0, True, "")
    results = await asyncio.gather(*(world.submit(c, jt) for _ in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(refused) == 3 and {r.reason for r in refused} == {"SPENDING_LIMIT_REACHED"}
    assert await world.available(c) == 940
