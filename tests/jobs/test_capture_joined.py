"""Issue 12: where billing runs beside the jobs service on its database, an ending's captures are
stored by the ending's own transaction (services/billing/joined.py, `Leases._end_joined`): one
commit for the attempts' ends and their captures, no outbox row and no billing commit of their
own, each capture exactly as billing's group commit would store it. Whatever billing cannot take
there, or a guard refuses, settles the usual way (the outbox, then BatchCapture). Real parts: the
embedded PostgreSQL and Valkey, billing's service in this process as `innosystem up` runs it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from innosystem.embedded import EmbeddedValkey
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.models import CAPTURE, CAPTURED, COMMISSION_T
from services.billing.service import REDIS_REBUILD
from tests.billing.billing_helpers import ADMIN as BILLING_ADMIN
from tests.billing.billing_helpers import RATES
from tests.jobs.jobs_world import Customer, JobsWorld, make_world

SUCCEEDED = pb.ATTEMPT_OUTCOME_SUCCEEDED


@pytest.fixture(scope="module")
async def world(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey_server.url, joined=True):
        yield w


async def _leased(world: JobsWorld, c: Customer, jt: Any, n: int) -> list[pb.JobLease]:
    for _ in range(n):
        await world.submit(c, jt)
    leases = await world.lease([jt.name], max_jobs=n)
    assert len(leases) == n
    return leases


async def _complete(world: JobsWorld, leases: list[pb.JobLease]) -> list[pb.CompletionResult]:
    """One completion call for all of them (one ending's batch), its billing sent."""
    out = await world.app.cases.leases.complete([pb.JobCompletion(
        job_id=le.job_id, lease_id=le.lease_id, runner_id=le.runner_id, result=pb.AttemptResult(outcome=SUCCEEDED))
        for le in leases])
    await world.app.cases.leases.settle_pending()
    await world.app.cases.leases.flush_settled()
    return out


async def _rows(world: JobsWorld, query: str, **params: Any) -> list[Any]:
    async with world.billing.db.session() as s:
        return list((await s.execute(text(query), params)).all())


async def _holds(world: JobsWorld, leases: list[pb.JobLease]) -> list[tuple[int, int, int]]:
    """(status, captured, released) of the leased jobs' holds, in lease order."""
    rows = {r[0]: tuple(r[1:]) for r in await _rows(
        world, "SELECT hold_id, status, captured, released FROM billing.holds WHERE hold_id = ANY(:ids)",
        ids=[le.job_id for le in leases])}
    return [rows[le.job_id] for le in leases]


async def _captures(world: JobsWorld, c: Customer) -> list[tuple[int, int, int, int]]:
    """(amount, held, balance after, held after) of the wallet's capture transfers, in order."""
    return [tuple(map(int, r)) for r in await _rows(
        world, "SELECT amount, pending_amount, balance_after, held_after FROM billing.transfers "
        "WHERE customer_id = :c AND kind = :k ORDER BY seq", c=uuid.UUID(c.principal.customer_id), k=CAPTURE)]


async def _outboxed(world: JobsWorld, leases: list[pb.JobLease]) -> int:
    return int((await _rows(world, "SELECT count(*) FROM jobs.billing_outbox WHERE hold_id = ANY(:ids)",
                            ids=[le.job_id for le in leases]))[0][0])


async def _consistent(world: JobsWorld, c: Customer) -> None:
    """PostgreSQL's ledger and Open-to-Buy's projection agree."""
    found = await world.billing.reconcile(REDIS_REBUILD, c.principal.customer_id, dry_run=True)
    assert found.consistent, found.findings


async def test_an_ending_and_its_captures_are_one_commit(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    leases = await _leased(world, c, jt, 4)
    batches = world.billing.commit.batches
    done = await _complete(world, leases)
    assert [r.status for r in done] == [types_pb.JOB_STATUS_SUCCEEDED] * 4
    assert world.billing.commit.batches == batches  # billing's group commit captured none of them
    assert await _holds(world, leases) == [(CAPTURED, 10, 0)] * 4
    # as the group commit journals them: the wallet's running figures, capture by capture
    assert await _captures(world, c) == [(10, 10, 990, 30), (10, 10, 980, 20), (10, 10, 970, 10), (10, 10, 960, 0)]
    assert await _outboxed(world, leases) == 0
    assert await world.available(c) == 960
    for le in leases:
        assert (await world.get(le.job_id)).cost_cents == 10
    await _consistent(world, c)
    # a repeat finds the lease gone: refused, nothing captured again
    (again,) = await _complete(world, leases[:1])
    assert again.HasField("error") and len(await _captures(world, c)) == 4


async def test_a_guard_that_does_not_hold_settles_them_the_usual_way(world: JobsWorld) -> None:
    """The wallet's low-balance flag would change (here: set while its balance is high): the
    ending's commit fails on billing's guard, is written again with the outbox, and billing's
    group commit captures each hold once, flipping the flag as it decides."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    leases = await _leased(world, c, jt, 2)
    async with world.billing.db.session() as s:
        await s.execute(text("UPDATE billing.accounts SET low_balance_threshold = 1, low_balance_alerted = true "
                             "WHERE owner_id = :c"), {"c": uuid.UUID(c.principal.customer_id)})
        await s.commit()
    batches = world.billing.commit.batches
    done = await _complete(world, leases)
    assert [r.status for r in done] == [types_pb.JOB_STATUS_SUCCEEDED] * 2
    assert world.billing.commit.batches > batches  # the usual way
    assert await _holds(world, leases) == [(CAPTURED, 10, 0)] * 2
    assert [row[:2] for row in await _captures(world, c)] == [(10, 10), (10, 10)]
    assert await _outboxed(world, leases) == 0 and await world.available(c) == 980
    (alerted,) = await _rows(world, "SELECT low_balance_alerted FROM billing.accounts WHERE owner_id = :c",
                             c=uuid.UUID(c.principal.customer_id))
    assert alerted[0] is False
    await _consistent(world, c)


async def test_holds_billing_did_not_reserve_here_settle_the_usual_way(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    leases = await _leased(world, c, jt, 2)
    world.billing._hold_meta.clear()  # as after a restart, or holds another replica reserved
    batches = world.billing.commit.batches
    await _complete(world, leases)
    assert world.billing.commit.batches > batches
    assert await _holds(world, leases) == [(CAPTURED, 10, 0)] * 2 and await world.available(c) == 980
    await _consistent(world, c)


async def test_several_customers_captures_settle_the_usual_way(world: JobsWorld) -> None:
    a, b = await world.customer(funds=1000), await world.customer(funds=1000)
    jt = await world.job_type(a, price=10)  # a catalog type: both submit it
    await world.submit(a, jt)
    await world.submit(b, jt)
    leases = await world.lease([jt.name])
    assert len(leases) == 2
    batches = world.billing.commit.batches
    await _complete(world, leases)
    assert world.billing.commit.batches > batches
    assert await _holds(world, leases) == [(CAPTURED, 10, 0)] * 2
    assert await world.available(a) == 990 and await world.available(b) == 990


async def test_an_ending_rolled_back_takes_its_captures_with_it(world: JobsWorld) -> None:
    """A job written since its lease (here directly, as another replica's write) fails the ending's
    statement after billing's captures were queued before it: the whole commit is undone, the
    batch is decided again from the jobs read under lock, and each hold is captured once."""
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    leases = await _leased(world, c, jt, 2)
    async with world.billing.db.session() as s:
        await s.execute(text("UPDATE jobs.jobs SET update_time = now() WHERE id = :id"),
                        {"id": uuid.UUID(leases[1].job_id)})
        await s.commit()
    batches = world.billing.commit.batches
    done = await _complete(world, leases)
    assert [r.status for r in done] == [types_pb.JOB_STATUS_SUCCEEDED] * 2
    assert world.billing.commit.batches > batches  # after the locked read, the usual way
    assert await _holds(world, leases) == [(CAPTURED, 10, 0)] * 2
    assert [row[:2] for row in await _captures(world, c)] == [(10, 10), (10, 10)]
    assert await world.available(c) == 980
    await _consistent(world, c)


async def _resold(world: JobsWorld, reseller: uuid.UUID) -> Customer:
    """A customer of `reseller` (its wallet and its projects' jobs name it), with 1,000 cents."""
    cid = str(uuid.uuid4())
    await world.billing.open_wallet(cid, str(reseller), "USD", 0)
    await world.billing.top_up(BILLING_ADMIN, cid, 1000, "", f"fund-{cid}", "")
    world.tenancy.customers[cid] = str(reseller)
    pid = str(uuid.uuid4())
    world.tenancy.projects[pid] = cid
    return Customer(Principal(kind=principals.CUSTOMER, customer_id=cid, key_id=f"k-{cid[:8]}"), pid)


async def _ledger(world: JobsWorld, c: Customer) -> tuple[list[Any], list[Any]]:
    """The customer's holds (status, captured, released, commission, rate) and journal rows (kind,
    amount, held, balance after, held after, reseller, rate, description without the hold id), in a
    canonical order: what must not depend on the way a capture was stored."""
    cid = uuid.UUID(c.principal.customer_id)
    holds = await _rows(world, "SELECT status, captured, released, commission, commission_rate_bps "
                               "FROM billing.holds WHERE customer_id = :c ORDER BY create_time, hold_id", c=cid)
    journal = await _rows(world, "SELECT kind, amount, pending_amount, balance_after, held_after, reseller_id, "
                                 "commission_rate_bps, replace(description, hold_id, '') FROM billing.transfers "
                                 "WHERE customer_id = :c ORDER BY kind, seq", c=cid)
    return [tuple(r) for r in holds], [tuple(r) for r in journal]


async def test_a_resellers_commission_as_the_group_commit_decides_it(world: JobsWorld) -> None:
    """The same jobs of two customers of one reseller (15% commission), one customer's captures
    stored with their ending, the other's by billing's group commit: the same holds, the same
    journal (capture and commission rows, running figures), the same commission credited."""
    reseller = uuid.uuid4()
    RATES[reseller] = 1500
    joined, usual = await _resold(world, reseller), await _resold(world, reseller)
    jt = await world.job_type(joined, price=10)
    batches = world.billing.commit.batches
    await _complete(world, await _leased(world, joined, jt, 3))
    assert world.billing.commit.batches == batches
    leases = await _leased(world, usual, jt, 3)
    world.billing._hold_meta.clear()  # the usual way for these
    await _complete(world, leases)
    assert world.billing.commit.batches > batches
    holds, journal = await _ledger(world, joined)
    assert (holds, journal) == await _ledger(world, usual)
    assert holds == [(CAPTURED, 10, 0, 1, 1500)] * 3
    settled = [row[:2] for row in journal if row[0] in (CAPTURE, COMMISSION_T)]
    assert settled == [(CAPTURE, 10)] * 3 + [(COMMISSION_T, 1)] * 3
    (credited,) = await _rows(world, "SELECT credits_posted FROM billing.accounts WHERE owner_id = :r",
                              r=reseller)
    assert credited[0] == 6  # 1 cent of each of the six captures
    await _consistent(world, joined)


async def test_a_billing_lookup_that_fails_never_fails_the_ending(world: JobsWorld) -> None:
    """Billing cannot decide the captures (here: a reseller's commission rate it cannot get): the
    ending commits with its outbox rows as it would without billing beside it, answers the runner,
    and the captures follow once billing can decide them."""
    from services.jobs.leases import settle_outbox_once

    reseller = uuid.uuid4()  # no rate known yet: the rate lookup raises
    c = await _resold(world, reseller)
    jt = await world.job_type(c, price=10)
    leases = await _leased(world, c, jt, 2)
    done = await _complete(world, leases)
    assert [r.status for r in done] == [types_pb.JOB_STATUS_SUCCEEDED] * 2
    assert await _outboxed(world, leases) == 2 and await _holds(world, leases) == [(1, 0, 0)] * 2  # still held
    RATES[reseller] = 0
    assert await settle_outbox_once(world.app.deps, grace_seconds=0) == 2
    assert await _holds(world, leases) == [(CAPTURED, 10, 0)] * 2 and await _outboxed(world, leases) == 0
    assert await world.available(c) == 980
