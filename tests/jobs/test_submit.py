"""SubmitJob, BatchSubmitJobs, GetJob and ListJobs on the real database, Redis and billing."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

import pytest
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context
from opentelemetry import propagate
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from innosystem.embedded import EmbeddedValkey
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from innosystem.kit.protos import request_hash
from services.jobs.convert import plain
from tests.jobs.jobs_world import JobsWorld, make_world


@pytest.fixture(scope="module", params=["holds by call", "holds joined"])
async def world(request: pytest.FixtureRequest, database_url: str,
                valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    """Every submit test twice: billing over gRPC, and billing beside the jobs service on its
    database, a small submit's holds then stored by the jobs' own transaction (services/billing/joined.py)."""
    async for w in make_world(database_url, valkey_server.url, joined=request.param == "holds joined"):
        yield w


def payload(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def test_submit_holds_the_cost_stores_and_queues(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=25, default_priority=types_pb.PRIORITY_LEVEL_HIGH)
    job = await world.submit(c, jt, payload=payload(n=1))
    assert job.status == types_pb.JOB_STATUS_PENDING and job.priority == types_pb.PRIORITY_LEVEL_HIGH
    assert job.estimated_cost_cents == 25 and job.hold_id == str(job.id)
    assert await world.available(c) == 975
    got = await world.get(str(job.id), c.principal)
    assert got.payload["n"] == 1 and got.status_history[0].reason == "submitted"
    assert got.pending_info.reason == pb.PENDING_REASON_NO_COMPATIBLE_RUNNER  # nobody asked for the type yet
    assert got.trace_context == dict(job.trace_context)
    assert (await world.app.deps.queue.depth(job.queue_name))[types_pb.PRIORITY_LEVEL_HIGH] == 1


async def test_a_lone_submit_and_a_large_batch_are_answered_before_their_enqueue_lands(
        world: JobsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answered at the commit, their jobs entering Redis after (`JobQueue.landing`), while a call
    of a few jobs waits for its enqueue (ANSWERED_AT_COMMIT_FROM); a lease on this replica waits
    for the enqueues under way and finds every job answered."""
    from services.jobs import submission as submission_module

    monkeypatch.setattr(submission_module, "ANSWERED_AT_COMMIT_FROM", 3)
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    queue = world.app.deps.queue
    gate = asyncio.Event()
    enqueue = queue.enqueue

    async def held_back(items: Any) -> int:
        await gate.wait()
        return await enqueue(items)

    def batch(n: int) -> pb.BatchSubmitJobsRequest:
        return pb.BatchSubmitJobsRequest(project_id=c.project_id,
                                         requests=[pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(n)])

    monkeypatch.setattr(queue, "enqueue", held_back)
    # both answered while their enqueues wait at the gate (bounded: a wait for them would hang)
    large = await asyncio.wait_for(world.app.cases.submission.batch_submit(c.principal, batch(3)), 10)
    single = await asyncio.wait_for(world.submit(c, jt), 10)
    few = asyncio.ensure_future(world.app.cases.submission.batch_submit(c.principal, batch(2)))
    lease = asyncio.ensure_future(world.lease([jt.name], max_jobs=10))
    await asyncio.sleep(0.05)
    assert not few.done() and not lease.done()  # each waits for the enqueues under way
    gate.set()
    stored = [*large, single, *await few]
    assert sorted(x.job_id for x in await lease) == sorted(str(j.id) for j in stored)


