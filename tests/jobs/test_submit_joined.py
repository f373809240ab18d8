"""Issues 12 and 13: where billing runs beside the jobs service on its database, a small submit's
holds are stored by the jobs' own transaction (services/billing/joined.py): one commit for the
holds and their jobs, neither ever stored without the other, Open-to-Buy following the outcome.
(tests/jobs/test_submit.py runs every submit test this way too.) Real parts: the embedded
PostgreSQL and Valkey, billing's service in this process as `innosystem up` runs it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from innosystem.embedded import EmbeddedValkey
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import inprocess
from innosystem.kit.errors import DomainError
from services.billing.service import REDIS_REBUILD
from services.jobs import submission
from services.jobs.billing import JOINED_ITEMS, LOCAL_BELOW_CORES, LOCAL_ITEMS
from services.jobs.submission import Submission
from tests.jobs.jobs_world import Customer, JobsWorld, make_world


@pytest.fixture(scope="module")
async def world(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey_server.url, joined=True):
        yield w


async def _held(world: JobsWorld, c: Customer) -> tuple[int, int, int]:
    """(holds stored in PostgreSQL, the wallet's held amount there, what Open-to-Buy holds), once
    billing's background repairs are done: a hold Open-to-Buy refused and PostgreSQL could pay for
    (a moment behind a concurrent one) is stored, and Redis rebuilt for it just after."""
    await world.billing.settle()
    cid = uuid.UUID(c.principal.customer_id)
    async with world.billing.db.session() as s:
        rows = (await s.execute(text("SELECT count(*), coalesce(sum(amount), 0) FROM billing.holds "
                                     "WHERE customer_id = :c AND status = 1"), {"c": cid})).one()
    snapshot = await world.billing.otb.snapshot(cid, "USD")
    return int(rows[0]), int(rows[1]), snapshot.held


async def test_the_holds_and_their_jobs_are_one_commit(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    batches = world.billing.commit.batches
    job = await world.submit(c, jt)
    job2 = await world.submit(c, jt)
    assert world.billing.commit.batches == batches  # billing's group commit stored neither
    # concurrent singles: joined transactions side by side (none holds the wallet between round trips)
    jobs = [job2, *await asyncio.gather(*(world.submit(c, jt) for _ in range(LOCAL_ITEMS - 1)))]
    assert world.billing.commit.batches == batches
    assert await _held(world, c) == (9, 90, 90)
    # the journal's running figures, from the guarded updates' own answers, in order
    assert await _journal(world, c) == [(10, 1000, 10 * k) for k in range(1, 10)]
    assert await world.available(c) == 910
    async with world.billing.db.session() as s:
        held_for = set((await s.execute(text("SELECT job_id FROM billing.holds WHERE customer_id = :c"),
                                        {"c": uuid.UUID(c.principal.customer_id)})).scalars())
    assert held_for == {str(j.id) for j in [job, *jobs]}
    found = await world.billing.reconcile(REDIS_REBUILD, c.principal.customer_id, dry_run=True)
    assert found.consistent, found.findings


async def test_a_whole_batch_is_joined_and_a_busy_process_leaves_it_to_billing(
        world: JobsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's holds, up to JOINED_ITEMS, go in the jobs' transaction too; while this process
    is busy for a whole core, billing's group commit reserves them first, on its own core."""
    c = await world.customer(funds=100_000)
    jt = await world.job_type(c, price=10)

    async def batch(size: int) -> list[Any]:
        requests = [pb.SubmitJobRequest(job_type_id=str(jt.id)) for _ in range(size)]
        return await world.app.cases.submission.batch_submit(
            c.principal, pb.BatchSubmitJobsRequest(project_id=c.project_id, requests=requests))

    monkeypatch.setattr(inprocess, "cpu_share", lambda: 0.0)  # however busy this test's process is
    batches = world.billing.commit.batches
    assert len(await batch(JOINED_ITEMS)) == JOINED_ITEMS
    assert world.billing.commit.batches == batches  # billing's group commit stored none of them
    assert await _held(world, c) == (JOINED_ITEMS, 10 * JOINED_ITEMS, 10 * JOINED_ITEMS)
    journal = await _journal(world, c)
    assert [held for _, _, held in journal] == [10 * k for k in range(1, JOINED_ITEMS + 1)]

    monkeypatch.setattr(inprocess, "cpu_share", lambda: LOCAL_BELOW_CORES)
    assert len(await batch(LOCAL_ITEMS + 1)) == LOCAL_ITEMS + 1
    assert world.billing.commit.batches > batches
    assert await _held(world, c) == (JOINED_ITEMS + LOCAL_ITEMS + 1, 10 * (JOINED_ITEMS + LOCAL_ITEMS + 1),
                                     10 * (JOINED_ITEMS + LOCAL_ITEMS + 1))


async def test_a_jobs_transaction_that_fails_takes_its_holds_with_it(world: JobsWorld,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    write = Submission._write

    async def failing(s: Any, writes: Any, new: Any) -> None:  # the holds are written by now
        await write(s, writes, new)
        raise RuntimeError("the jobs' transaction fails after billing wrote")

    monkeypatch.setattr(Submission, "_write", staticmethod(failing))
    with pytest.raises(RuntimeError):
        await world.submit(c, jt)
    assert await _held(world, c) == (0, 0, 0)  # rolled back in PostgreSQL, let go in Open-to-Buy
    monkeypatch.undo()
    job = await world.submit(c, jt)
    assert await _held(world, c) == (1, 10, 10)
    assert (await world.get(str(job.id))).estimated_cost_cents == 10


async def _wallet(world: JobsWorld, c: Customer, **values: Any) -> Any:
    """The customer's wallet row, after setting `values` on it when given."""
    cid = uuid.UUID(c.principal.customer_id)
    if values:
        async with world.billing.db.session() as s:
            await s.execute(text(f"UPDATE billing.accounts SET {', '.join(f'{k} = :{k}' for k in values)} "
                                 "WHERE owner_id = :c AND currency = 'USD'"), {"c": cid, **values})
            await s.commit()
    async with world.billing.db.session() as s:
        return (await s.execute(text("SELECT * FROM billing.accounts WHERE owner_id = :c AND currency = 'USD'"),
                                {"c": cid})).one()


async def test_a_guard_that_does_not_hold_sends_the_holds_the_usual_way(world: JobsWorld) -> None:
    """The wallet is not read before the joined holds are written: a hold that would cross its
    low-balance threshold fails the jobs' transaction on billing's guard, and billing's group
    commit, which raises the alert, reserves it before the jobs commit. A wallet that cannot pay
    refuses the submit as before; a hold id that exists answers as the repeat it is."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    await _wallet(world, c, low_balance_threshold=85)
    batches = world.billing.commit.batches
    await world.submit(c, jt)  # available 90: joined
    assert world.billing.commit.batches == batches and not (await _wallet(world, c)).low_balance_alerted
    await world.submit(c, jt)  # 80 crosses 85: the usual way, which raises the alert
    assert world.billing.commit.batches == batches + 1 and (await _wallet(world, c)).low_balance_alerted
    await world.submit(c, jt)  # alerted already: joined again
    assert world.billing.commit.batches == batches + 1
    journal = await _journal(world, c)
    assert [(amount, held) for amount, _, held in journal] == [(10, 10), (10, 20), (10, 30)]
    assert {balance for _, balance, _ in journal} == {100}

    poor = await world.customer(funds=15)
    tp = await world.job_type(poor, price=10)
    await world.submit(poor, tp)
    with pytest.raises(DomainError) as refused:
        await world.submit(poor, tp)
    assert refused.value.reason == "INSUFFICIENT_FUNDS" and await _held(world, poor) == (1, 10, 10)

    request_id = "held-before"  # a hold an earlier attempt of the submit left (its job not stored)
    job_id = submission.job_id_for(uuid.UUID(c.project_id), request_id)
    await world.billing.reserve(str(job_id), c.principal.customer_id, 10, "USD", job_id=str(job_id))
    job = await world.submit(c, jt, request_id=request_id)
    assert job.id == job_id and await _held(world, c) == (4, 40, 40)
    found = await world.billing.reconcile(REDIS_REBUILD, c.principal.customer_id, dry_run=True)
    assert found.consistent, found.findings

    await _wallet(world, c, spending_limited=True)  # its limits are read under lock: the usual way
    before = world.billing.commit.batches
    await world.submit(c, jt)
    assert world.billing.commit.batches == before + 1 and await _held(world, c) == (5, 50, 50)


async def _journal(world: JobsWorld, c: Customer) -> list[tuple[int, int, int]]:
    """(amount, balance after, held after) of the wallet's hold transfers, in order."""
    async with world.billing.db.session() as s:
        rows = (await s.execute(text("SELECT amount, balance_after, held_after FROM billing.transfers "
                                     "WHERE customer_id = :c AND kind = 2 ORDER BY seq"),
                                {"c": uuid.UUID(c.principal.customer_id)})).all()
    return [(int(a), int(b), int(h)) for a, b, h in rows]


def _minted_at(u: uuid.UUID) -> float:
    """A UUIDv7's time, in seconds since the epoch."""
    assert (u.version, u.variant) == (7, uuid.RFC_4122), u
    return (u.int >> 80) / 1000


async def test_new_rows_keys_are_time_ordered(world: JobsWorld) -> None:
    """A job without a request id and its hold's journal row (written in SQL by the joined reserve)
    get UUIDv7 keys: minted now, later ones sorting after earlier ones. A request id still names
    its job (the same id for a repeat)."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    before = time.time()
    first = await world.submit(c, jt)
    await asyncio.sleep(0.003)
    second = await world.submit(c, jt)
    after = time.time()
    assert before - 0.001 <= _minted_at(first.id) <= _minted_at(second.id) <= after + 0.001
    assert str(first.id) < str(second.id)  # as PostgreSQL's C collation compares the hold ids
    async with world.billing.db.session() as s:
        ids = (await s.execute(text("SELECT id FROM billing.transfers WHERE customer_id = :c AND kind = 2 "
                                    "ORDER BY seq"), {"c": uuid.UUID(c.principal.customer_id)})).scalars().all()
    assert len(ids) == 2
    assert before - 1 <= _minted_at(ids[0]) <= _minted_at(ids[1]) <= after + 1  # PostgreSQL's clock
    named = await world.submit(c, jt, request_id="order-17")
    assert named.id == submission.job_id_for(uuid.UUID(c.project_id), "order-17")
    assert named.id.version == 5


async def test_holds_open_to_buy_refuses_and_postgresql_stores_are_reconciled(
        world: JobsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open-to-Buy is asked beside the commit, PostgreSQL's guard decides: a hold Redis refused
    (its projection behind) or could not be asked about is stored, and the wallet reconciled."""
    c = await world.customer(funds=100)
    jt = await world.job_type(c, price=10)
    otb = world.billing.otb

    async def refusing(customer_id: Any, currency: str, holds: Any) -> list[int]:
        return [-1] * len(holds)

    monkeypatch.setattr(otb, "reserve_many", refusing)
    await world.submit(c, jt)
    monkeypatch.undo()
    assert await _held(world, c) == (1, 10, 10)  # stored, and Redis rebuilt for it
    found = await world.billing.reconcile(REDIS_REBUILD, c.principal.customer_id, dry_run=True)
    assert found.consistent, found.findings


async def test_a_refusal_holds_nothing_and_the_others_go_in(world: JobsWorld) -> None:
    """Concurrent singles of two customers share a commit: the one its wallet cannot pay for is
    refused alone, nothing held for it anywhere."""
    rich, poor = await world.customer(funds=1000), await world.customer(funds=15)
    tr, tp = await world.job_type(rich, price=10), await world.job_type(poor, price=10)
    outcomes = await asyncio.gather(*(world.submit(rich, tr) for _ in range(5)),
                                    *(world.submit(poor, tp) for _ in range(3)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 2 and all(isinstance(o, DomainError) and o.reason == "INSUFFICIENT_FUNDS"
                                     for o in refused), refused
    assert await _held(world, rich) == (5, 50, 50)
    assert await _held(world, poor) == (1, 10, 10)
    listed, _ = await world.app.cases.queries.list_jobs(poor.principal, pb.ListJobsRequest(project_id=poor.project_id))
    assert len(listed) == 1
