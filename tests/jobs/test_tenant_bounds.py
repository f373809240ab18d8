"""Issue 14, item 11, in the jobs service (real PostgreSQL, Valkey and billing): job types per
customer are capped, list pages carry no payloads unless asked and are capped in bytes, and
concurrent watches per customer are capped. Each refusal has a reason and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf import struct_pb2

from innosystem.embedded import EmbeddedValkey
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import ResourceExhausted
from services.jobs.control import Control
from tests.jobs.jobs_world import JobsWorld, make_world

MAX_JOB_TYPES = 3
PAGE_BYTES = 64 * 1024
MAX_WATCHERS = 2


@pytest.fixture(scope="module")
async def world(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey_server.url, max_job_types_per_customer=MAX_JOB_TYPES,
                                max_list_page_bytes=PAGE_BYTES, max_watchers_per_customer=MAX_WATCHERS):
        yield w


async def test_job_types_are_capped_per_customer_over_all_its_projects(world: JobsWorld) -> None:
    c, other = await world.customer(), await world.customer()
    second_project = str(uuid.uuid4())
    world.tenancy.projects[second_project] = c.principal.customer_id
    await world.job_type(c, own=True)
    await world.job_type(c, own=True)
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
    await world.job_type(other, own=True)  # another customer's count
    await types.delete_job_type(c.principal, str(again.id))
    await types.create_job_type(c.principal, second_project, {"name": "fourth"}, "", b"")


async def test_concurrent_job_type_creates_cannot_pass_the_cap_together(world: JobsWorld) -> None:
    c = await world.customer()
    results = await asyncio.gather(*(world.job_type(c, own=True) for _ in range(6)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == MAX_JOB_TYPES
    assert all(isinstance(r, ResourceExhausted) for r in results if isinstance(r, BaseException))


def big(n: int, size: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"n": n, "blob": "x" * size})
    return s


async def test_list_pages_carry_no_payload_unless_asked_and_end_early_past_the_byte_cap(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c, own=True)
    submitted = []
    for i in range(7):
        world.clock.advance(1)  # distinct create times: the list's order is the submit order, reversed
        submitted.append(await world.submit(c, jt, payload=big(i, 20_000)))
    newest_first = [str(j.id) for j in reversed(submitted)]
    queries = world.app.cases.queries

    basic, token = await queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id, page_size=100))
    assert [j.id for j in basic] == newest_first and token == ""  # BASIC by default: all fit
    assert not any(j.HasField("payload") for j in basic)

    seen: list[str] = []
    pages, token = 0, ""
    while True:
        page, token = await queries.list_jobs(c.principal, pb.ListJobsRequest(
            project_id=c.project_id, page_size=100, page_token=token, view=pb.JOB_VIEW_FULL))
        pages += 1
        assert page and sum(j.ByteSize() for j in page) <= PAGE_BYTES
        assert all(j.payload["blob"] == "x" * 20_000 for j in page)
        seen += [j.id for j in page]
        if not token:
            break
    assert seen == newest_first and pages >= 3  # every job once, in order, over several pages


async def test_a_single_job_larger_than_the_page_cap_still_lists(world: JobsWorld) -> None:
    c = await world.customer()
    jt = await world.job_type(c, own=True)
    first = await world.submit(c, jt, payload=big(0, 100_000))
    world.clock.advance(1)
    second = await world.submit(c, jt, payload=big(1, 100_000))
    queries = world.app.cases.queries
    page, token = await queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id,
                                                                           view=pb.JOB_VIEW_FULL))
    assert [j.id for j in page] == [str(second.id)] and token
    page, token = await queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id, page_token=token,
                                                                           view=pb.JOB_VIEW_FULL))
    assert [j.id for j in page] == [str(first.id)] and token == ""


async def test_watches_are_capped_per_customer_over_replicas_and_freed_when_they_end(world: JobsWorld) -> None:
    c, other = await world.customer(), await world.customer()
    jt, other_type = await world.job_type(c, own=True), await world.job_type(other, own=True)
    j1, j2, j3 = [str((await world.submit(c, jt)).id) for _ in range(3)]
    theirs = str((await world.submit(other, other_type)).id)
    control = world.app.cases.control
    cid = c.principal.customer_id

    first = control.watch(c.principal, j1)
    second = control.watch(c.principal, j2)
    assert (await first.__anext__()).type == pb.JOB_EVENT_TYPE_SNAPSHOT  # each holds a slot from here
    await second.__anext__()
    assert await control.watchers.live(cid) == MAX_WATCHERS

    with pytest.raises(ResourceExhausted) as refused:
        await control.watch(c.principal, j3).__anext__()
    err = refused.value
    assert err.reason == "QUOTA_EXCEEDED" and "INNOSYSTEM_JOBS_MAX_WATCHERS_PER_CUSTOMER" in err.message
    assert err.metadata["limit"] == str(MAX_WATCHERS)
    assert await control.watchers.live(cid) == MAX_WATCHERS  # the refusal took nothing
    # Another jobs replica (its own Control on the same Redis) counts the same watches.
    replica = Control(world.app.deps, world.app.cases.queries)
    with pytest.raises(ResourceExhausted):
        await replica.watch(c.principal, j3).__anext__()
    # Another customer's watches are its own.
    watch_theirs = control.watch(other.principal, theirs)
    await watch_theirs.__anext__()
    await watch_theirs.aclose()

    await first.aclose()  # the client left
    assert await control.watchers.live(cid) == 1
    third = replica.watch(c.principal, j3)
    await third.__anext__()
    await control.cancel(c.principal, j2, "done watching")  # a watch that reaches a final status ends
    events = [e async for e in second]
    assert events[-1].status_change.status == types_pb.JOB_STATUS_CANCELLED
    assert await control.watchers.live(cid) == 1
    await third.aclose()
    assert await control.watchers.live(cid) == 0


async def test_a_dead_replicas_watch_slots_lapse(world: JobsWorld) -> None:
    """Slots left by a replica that died mid-watch (never refreshed, never returned) stop counting
    once their expiry passes, so a crash does not lock a customer out of watching for good."""
    c = await world.customer()
    jt = await world.job_type(c, own=True)
    job = str((await world.submit(c, jt)).id)
    watchers = world.app.cases.control.watchers
    key = watchers.key(c.principal.customer_id)
    await world.redis.zadd(key, {f"dead-{i}": 1 for i in range(MAX_WATCHERS)})  # expired long ago
    watch = world.app.cases.control.watch(c.principal, job)
    assert (await watch.__anext__()).type == pb.JOB_EVENT_TYPE_SNAPSHOT
    assert await watchers.live(c.principal.customer_id) == 1  # the dead ones were dropped
    await watch.aclose()