async def test_request_id_repeat_returns_the_same_job_and_reuse_is_refused(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    first = await world.submit(c, jt, payload=payload(a=1), request_id="req-1")
    again = await world.submit(c, jt, payload=payload(a=1), request_id="req-1")
    assert again.id == first.id
    assert await world.available(c) == 990  # held once
    with pytest.raises(InvalidArgument) as caught:
        await world.submit(c, jt, payload=payload(a=2), request_id="req-1")
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED" and caught.value.violations[0][0] == "request_id"


async def test_a_batch_with_request_ids_is_stored_once_and_a_reused_id_names_its_item(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    sub = world.app.cases.submission

    def batch(*payloads: dict[str, Any]) -> pb.BatchSubmitJobsRequest:
        return pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=[
            pb.SubmitJobRequest(job_type_id=str(jt.id), payload=payload(**p), request_id=f"b-{i}")
            for i, p in enumerate(payloads)])

    first = await sub.batch_submit(c.principal, batch({"a": 0}, {"a": 1}, {"a": 2}))
    again = await sub.batch_submit(c.principal, batch({"a": 0}, {"a": 1}, {"a": 2}))
    assert [j.id for j in again] == [j.id for j in first]
    assert await world.available(c) == 970  # held once
    with pytest.raises(InvalidArgument) as caught:
        await sub.batch_submit(c.principal, batch({"a": 0}, {"a": 9}, {"a": 2}, {"a": 3}))
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.violations[0][0] == "requests[1].request_id"
    assert await world.available(c) == 970  # the new fourth item was not stored either
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert len(listed) == 3


async def test_a_batch_of_two_types_keeps_each_types_settings_and_price(world: JobsWorld) -> None:
    """A call's items of one type share that type's settings and price (worked out once per call):
    interleaved items of two types each get their own type's, as stored and as held, and the
    items without a trace context of their own each carry a copy of the call's."""
    c = await world.customer(funds=1000)
    cheap = await world.job_type(c, price=10, timeout_seconds=30)
    dear = await world.job_type(c, price=25, timeout_seconds=90)
    kinds = [cheap, dear, cheap, dear, dear]
    jobs = await world.app.cases.submission.batch_submit(c.principal, pb.BatchSubmitJobsRequest(
        project_id=c.project_id, requests=[
            pb.SubmitJobRequest(job_type_id=str(jt.id), payload=payload(i=i),
                                trace_context={"traceparent": f"00-{i:032x}-{i:016x}-01"} if i == 4 else {})
            for i, jt in enumerate(kinds)]))
    assert [j.estimated_cost_cents for j in jobs] == [10, 25, 10, 25, 25]
    assert await world.available(c) == 1000 - 95
    async with world.app.deps.db.session() as s:
        rows = {str(r.id): r for r in await s.execute(text(
            "SELECT id, settings, trace_context FROM jobs.jobs WHERE id = ANY(:ids)"),
            {"ids": [j.id for j in jobs]})}
    stored = [rows[str(j.id)] for j in jobs]
    assert [r.settings["timeout_seconds"] for r in stored] == [30, 90, 30, 90, 90]
    assert [r.settings["price"]["unit"] for r in stored] == [10, 25, 10, 25, 25]
    assert stored[4].trace_context == {"traceparent": f"00-{4:032x}-{4:016x}-01"}
    assert len({id(j.trace_context) for j in jobs[:4]}) == 4  # each job its own copy


async def test_a_repeat_is_the_same_job_whatever_trace_it_carries(world: JobsWorld) -> None:
    """A retry carries a new span, and the gateway sets each submit's own trace on the items of a
    batch it coalesces: the trace context is not what makes a request another one. A request id
    remembered with its trace context (before the fingerprint left it out) still replays."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    sub = world.app.cases.submission

    def submit(request_id: str, span: str) -> pb.SubmitJobRequest:
        return pb.SubmitJobRequest(project_id=c.project_id, job_type_id=str(jt.id), payload=payload(a=1),
                                   request_id=request_id,
                                   trace_context={"traceparent": f"00-{'1' * 32}-{span * 16}-01"})

    first = await sub.submit(c.principal, submit("traced", "a"))
    again = await sub.submit(c.principal, submit("traced", "b"))
    alone = await sub.submit(c.principal, pb.SubmitJobRequest(project_id=c.project_id, job_type_id=str(jt.id),
                                                               payload=payload(a=1), request_id="traced"))
    assert again.id == first.id == alone.id
    assert await world.available(c) == 990  # held once

    old = submit("remembered-before", "c")
    stored = await sub.submit(c.principal, old)
    async with world.app.deps.db.session() as s:  # remembered as before the fingerprint: with the trace
        await s.execute(text("UPDATE jobs.idempotency_keys SET request_hash = :hash "
                             "WHERE scope = :scope AND request_id = 'remembered-before'"),
                        {"scope": f"SubmitJob:{c.project_id}", "hash": request_hash(old)})
        await s.commit()
    assert (await sub.submit(c.principal, old)).id == stored.id
    with pytest.raises(InvalidArgument) as caught:  # another request under a used id is still refused
        await sub.submit(c.principal, pb.SubmitJobRequest(project_id=c.project_id, job_type_id=str(jt.id),
                                                          payload=payload(a=2), request_id="traced"))
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize("field, kwargs, reason", [
    ("payload", {"payload": payload(blob="x" * 3000)}, "PAYLOAD_TOO_LARGE"),
    ("priority", {"priority": -1}, "INVALID_PRIORITY"),
    ("priority", {"priority": 9}, "INVALID_PRIORITY"),
    ("retry_policy.max_attempts", {"retry_policy": types_pb.RetryPolicy(max_attempts=0)}, "INVALID_RETRY_POLICY"),
    ("retry_policy.backoff_multiplier", {"retry_policy": types_pb.RetryPolicy(max_attempts=2, backoff_multiplier=0.5)},
     "INVALID_RETRY_POLICY"),
    ("schedule_time", {"schedule_time": Timestamp(seconds=4_000_000_000)}, "SCHEDULE_TOO_FAR"),
    ("persistence_policy", {"persistence_policy": 7}, "INVALID_PERSISTENCE_POLICY"),
])
async def test_bad_input_names_the_field_and_reserves_and_queues_nothing(
        world: JobsWorld, field: str, kwargs: dict[str, object], reason: str) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    object.__setattr__(world.config, "max_payload_bytes", 2048)
    try:
        with pytest.raises(DomainError) as caught:
            await world.submit(c, jt, **kwargs)
    finally:
        object.__setattr__(world.config, "max_payload_bytes", 1024 * 1024)
    assert caught.value.reason == reason and caught.value.violations[0][0] == field
    assert await world.available(c) == 1000
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert listed == []


async def test_unknown_disabled_and_foreign_types_are_refused(world: JobsWorld) -> None:
    c, other = await world.customer(funds=1000), await world.customer(funds=1000)
    disabled = await world.job_type(c, enabled=False)
    foreign = await world.job_type(other, own=True)  # another customer's own type
    with pytest.raises(FailedPrecondition) as caught:
        await world.submit(c, disabled)
    assert caught.value.reason == "JOB_TYPE_DISABLED" and caught.value.violations[0][0] == "job_type_id"
    with pytest.raises(NotFound) as missing:
        await world.submit(c, foreign)
    assert missing.value.violations[0][0] == "job_type_id"
    assert await world.available(c) == 1000


async def test_insufficient_funds_stores_and_holds_nothing(world: JobsWorld) -> None:
    c = await world.customer(funds=5)
    jt = await world.job_type(c, price=10)
    with pytest.raises(FailedPrecondition) as caught:
        await world.submit(c, jt)
    assert caught.value.reason == "INSUFFICIENT_FUNDS"
    assert await world.available(c) == 5
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert listed == []


async def test_a_submit_too_slow_to_commit_gives_its_holds_back(world: JobsWorld,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery takes a hold without a job, past its grace, for a dead submit's: a submit that
    could not commit within half that grace rolls back and gives its holds back itself."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    monkeypatch.setattr(world.app.deps, "config", replace(world.app.deps.config, orphan_hold_grace_seconds=0.0))
    with pytest.raises(Unavailable) as caught:
        await world.submit(c, jt)
    assert caught.value.reason == "SUBMIT_TIMED_OUT"
    assert await world.available(c) == 100
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert listed == []
    monkeypatch.undo()
    await world.submit(c, jt)  # a repeat in time is stored
    assert await world.available(c) == 90


async def test_batch_is_all_or_nothing_and_names_the_item(world: JobsWorld) -> None:
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    sub = world.app.cases.submission
    ok = [pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(5)]
    jobs = await sub.batch_submit(c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=ok))
    assert len(jobs) == 5 and await world.available(c) == 50
    bad = [*ok, pb.SubmitJobRequest(job_type_id=str(jt.id), priority=cast(Any, 12))]
    with pytest.raises(InvalidArgument) as caught:
        await sub.batch_submit(c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=bad))
    assert caught.value.violations[0][0] == "requests[5].priority"
    too_much = [pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(6)]  # 60 > 50 available
    with pytest.raises(FailedPrecondition):
        await sub.batch_submit(c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=too_much))
    assert await world.available(c) == 50
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert len(listed) == 5


async def test_list_pages_newest_first_and_filters(world: JobsWorld) -> None:
    c = await world.customer(funds=10_000)
    jt = await world.job_type(c, price=1)
    made = []
    for i in range(7):
        world.clock.advance(0.01)
        made.append(await world.submit(c, jt, priority=types_pb.PRIORITY_LEVEL_LOW if i % 2 else
                                       types_pb.PRIORITY_LEVEL_CRITICAL))
    q = world.app.cases.queries
    page, token = await q.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id, page_size=4))
    rest, end = await q.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id, page_size=4,
                                                                  page_token=token))
    assert [j.id for j in page + rest] == [str(j.id) for j in reversed(made)] and end == ""
    low, _ = await q.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id,
                                                          priority=types_pb.PRIORITY_LEVEL_LOW))
    assert len(low) == 3
    other = await world.customer()
    with pytest.raises(NotFound):
        await q.get(other.principal, str(made[0].id), pb.JOB_VIEW_FULL)


async def test_concurrent_submits_share_commits_but_fail_alone(world: JobsWorld) -> None:
    rich, poor = await world.customer(funds=1000), await world.customer(funds=5)
    rt, pt = await world.job_type(rich, price=1), await world.job_type(poor, price=10)
    batches_before = world.app.cases.submission._coalescer.batches
    calls = [world.submit(rich, rt) for _ in range(40)] + [world.submit(poor, pt)] + \
        [world.submit(rich, rt, request_id="same") for _ in range(5)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], FailedPrecondition)
    assert refused[0].reason == "INSUFFICIENT_FUNDS"
    assert len({str(r.id) for r in results[-5:] if not isinstance(r, BaseException)}) == 1  # one job per request id
    assert await world.available(rich) == 1000 - 41 and await world.available(poor) == 5
    assert world.app.cases.submission._coalescer.batches - batches_before < 46  # commits were shared


async def test_concurrent_single_submits_of_a_caller_go_together_each_answered_alone(world: JobsWorld) -> None:
    """Single submits of one caller to one project that arrive while one is under way go through one
    submit (one read of the project and its types, one set of holds); each job keeps its own call's
    trace, and a group refused for one item's fault sends each again alone: the bad item's error
    names its own field, unprefixed, and the others are stored."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=1)
    sub = world.app.cases.submission
    runs: list[int] = []
    real = sub._submit

    async def counted(caller: Any, project_id: str, requests: Any, single: bool, **kw: Any) -> Any:
        runs.append(len(requests))
        return await real(caller, project_id, requests, single, **kw)

    sub._submit = counted  # type: ignore[method-assign]  # counts the real thing's runs

    async def one(i: int) -> Any:
        trace = {"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"}
        token = otel_context.attach(propagate.extract(trace))
        try:
            job_type_id = str(uuid.uuid4()) if i == 13 else str(jt.id)  # a type that does not exist
            return await sub.submit(c.principal, pb.SubmitJobRequest(project_id=c.project_id, job_type_id=job_type_id,
                                                                     payload=payload(n=i)))
        finally:
            otel_context.detach(token)

    results = await asyncio.gather(*(one(i) for i in range(30)), return_exceptions=True)
    bad = results[13]
    assert isinstance(bad, DomainError) and bad.violations and bad.violations[0][0] == "job_type_id"
    good = [(i, r) for i, r in enumerate(results) if i != 13]
    assert all(not isinstance(r, BaseException) for _, r in good)
    assert max(runs) > 1  # some went together …
    assert len([n for n in runs if n == 1]) >= 29  # … and after the refusal, each went alone
    for i, job in good:
        stored = await world.get(str(job.id))
        assert plain(stored.payload)["n"] == i
        assert stored.trace_context["traceparent"].split("-")[1] == f"{i + 1:032x}"  # its own call's trace
    assert await world.available(c) == 1000 - 29


async def test_single_submits_go_together_only_with_the_same_caller_and_project(world: JobsWorld) -> None:
    a, b = await world.customer(funds=1000), await world.customer(funds=1000)
    ta, tb = await world.job_type(a, price=1), await world.job_type(b, price=1)
    sub = world.app.cases.submission
    groups: list[list[str]] = []
    real = sub._submit

    async def seen(caller: Any, project_id: str, requests: Any, single: bool, **kw: Any) -> Any:
        groups.append([r.project_id for r in requests])
        return await real(caller, project_id, requests, single, **kw)

    sub._submit = seen  # type: ignore[method-assign]
    jobs = await asyncio.gather(*(world.submit(a if i % 2 else b, ta if i % 2 else tb) for i in range(40)))
    assert len({str(j.id) for j in jobs}) == 40
    assert max(len(g) for g in groups) > 1  # some went together …
    assert all(len(set(g)) == 1 for g in groups)  # … never two tenants' submits in one
    assert await world.available(a) == 980 and await world.available(b) == 980


async def test_encrypted_project_stores_only_ciphertext_of_sensitive_fields(world: JobsWorld) -> None:
    c = await world.customer()
    world.tenancy.keys[c.project_id] = "ck-1"
    jt = await world.job_type(c, sensitive_fields=["payload.card.number", "result.token"])
    job = await world.submit(c, jt, payload=payload(card={"number": "4111", "exp": "12/30"}, amount=5))
    stored = await world.get(str(job.id))
    assert stored.encryption.key_id == "ck-1" and list(stored.encryption.encrypted_fields) == ["payload.card.number"]
    data = plain(stored.payload)
    number = data["card"]["number"]
    assert number.startswith(f"enc:ck-1:{job.id}:") and "4111" in number  # the double's envelope
    assert data["card"]["exp"] == "12/30" and data["amount"] == 5
    (lease,) = await world.lease([jt.name])
    assert lease.encryption.key_id == "ck-1" and plain(lease.payload)["card"]["number"] == number
    await world.complete(lease, result=payload(token="secret", size=3))
    done = await world.get(str(job.id))
    result = plain(done.result)
    assert result["token"].startswith("enc:ck-1:") and result["size"] == 3
    assert list(done.encryption.encrypted_fields) == ["payload.card.number", "result.token"]


async def test_encrypted_project_without_named_fields_encrypts_every_top_level_field(world: JobsWorld) -> None:
    c = await world.customer()
    world.tenancy.keys[c.project_id] = "ck-2"
    jt = await world.job_type(c)
    job = await world.submit(c, jt, payload=payload(a=1, b={"c": 2}))
    stored = await world.get(str(job.id))
    assert sorted(stored.encryption.encrypted_fields) == ["payload.a", "payload.b"]
    assert all(str(v).startswith("enc:ck-2:") for v in plain(stored.payload).values())


def _bad_payloads() -> list[tuple[str, struct_pb2.Struct]]:
    """Payloads PostgreSQL cannot store (NUL in a value, a nested value, a list item, a key), with
    the field each one's refusal names."""
    return [("payload.x", payload(x="a\u0000b")), ("payload.card.number", payload(card={"number": "41\u000011"})),
            ("payload.items[1]", payload(items=["ok", "\u0000"])), ("payload.k\\u0000", payload(**{"k\u0000": 1}))]


async def _side_by_side(good: Callable[[int], Awaitable[Any]], bad: Callable[[int], Awaitable[Any]],
                        good_flows: int = 10, bad_flows: int = 2, each: int = 20,
                        bad_each: int = 8) -> tuple[list[Any], list[Any]]:
    """Steady flows of submits from two tenants at once (each flow submits one after another, at its
    own pace), so that the coalescer's batches mix the tenants' submits: what a busy platform sees."""
    async def flow(call: Callable[[int], Awaitable[Any]], start: int, n: int) -> list[Any]:
        out = []
        for i in range(start, start + n):
            await asyncio.sleep(random.uniform(0, 0.004))  # independent clients: no lockstep
            try:
                out.append(await call(i))
            except Exception as exc:  # collected for the assertions
                out.append(exc)
        return out

    flows = [flow(good, f * each, each) for f in range(good_flows)] + \
        [flow(bad, f * bad_each, bad_each) for f in range(bad_flows)]
    done = await asyncio.gather(*flows)
    return [r for d in done[:good_flows] for r in d], [r for d in done[good_flows:] for r in d]


async def test_unstorable_values_are_refused_naming_the_field_and_fail_no_other_tenant(world: JobsWorld) -> None:
    """Issue 14, item 2: one tenant's NUL characters, sent while another tenant's submits flow (so
    that they would share commits), fail only themselves, at validation, naming the field."""
    a, b = await world.customer(funds=1000), await world.customer(funds=10_000)
    ta, tb = await world.job_type(a, price=10), await world.job_type(b, price=1)
    bad = _bad_payloads()
    good, refused = await _side_by_side(lambda i: world.submit(b, tb, payload=payload(n=i)),
                                        lambda i: world.submit(a, ta, payload=bad[i % len(bad)][1]))
    assert [r for r in good if isinstance(r, BaseException)] == []
    assert len(refused) == 16 and all(isinstance(r, InvalidArgument) for r in refused), refused[:3]
    assert {cast(InvalidArgument, r).reason for r in refused} == {"INVALID_CHARACTER"}
    assert {cast(InvalidArgument, r).violations[0][0] for r in refused} == {f for f, _ in bad}
    with pytest.raises(InvalidArgument) as rid:
        await world.submit(a, ta, request_id="r\u0000")
    assert rid.value.violations[0][0] == "request_id"
    assert await world.available(a) == 1000  # nothing held
    assert await world.available(b) == 10_000 - 200
    listed, _ = await world.app.cases.queries.list_jobs(b.principal, pb.ListJobsRequest(project_id=b.project_id,
                                                                                        page_size=500))
    assert len(listed) == 200
    with pytest.raises(InvalidArgument) as in_batch:
        await world.app.cases.submission.batch_submit(a.principal, pb.BatchSubmitJobsRequest(
            project_id=a.project_id, requests=[pb.SubmitJobRequest(job_type_id=str(ta.id)),
                                               pb.SubmitJobRequest(job_type_id=str(ta.id), payload=bad[0][1])]))
    assert in_batch.value.violations[0][0] == "requests[1].payload.x"
    for field, bad_payload in bad:  # a batch's payloads are checked as they are converted (`_prepare`)
        with pytest.raises(InvalidArgument) as in_batch:
            await world.app.cases.submission.batch_submit(a.principal, pb.BatchSubmitJobsRequest(
                project_id=a.project_id, requests=[pb.SubmitJobRequest(job_type_id=str(ta.id), payload=p)
                                                   for p in (payload(n=1), payload(n=2), bad_payload)]))
        assert in_batch.value.reason == "INVALID_CHARACTER"
        assert in_batch.value.violations[0][0] == "requests[2]." + field
    with pytest.raises(InvalidArgument) as nan:
        await world.submit(a, ta, payload=payload(x=float("nan")))
    assert nan.value.reason == "INVALID_NUMBER" and nan.value.violations[0][0] == "payload.x"
    with pytest.raises(InvalidArgument) as nan:
        await world.app.cases.submission.batch_submit(a.principal, pb.BatchSubmitJobsRequest(
            project_id=a.project_id, requests=[pb.SubmitJobRequest(job_type_id=str(ta.id), payload=p)
                                               for p in (payload(n=1), payload(deep={"x": float("inf")}))]))
    assert nan.value.reason == "INVALID_NUMBER" and nan.value.violations[0][0] == "requests[1].payload.deep.x"
    assert await world.available(a) == 1000  # none of them held anything
    # the text a NUL becomes in JSON, written out by the client, is storable text like any other
    (stored,) = await world.app.cases.submission.batch_submit(a.principal, pb.BatchSubmitJobsRequest(
        project_id=a.project_id, requests=[pb.SubmitJobRequest(job_type_id=str(ta.id),
                                                               payload=payload(x="a\\u0000b"))]))
    assert stored.payload == {"x": "a\\u0000b"}


async def test_a_shared_commit_that_fails_is_retried_one_submit_at_a_time(
        world: JobsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14, item 2: a value that validation lets through (validation switched off here; PostgreSQL
    is real and refuses it) fails the shared commit; each submit then goes alone, so only the one
    with the value fails (400, its holds given back) and every other tenant's submit is stored."""
    import services.jobs.submission as submission

    monkeypatch.setattr(submission, "check_storable", lambda *args, **kwargs: None, raising=False)
    monkeypatch.setattr(submission, "check_converted", lambda *args, **kwargs: None, raising=False)
    a, b = await world.customer(funds=1000), await world.customer(funds=10_000)
    ta, tb = await world.job_type(a, price=10), await world.job_type(b, price=1)
    sub = world.app.cases.submission
    batches_before = sub._coalescer.batches
    bad = _bad_payloads()
    good, refused = await _side_by_side(lambda i: world.submit(b, tb, payload=payload(n=i)),
                                        lambda i: world.submit(a, ta, payload=bad[i % len(bad)][1]), each=15)
    assert [r for r in good if isinstance(r, BaseException)] == []
    assert len(refused) == 16 and all(isinstance(r, InvalidArgument) for r in refused), refused[:3]
    assert {cast(InvalidArgument, r).reason for r in refused} == {"UNSTORABLE_VALUE"}
    assert sub._coalescer.batches - batches_before < 150 + 16  # commits were shared
    assert await world.available(b) == 10_000 - 150
    assert await world.available(a) == 1000  # the failed submits' holds are given back at once
    listed, _ = await world.app.cases.queries.list_jobs(a.principal, pb.ListJobsRequest(project_id=a.project_id))
    assert listed == []


async def test_an_inactive_project_takes_no_jobs_and_holds_nothing(world: JobsWorld) -> None:
    """Issue 14, item 15: a submit (single or batch) to a deactivated project is refused at once."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    await world.submit(c, jt)
    world.tenancy.inactive.add(c.project_id)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await world.submit(c, jt)
        assert caught.value.reason == "PROJECT_INACTIVE" and caught.value.violations[0][0] == "project_id"
        with pytest.raises(FailedPrecondition) as batch:
            await world.app.cases.submission.batch_submit(c.principal, pb.BatchSubmitJobsRequest(
                project_id=c.project_id, requests=[pb.SubmitJobRequest(job_type_id=str(jt.id))]))
        assert batch.value.reason == "PROJECT_INACTIVE"
        assert await world.available(c) == 990
    finally:
        world.tenancy.inactive.discard(c.project_id)
    await world.submit(c, jt)  # active again: taken
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert len(listed) == 2 and await world.available(c) == 980


async def test_a_submit_failing_alone_for_another_reason_fails_no_one_else(world: JobsWorld) -> None:
    """Issue 14, item 2: a fault that is not a bad value (a trigger in the real PostgreSQL refuses one
    tenant's jobs) fails the shared commit; retried alone, it fails only its own submits, and their
    holds go back when recovery finds their intents."""
    a, b = await world.customer(funds=1000), await world.customer(funds=10_000)
    ta, tb = await world.job_type(a, price=10), await world.job_type(b, price=1)
    async with world.app.deps.db.session() as s:
        await s.execute(text("""
            CREATE FUNCTION jobs.refuse_marked_job() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'this job is refused'; END $$;
            CREATE TRIGGER refuse_marked_job BEFORE INSERT ON jobs.jobs FOR EACH ROW
            WHEN (NEW.payload ? 'refuse-me') EXECUTE FUNCTION jobs.refuse_marked_job();"""))
    try:
        good, refused = await _side_by_side(lambda i: world.submit(b, tb, payload=payload(n=i)),
                                            lambda i: world.submit(a, ta, payload=payload(**{"refuse-me": i})),
                                            each=15)
    finally:
        async with world.app.deps.db.session() as s:
            await s.execute(text("DROP TRIGGER refuse_marked_job ON jobs.jobs; DROP FUNCTION jobs.refuse_marked_job()"))
    assert [r for r in good if isinstance(r, BaseException)] == []
    assert len(refused) == 16 and all(isinstance(r, DBAPIError) for r in refused), refused[:3]
    assert await world.available(b) == 10_000 - 150
    world.past_orphan_hold_grace()
    await world.app.loops.recover_once()
    assert await world.available(a) == 1000


async def test_a_large_batch_is_written_while_billing_reserves(world: JobsWorld, database_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A large batch is written while billing decides its holds (the two round trips overlap):
    when billing is asked, the jobs' transaction is already writing; the jobs commit once the
    holds are granted. (Where billing shares the process, as while it is busy: joined, the holds
    would be written by the jobs' own transaction.)"""
    import psycopg

    from innosystem.kit import inprocess
    from services.jobs.billing import LOCAL_BELOW_CORES
    from services.jobs.submission import EARLY_WRITE_ROWS

    monkeypatch.setattr(inprocess, "cpu_share", lambda: LOCAL_BELOW_CORES)

    n = EARLY_WRITE_ROWS
    c = await world.customer(funds=10 * n + 1000)
    jt = await world.job_type(c, price=10)
    billing = world.app.deps.billing
    reserve = billing.reserve
    writing_meanwhile: list[bool] = []

    async def watched(items: Any) -> Any:
        await asyncio.sleep(0.05)  # the jobs' COPY, if under way, is done by now, uncommitted
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
                "WHERE r.oid = 'jobs.jobs'::regclass AND l.mode = 'RowExclusiveLock' AND l.granted")
            writing_meanwhile.append((await cur.fetchone())[0] > 0)  # type: ignore[index]
        return await reserve(items)

    monkeypatch.setattr(billing, "reserve", watched)
    requests = [pb.SubmitJobRequest(job_type_id=str(jt.id), payload=_payload(k)) for k in range(n)]
    jobs = await world.app.cases.submission.batch_submit(
        c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=requests))
    assert writing_meanwhile == [True]
    assert len(jobs) == n and await world.available(c) == 1000
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(
        project_id=c.project_id, page_size=n))
    assert sorted(j.id for j in listed) == sorted(str(j.id) for j in jobs)
    stored = await world.get(str(jobs[7].id))
    assert plain(stored.payload) == {"k": 7}


async def test_a_large_batch_beyond_the_balance_is_rolled_back_and_holds_nothing(world: JobsWorld) -> None:
    from services.jobs.submission import EARLY_WRITE_ROWS

    n = EARLY_WRITE_ROWS + 5
    c = await world.customer(funds=10 * n - 50)
    jt = await world.job_type(c, price=10)
    requests = [pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(n)]  # 50 more than the wallet holds
    with pytest.raises(FailedPrecondition) as caught:
        await world.app.cases.submission.batch_submit(
            c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=requests))
    assert caught.value.reason == "INSUFFICIENT_FUNDS"
    assert await world.available(c) == 10 * n - 50
    listed, _ = await world.app.cases.queries.list_jobs(c.principal, pb.ListJobsRequest(project_id=c.project_id))
    assert listed == []
    jobs = await world.app.cases.submission.batch_submit(  # what it can pay for goes in
        c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=requests[5:]))
    assert len(jobs) == n - 5 and await world.available(c) == 0


def _payload(k: int) -> struct_pb2.Struct:
    payload = struct_pb2.Struct()
    payload.update({"k": k})
    return payload
