"""Issue 14, item 11, in the jobs service (real PostgreSQL, Valkey and billing): job types per
customer are capped, list pages carry no payloads unless asked and are capped in bytes, and
concurrent watches per customer are capped. Each refusal has a reason and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.errors import ResourceExhausted
from tests.jobs.jobs_world import JobsWorld, make_world

MAX_JOB_TYPES = 3


@pytest.fixture(scope="module")
async def world(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey_server.url, max_job_types_per_customer=MAX_JOB_TYPES):
        yield w


async def test_job_types_are_capped_per_customer_over_all_its_projects(world: JobsWorld) -> None:
    c, other = await world.customer(), await world.customer()
    second_project = str(uuid.uuid4())
    world.tenancy.projects[second_project] = c.principal.customer_id
    await world.job_type(c)
    await world.job_type(c)
    types = world.app.types
    await types.create_job_type(c.principal, second_project, {"name": "third"}, "req-3", b"h3")
    with pytest.raises(ResourceExhausted) as refused:
        await types.create_job_type(c.principal, second_project, {"name": "fourth"}, "", b"")
    err = refused.value
    assert err.reason == "QUOTA_EXCEEDED" and "INNOSYSTEM_JOBS_MAX_JOB_TYPES_PER_CUSTOMER" in err.message
    assert err.metadata["limit"] == str(MAX_JOB_TYPES)
    listed = await types.list_job_types(c.principal, "-", 100, "")
    assert len(listed.items) == MAX_JOB_TYPES  # nothing was created
    again = await types.create_job_type(c.principal, second_project, {"name": "third"}, "req-3", b"h3")
    assert again.name == "third"  # a repeated request still gets its first answer
    await world.job_type(other)  # another customer's count
    await types.delete_job_type(c.principal, str(again.id))
    await types.create_job_type(c.principal, second_project, {"name": "fourth"}, "", b"")


async def test_concurrent_job_type_creates_cannot_pass_the_cap_together(world: JobsWorld) -> None:
    c = await world.customer()
    results = await asyncio.gather(*(world.job_type(c) for _ in range(6)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == MAX_JOB_TYPES
    assert all(isinstance(r, ResourceExhausted) for r in results if isinstance(r, BaseException))
