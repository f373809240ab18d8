"""Ledger and Open-to-Buy use cases against the real embedded PostgreSQL and Valkey."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from sqlalchemy import event

from innosystem.kit import principal as principals
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.ledger import commission_of
from services.billing.models import ACTIVE, CAPTURED, EXPIRED, VOIDED, HoldRow
from services.billing.otb import OpenToBuy, keys
from services.billing.repository import BillingRepository
from services.billing.service import CAP_AT_HOLD, ON_DEMAND, BillingService
from tests.billing.billing_helpers import ADMIN, flush_billing, funded_wallet, rates, wallet


async def _reason(coro: object, cls: type[Exception] = FailedPrecondition) -> str:
    with pytest.raises(cls) as info:
        await coro  # type: ignore[misc]
    return str(getattr(info.value, "reason", ""))


async def test_reserve_capture_release_move_the_four_counters(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 10_000)
    hold = await billing.reserve("job-1", customer, 3000, "USD", job_id="job-1")
    w = await wallet(billing, customer)
    assert (w.balance, w.held, w.balance - w.held) == (10_000, 3000, 7000)
    captured = await billing.capture("job-1", 2500)
    assert (captured.status, captured.captured, captured.released) == (CAPTURED, 2500, 500)
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (7500, 0)
    await billing.reserve("job-2", customer, 1000, "USD")
    released = await billing.release("job-2", "cancelled")
    assert (released.status, released.released) == (VOIDED, 1000)
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (7500, 0)
    assert hold.status == ACTIVE
    page = await billing.list_transactions(ADMIN, customer, 50, "", "", 0, None, None)
    assert [t.kind for t in page.items] == [4, 2, 3, 2, 1]  # newest first: void, hold, capture, hold, top-up
    assert page.items[2].job_id == "job-1" and page.items[2].balance_after == 7500


async def test_every_operation_is_idempotent_on_its_id(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 5000)
    first = await billing.reserve("h-idem", customer, 1000, "USD")
    again = await billing.reserve("h-idem", customer, 1000, "USD")
    assert again.hold_id == first.hold_id and (await wallet(billing, customer)).held == 1000
    assert await _reason(billing.reserve("h-idem", customer, 999, "USD")) == "IDEMPOTENCY_KEY_REUSED"
    await billing.capture("h-idem", 700)
    assert (await billing.capture("h-idem", 700)).captured == 700
    assert await _reason(billing.capture("h-idem", 600)) == "HOLD_ALREADY_CAPTURED"
    # A reserve repeated after its capture still returns the first answer, touching nothing.
    assert (await billing.reserve("h-idem", customer, 1000, "USD")).status == CAPTURED
    assert await _reason(billing.release("h-idem")) == "HOLD_ALREADY_CAPTURED"
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (4300, 0)
    _, t1 = await billing.top_up(ADMIN, customer, 100, "", "req-1", "")
    _, t2 = await billing.top_up(ADMIN, customer, 100, "", "req-1", "")
    assert t1.id == t2.id and (await wallet(billing, customer)).balance == 4400
    assert await _reason(billing.top_up(ADMIN, customer, 101, "", "req-1", "")) == "IDEMPOTENCY_KEY_REUSED"


async def test_bad_input_is_refused_with_a_reason_and_changes_nothing(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 1000)
    for amount in (0, -5, 10**15):
        assert await _reason(billing.reserve(f"bad-{amount}", customer, amount, "USD"),
                             InvalidArgument) == "INVALID_AMOUNT"
    assert await _reason(billing.reserve("eur", customer, 10, "EUR")) == "CURRENCY_MISMATCH"
    assert await _reason(billing.reserve("x", str(uuid.uuid4()), 10, "USD"), NotFound) == "WALLET_NOT_FOUND"
    assert await _reason(billing.reserve("big", customer, 1001, "USD")) == "INSUFFICIENT_FUNDS"
    assert await _reason(billing.capture("nope", 1), NotFound) == "HOLD_NOT_FOUND"
    await billing.reserve("over", customer, 500, "USD")
    assert await _reason(billing.capture("over", 501)) == "CAPTURE_EXCEEDS_HOLD"
    # a public call naming a wallet the customer does not have: 404, still saying why
    assert await _reason(billing.top_up(ADMIN, customer, 5, "EUR", "r", ""), NotFound) == "CURRENCY_MISMATCH"
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (1000, 500)
    assert (await billing.capture("over", 900, policy=CAP_AT_HOLD)).captured == 500
    assert (await wallet(billing, customer)).balance == 500


async def test_visibility_and_who_may_top_up(billing: BillingService) -> None:
    customer, reseller = await funded_wallet(billing, 0, reseller_rate=1000)
    me = Principal(kind=principals.CUSTOMER, customer_id=customer)
    other = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()))
    my_reseller = Principal(kind=principals.RESELLER, reseller_id=reseller)
    other_reseller = Principal(kind=principals.RESELLER, reseller_id=str(uuid.uuid4()))
    assert (await billing.get_wallet(me, customer)).balance == 0
    assert await _reason(billing.get_wallet(other, customer), NotFound) == "WALLET_NOT_FOUND"
    assert await _reason(billing.get_wallet(other_reseller, customer), NotFound) == "WALLET_NOT_FOUND"
    assert await _reason(billing.top_up(me, customer, 5, "", "m", ""), PermissionDenied) == "TOP_UP_NOT_ALLOWED"
    assert await _reason(billing.top_up(other_reseller, customer, 5, "", "o", ""), NotFound) == "WALLET_NOT_FOUND"
    acc, _ = await billing.top_up(my_reseller, customer, 5, "", "r", "")
    assert acc.balance == 5
    assert await _reason(billing.commission_statement(other_reseller, reseller, None, None, ""),
                         NotFound) == "RESELLER_NOT_FOUND"


async def test_commission_is_posted_with_the_capture(billing: BillingService) -> None:
    customer, reseller = await funded_wallet(billing, 10_000, reseller_rate=1250)
    await billing.reserve("c-1", customer, 3000, "USD")
    hold = await billing.capture("c-1", 2555)
    assert (hold.commission, hold.commission_rate_bps) == (319, 1250)  # floor(2555 * 0.125)
    rp = Principal(kind=principals.RESELLER, reseller_id=reseller)
    statement = await billing.commission_statement(rp, reseller, None, None, "")
    assert (statement.captured, statement.commission, statement.balance) == (2555, 319, 319)
    assert [(x.captures, x.captured) for x in statement.lines] == [(1, 2555)]


async def test_journal_is_append_only(billing: BillingService, database_url: str) -> None:
    await funded_wallet(billing, 10)
    with psycopg.connect(database_url) as conn:
        for sql in ("UPDATE billing.transfers SET amount = amount + 1", "DELETE FROM billing.transfers"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
            conn.rollback()
        # A hold resolves at most once, whatever the application does.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO billing.transfers (id, kind, debit_account_id, credit_account_id, amount, "
                         "pending_amount, currency, balance_after, held_after, hold_id, job_id, description, "
                         "commission_rate_bps, create_time) SELECT gen_random_uuid(), 4, debit_account_id, "
                         "credit_account_id, 1, 0, currency, 0, 0, hold_id, '', '', 0, now() FROM billing.transfers "
                         "WHERE kind IN (3, 4, 5) LIMIT 1")


async def test_fifty_concurrent_reserves_get_exactly_what_the_wallet_affords(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 7 * 300 + 299)
    results = await asyncio.gather(*(billing.reserve(f"conc-{customer}-{i}", customer, 300, "USD")
                                     for i in range(50)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(ok) == 7 and len(refused) == 43
    assert all(r.reason == "INSUFFICIENT_FUNDS" for r in refused)
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (2399, 2100)
    assert (await billing.reconcile(ON_DEMAND, customer)).consistent


async def test_redis_flushed_between_operations_loses_nothing(billing: BillingService,
                                                              redis_client: aioredis.Redis) -> None:
    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("fl-1", customer, 600, "USD")
    await flush_billing(redis_client)
    # The rebuilt projection still counts the hold: 400 available, not 1000.
    assert await _reason(billing.reserve("fl-2", customer, 401, "USD")) == "INSUFFICIENT_FUNDS"
    await billing.reserve("fl-3", customer, 400, "USD")
    await flush_billing(redis_client)
    await billing.capture("fl-1", 600)
    await billing.release("fl-3")
    await flush_billing(redis_client)
    await billing.reserve("fl-4", customer, 400, "USD")
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (400, 400)
    assert (await billing.reconcile(ON_DEMAND)).consistent


async def test_holds_expire_at_their_deadline(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("ex-1", customer, 700, "USD", expire_time=utcnow() + timedelta(seconds=30))
    assert await billing.expire_due(utcnow()) == 0
    assert await billing.expire_due(utcnow() + timedelta(seconds=31)) >= 1
    assert await _reason(billing.capture("ex-1", 10)) == "HOLD_EXPIRED"
    hold = await billing.release("ex-1")
    assert hold.status == EXPIRED
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (1000, 0)
    await billing.reserve("ex-2", customer, 1000, "USD")


async def test_sweeper_wakes_for_a_nearer_hold(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 100)
    sweeper = asyncio.create_task(billing.sweep_forever())
    try:
        await asyncio.sleep(0.2)
        await billing.reserve("sw-1", customer, 100, "USD", expire_time=utcnow() + timedelta(milliseconds=300))
        for _ in range(100):
            if (await wallet(billing, customer)).held == 0:
                break
            await asyncio.sleep(0.05)
        assert (await billing.release("sw-1")).status == EXPIRED
    finally:
        sweeper.cancel()


async def test_reconciliation_finds_and_repairs_drift(billing: BillingService, redis_client: aioredis.Redis) -> None:
    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("rc-1", customer, 100, "USD")
    wkey, hkey = keys(uuid.UUID(customer), "USD")
    await redis_client.hset(hkey, "ghost", 50)  # a leaked hold
    await redis_client.hincrby(wkey, "held", 50)
    await redis_client.hdel(hkey, "rc-1")  # a missing one
    dry = await billing.reconcile(ON_DEMAND, customer, dry_run=True)
    kinds = sorted(f["kind"] for f in dry.findings)
    assert not dry.consistent and 1 in kinds and 2 in kinds
    fixed = await billing.reconcile(ON_DEMAND, customer)
    assert all(f["repair"] == 2 for f in fixed.findings)
    again = await billing.reconcile(ON_DEMAND)
    assert again.consistent and again.transfers_checked > 0
    page = await billing.list_reconciliations(ADMIN, 2, "", True)
    assert page.items[0].id == fixed.id


async def test_one_batch_mixing_repeats_captures_and_refusals_stays_exact(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("mix-0", customer, 100, "USD")
    calls = [
        billing.reserve("mix-1", customer, 300, "USD"),
        billing.reserve("mix-1", customer, 300, "USD"),   # repeat, possibly in the same batch
        billing.reserve("mix-1", customer, 301, "USD"),   # reuse with another amount
        billing.capture("mix-0", 80),
        billing.capture("mix-0", 80),                     # repeat
        billing.reserve("mix-2", customer, 700, "USD"),   # at most 1000 - 80 - 300 = 620 available in any order
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    reasons = [getattr(r, "reason", "ok") for r in results]
    # Whichever body of mix-1 arrives first wins; the other is a reused key, never a second hold.
    reused = "IDEMPOTENCY_KEY_REUSED"
    assert reasons[:3] in (["ok", "ok", reused], [reused, reused, "ok"])
    winner = 300 if reasons[0] == "ok" else 301
    assert reasons[3:5] == ["ok", "ok"]
    assert reasons[5] == "INSUFFICIENT_FUNDS"
    # Sequenced after the batch (a release racing the capture could legitimately win instead).
    assert await _reason(billing.release("mix-0")) == "HOLD_ALREADY_CAPTURED"
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (920, winner)
    assert (await billing.reconcile(ON_DEMAND, customer)).consistent


async def test_redis_down_falls_back_to_postgres_and_still_refuses_overdraft(database_url: str) -> None:
    from innosystem.kit.config import to_async_url
    from innosystem.kit.db import Database
    from innosystem.kit.redis import connect
    from services.billing.otb import OpenToBuy
    from tests.billing.billing_helpers import rates

    db = Database(to_async_url(database_url), pool_size=2)
    dead = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    billing = BillingService(db, OpenToBuy(dead), rates)
    try:
        customer, _ = await funded_wallet(billing, 500)
        await billing.reserve("down-1", customer, 300, "USD")
        assert await _reason(billing.reserve("down-2", customer, 201, "USD")) == "INSUFFICIENT_FUNDS"
        assert (await billing.capture("down-1", 250)).captured == 250
        w = await wallet(billing, customer)
        assert (w.balance, w.held) == (250, 0)
    finally:
        await billing.close()
        await dead.aclose()
        await db.close()


async def test_group_commit_runs_a_deadlocked_batch_again(billing: BillingService) -> None:
    from sqlalchemy.exc import DBAPIError

    from services.billing.batcher import Tx

    attempts = []

    async def op(tx: Tx) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise DBAPIError("UPDATE …", None, psycopg.errors.DeadlockDetected("deadlock detected"))
        return "done"

    assert await billing.commit.run(op) == "done"
    assert len(attempts) == 2


async def test_redis_behind_postgres_is_rebuilt_on_the_next_reserve(billing: BillingService,
                                                                    redis_client: aioredis.Redis) -> None:
    customer, _ = await funded_wallet(billing, 100)
    await billing.reserve("behind-0", customer, 10, "USD")
    await billing.top_up(ADMIN, customer, 900, "", "late", "")
    wkey, _ = keys(uuid.UUID(customer), "USD")
    await redis_client.hincrby(wkey, "balance", -900)  # the top-up's Redis update was lost after its commit
    await billing.reserve("behind-1", customer, 950, "USD")
    assert (await wallet(billing, customer)).held == 960
    await billing.settle()  # the background second look found the drift and rebuilt the wallet
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert (snap.balance, snap.held) == (1000, 960)
    assert await _reason(billing.reserve("behind-2", customer, 41, "USD")) == "INSUFFICIENT_FUNDS"


async def test_over_capture_policies_and_credit_limit(billing: BillingService) -> None:
    from services.billing.service import CHARGE_AVAILABLE

    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("oc-1", customer, 100, "USD")
    assert (await billing.capture("oc-1", 150, policy=CHARGE_AVAILABLE)).captured == 150
    await billing.reserve("oc-2", customer, 100, "USD")
    # 850 left: the hold's 100 plus 750 available cover a capture of 850, not 851.
    assert await _reason(billing.capture("oc-2", 851, policy=CHARGE_AVAILABLE)) == "INSUFFICIENT_FUNDS"
    assert (await billing.capture("oc-2", 850, policy=CHARGE_AVAILABLE)).captured == 850
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (0, 0)
    # A credit limit lets holds go below zero, up to the limit and no further.
    customer_id = customer
    changed = await billing.update_wallet(ADMIN, customer_id, "", 300)
    assert changed.credit_limit == 300
    await billing.reserve("oc-3", customer, 300, "USD")
    assert await _reason(billing.reserve("oc-4", customer, 1, "USD")) == "INSUFFICIENT_FUNDS"
    assert await _reason(billing.update_wallet(ADMIN, customer_id, "", 299)) == "CREDIT_LIMIT_TOO_LOW"
    customer_view = Principal(kind=principals.CUSTOMER, customer_id=customer_id)
    assert await _reason(billing.update_wallet(customer_view, customer_id, "", 10**6),
                         PermissionDenied) == "ADMIN_ONLY"
    assert (await billing.reconcile(ON_DEMAND, customer)).consistent


async def test_a_burst_on_a_cold_wallet_looks_it_up_once(billing: BillingService, database_url: str,
                                                        redis_client: aioredis.Redis) -> None:
    """A fresh replica (nothing cached) taking a batch of 300 reserves for a wallet Redis has lost:
    one lookup of the wallet and one load into Redis serve them all, not one each."""
    customer, _ = await funded_wallet(billing, 300 * 5)
    await flush_billing(redis_client)
    db = Database(to_async_url(database_url), pool_size=5)
    cold = BillingService(db, OpenToBuy(redis_client), rates)
    wallet_reads: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        # whole account rows: the wallet's identity, the revenue account, the load into Redis (the
        # group commit's own reads of the counters are per batch and not counted)
        if statement.lstrip().upper().startswith("SELECT") and "billing.accounts.owner_id" in statement:
            wallet_reads.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        held = await asyncio.gather(*(cold.reserve(f"cold-{customer}-{i}", customer, 5, "USD") for i in range(300)))
        assert len(held) == 300
        assert len(wallet_reads) <= 3, wallet_reads  # was 300+ (each reserve looked the wallet up)
        w = await wallet(billing, customer)
        assert (w.balance, w.held) == (1500, 1500)
        assert (await cold.reconcile(ON_DEMAND, customer)).consistent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        await cold.close()
        await db.close()


async def test_a_replica_captures_holds_another_reserved_with_one_lookup(billing: BillingService, database_url: str,
                                                                      redis_client: aioredis.Redis) -> None:
    """Holds reserved by one replica and captured by another (at light load the jobs service's
    billing beside it reserves, under load billing's own process captures): what the captures need
    first (the hold's reseller and currency) is read for the whole batch in one statement, not one
    session per hold, and each capture still posts its reseller's commission; a hold that does not
    exist, or an id no hold can have (a NUL character), is refused alone."""
    customer, reseller = await funded_wallet(billing, 10_000, reseller_rate=1_500)
    for n in range(6):
        await billing.reserve(f"rc-{customer}-{n}", customer, 100, "USD")
    db = Database(to_async_url(database_url), pool_size=5)
    other = BillingService(db, OpenToBuy(redis_client), rates)
    sessions: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "billing.holds" in statement:  # a hold read through an ORM session
            sessions.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        out = await other.capture_many([(f"rc-{customer}-{n}", 80, "", 0, "") for n in range(6)]
                                       + [(f"rc-{customer}-missing", 5, "", 0, ""), ("rc-\x00", 5, "", 0, "")])
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        await other.close()
        await db.close()
    assert sessions == []
    assert [getattr(h, "captured", None) for h in out[:6]] == [80] * 6
    assert [getattr(h, "commission", None) for h in out[:6]] == [commission_of(80, 1_500)] * 6
    assert [(type(e), getattr(e, "reason", "")) for e in out[6:]] == [(NotFound, "HOLD_NOT_FOUND")] * 2
    statement = await billing.commission_statement(ADMIN, reseller, None, None, "USD")
    assert statement.commission == 6 * commission_of(80, 1_500)
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (10_000 - 480, 0)


async def test_concurrent_captures_of_one_wallet_resolve_in_redis_together(billing: BillingService) -> None:
    """A group commit's captures resolve their holds in Open-to-Buy in one script call per wallet,
    and the projection stays exactly what the ledger says."""
    customer, _ = await funded_wallet(billing, 10_000)
    for n in range(40):
        await billing.reserve(f"batch-{customer}-{n}", customer, 100, "USD")
    calls = 0
    script = billing.otb.scripts.resolve

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await script(*args, **kwargs)

    billing.otb.scripts.resolve = counted  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(billing.capture(f"batch-{customer}-{n}", 60) for n in range(40)))
    finally:
        billing.otb.scripts.resolve = script  # type: ignore[method-assign]
    assert calls < 10  # one per group commit, not one per hold
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (10_000 - 40 * 60, 0)
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert snap.loaded and (snap.balance, snap.held, snap.holds) == (10_000 - 40 * 60, 0, {})


async def test_a_batch_capture_decides_each_item_and_submits_them_together(billing: BillingService) -> None:
    """BatchCapture: the good captures commit, each bad item gets its own refusal (unknown hold,
    over the hold, text that cannot be stored), a repeat answers as the first; the items go to the
    group commit together, and Open-to-Buy ends exactly where the ledger is."""
    from innosystem.billing.v1 import billing_pb2 as bpb
    from services.billing.api import BillingApi

    customer, _ = await funded_wallet(billing, 10_000)
    for n in range(5):
        await billing.reserve(f"bc-{customer}-{n}", customer, 100, "USD")
    batches = billing.commit.batches
    request = bpb.BatchCaptureRequest(requests=[
        bpb.CaptureRequest(hold_id=f"bc-{customer}-0", amount_cents=60),
        bpb.CaptureRequest(hold_id=f"bc-{customer}-1", amount_cents=100),
        bpb.CaptureRequest(hold_id=f"bc-{customer}-missing", amount_cents=5),
        bpb.CaptureRequest(hold_id=f"bc-{customer}-2", amount_cents=500),  # over the hold
        bpb.CaptureRequest(hold_id=f"bc-{customer}-3", amount_cents=10, description="a\u0000b"),
        bpb.CaptureRequest(hold_id=f"bc-{customer}-0", amount_cents=60),  # a repeat in the same batch
    ])
    answer = await BillingApi(billing).BatchCapture(request, None)  # type: ignore[arg-type]
    reasons = [r.error.details[0].value if r.HasField("error") else None for r in answer.results]
    assert [r.HasField("error") for r in answer.results] == [False, False, True, True, True, False]
    assert b"HOLD_NOT_FOUND" in reasons[2] and b"CAPTURE_EXCEEDS_HOLD" in reasons[3]  # type: ignore[operator]
    assert b"INVALID_CHARACTER" in reasons[4]  # type: ignore[operator]
    assert [r.hold.captured_cents for r in answer.results if not r.HasField("error")] == [60, 100, 60]
    assert billing.commit.batches - batches <= 2  # together, not one group commit per item
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (10_000 - 160, 300)
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert (snap.balance, snap.held) == (10_000 - 160, 300)


async def test_a_batch_answers_in_the_view_it_asks_for(billing: BillingService) -> None:
    """HOLD_VIEW_BASIC (what the jobs service asks for): each hold's id, status and amounts, none of
    the rest; an error is the same either way; without a view, the whole hold."""
    from innosystem.billing.v1 import billing_pb2 as bpb
    from services.billing.api import BillingApi

    customer, _ = await funded_wallet(billing, 1_000)
    api = BillingApi(billing)
    reserve = bpb.BatchReserveRequest(view=bpb.HOLD_VIEW_BASIC, requests=[
        bpb.ReserveRequest(hold_id=f"view-{customer}", customer_id=customer, amount_cents=300, currency_code="USD",
                           job_id=f"job-{customer}"),
        bpb.ReserveRequest(hold_id=f"view-{customer}-big", customer_id=customer, amount_cents=5_000,
                           currency_code="USD")])
    basic, refused = (await api.BatchReserve(reserve, None)).results  # type: ignore[arg-type]
    assert basic.hold == bpb.Hold(hold_id=f"view-{customer}", amount_cents=300, status=bpb.HOLD_STATUS_ACTIVE)
    assert b"INSUFFICIENT_FUNDS" in refused.error.details[0].value
    capture = bpb.BatchCaptureRequest(view=bpb.HOLD_VIEW_BASIC, requests=[
        bpb.CaptureRequest(hold_id=f"view-{customer}", amount_cents=200)])
    (captured,) = (await api.BatchCapture(capture, None)).results  # type: ignore[arg-type]
    assert captured.hold == bpb.Hold(hold_id=f"view-{customer}", amount_cents=300, status=bpb.HOLD_STATUS_CAPTURED,
                                     captured_cents=200, released_cents=100)
    capture.ClearField("view")  # unspecified: the full hold
    (full,) = (await api.BatchCapture(capture, None)).results  # type: ignore[arg-type]
    assert (full.hold.customer_id, full.hold.job_id, full.hold.currency_code) == (customer, f"job-{customer}", "USD")
    assert full.hold.create_time.seconds > 0 and full.hold.resolve_time.seconds > 0


async def test_holds_are_extended_only_later_and_only_while_active(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 1_000)
    now = utcnow()
    first = await billing.reserve(f"ext-{customer}-1", customer, 100, "USD", expire_time=now + timedelta(days=1))
    await billing.reserve(f"ext-{customer}-2", customer, 100, "USD", expire_time=now + timedelta(days=1))
    await billing.capture(f"ext-{customer}-2", 100)
    later, earlier = now + timedelta(days=8), now + timedelta(hours=1)
    results = await billing.extend_holds([(f"ext-{customer}-1", later), (f"ext-{customer}-2", later),
                                          (f"ext-{customer}-none", later), ("", later),
                                          (f"ext-{customer}-1", now - timedelta(seconds=1))])
    assert isinstance(results[0], HoldRow) and results[0].expire_time == later
    assert [getattr(r, "reason", None) for r in results[1:]] == [
        "HOLD_NOT_ACTIVE", "HOLD_NOT_FOUND", "MISSING_FIELD", "INVALID_EXPIRE_TIME"]
    (again,) = await billing.extend_holds([(f"ext-{customer}-1", earlier)])  # never earlier
    assert isinstance(again, HoldRow) and again.expire_time == later and first.expire_time < later
    await billing.expire_due(now + timedelta(days=2))  # past the old deadline …
    async with billing.db.session() as s:
        assert (await BillingRepository(s).hold(f"ext-{customer}-1")).status == ACTIVE  # … still held


async def test_a_batch_of_reserves_is_answered_item_by_item(billing: BillingService,
                                                              redis_client: aioredis.Redis) -> None:
    """Issue 13: one batch call's holds share one Open-to-Buy script call per wallet and one group
    commit, yet each is decided on its own: the wallet running out refuses only the items it cannot
    afford (a smaller one after them still fits), a bad item fails alone, a repeat answers as a repeat."""
    from services.billing.service import ReserveRequest

    customer, _ = await funded_wallet(billing, 1000)
    other, _ = await funded_wallet(billing, 51)
    await billing.reserve("many-0", customer, 100, "USD")
    await billing.reserve("many-pre", other, 1, "USD")  # both wallets are loaded in Redis
    calls = 0
    original = billing.otb.reserve_many

    async def counting(*args: Any) -> list[int]:
        nonlocal calls
        calls += 1
        return await original(*args)

    billing.otb.reserve_many = counting  # type: ignore[method-assign]
    try:
        out = await billing.reserve_many([
            ReserveRequest("many-0", customer, 100, "USD"),      # a repeat of a stored hold
            ReserveRequest("many-1", customer, 600, "USD"),
            ReserveRequest("many-2", customer, 400, "USD"),      # 300 left: refused
            ReserveRequest("many-3", customer, 0, "USD"),        # bad amount: refused alone
            ReserveRequest("many-4", customer, 300, "USD"),      # still fits
            ReserveRequest("many-5", other, 60, "USD"),          # another wallet, refused
            ReserveRequest("many-6", other, 50, "USD"),
            ReserveRequest("many-0", customer, 99, "USD"),       # the same id for another reserve
        ])
    finally:
        billing.otb.reserve_many = original  # type: ignore[method-assign]
    kinds = [o.reason if isinstance(o, Exception) else o.hold_id for o in out]  # type: ignore[union-attr]
    assert kinds == ["many-0", "many-1", "INSUFFICIENT_FUNDS", "INVALID_AMOUNT", "many-4", "INSUFFICIENT_FUNDS",
                     "many-6", "IDEMPOTENCY_KEY_REUSED"]
    assert calls == 2  # one script call per wallet
    assert ((await wallet(billing, customer)).held, (await wallet(billing, other)).held) == (1000, 51)
    for cid in (customer, other):  # Redis agrees with PostgreSQL, and holds nothing the ledger refused
        snap = await billing.otb.snapshot(uuid.UUID(cid), "USD")
        assert snap.held == (await wallet(billing, cid)).held
        assert not {"many-2", "many-3", "many-5"} & set(snap.holds)


async def test_active_holds_are_listed_by_creation_in_keyset_pages(billing: BillingService) -> None:
    """The jobs service's sweep for holds whose submit died: active holds created in a window,
    oldest first, a page at a time; settled holds are not listed; a bad token or window is refused."""
    start = utcnow()
    customer, _ = await funded_wallet(billing, 10_000)
    ids = [f"sweep-{uuid.uuid4().hex[:8]}-{k}" for k in range(5)]
    for hold_id in ids:
        await billing.reserve(hold_id, customer, 10, "USD", job_id=hold_id)
    await billing.capture(ids[1], 10)
    await billing.release(ids[3], "cancelled")
    before = utcnow() + timedelta(seconds=1)
    seen, token = [], ""
    while True:
        rows, token = await billing.active_holds_created(start, before, token, 1)
        assert len(rows) <= 1
        seen += rows
        if not token:
            break
    assert [r[0] for r in seen] == [ids[0], ids[2], ids[4]]
    assert [r[2] for r in seen] == sorted(r[2] for r in seen) and seen[0][1] == ids[0]
    assert (await billing.active_holds_created(start, start, "", 0))[0] == []
    with pytest.raises(InvalidArgument) as bad:
        await billing.active_holds_created(start, before, "not-a-token", 10)
    assert bad.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as missing:
        await billing.active_holds_created(start, None, "", 10)
    assert missing.value.violations[0][0] == "create_time_before"


async def test_open_to_buy_decides_while_the_batch_holds_the_wallet(billing: BillingService, database_url: str) -> None:
    """The reserve's Open-to-Buy script and its batch's lock overlap: while the script runs, the
    batch has begun and holds the wallet's row (another connection cannot lock it), and the hold
    is then stored and held in both places as before."""
    from services.billing.batcher import QUIET_SECONDS
    from services.billing.service import ReserveRequest

    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("overlap-warm", customer, 1, "USD")  # the wallet is loaded in Redis
    wallet_id = (await wallet(billing, customer)).id
    await asyncio.sleep(QUIET_SECONDS * 2)  # light load: no batch for a moment
    assert billing.commit.idle
    locked_meanwhile: list[bool] = []
    original = billing.otb.reserve_many

    async def watching(*args: Any) -> list[int]:
        async def try_lock() -> bool:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                for _ in range(100):  # until the batch has taken the row, or clearly never will
                    try:
                        await conn.execute("SELECT 1 FROM billing.accounts WHERE id = %s FOR UPDATE NOWAIT",
                                           (wallet_id,))
                    except psycopg.errors.LockNotAvailable:
                        return True
                    await conn.rollback()
                    await asyncio.sleep(0.001)
            return False

        locked_meanwhile.append(await try_lock())
        return await original(*args)

    billing.otb.reserve_many = watching  # type: ignore[method-assign]
    try:
        (hold,) = await billing.reserve_many([ReserveRequest("overlap-1", customer, 100, "USD")])
    finally:
        billing.otb.reserve_many = original  # type: ignore[method-assign]
    assert locked_meanwhile == [True]
    assert getattr(hold, "hold_id", None) == "overlap-1"
    assert (await wallet(billing, customer)).held == 101
    assert (await billing.otb.snapshot(uuid.UUID(customer), "USD")).holds.get("overlap-1") == 100


async def test_a_slow_open_to_buy_holds_up_neither_the_batch_nor_the_reserve(billing: BillingService) -> None:
    """A check that outlasts the batch's wait (ledger.AUTHORIZE_WAIT_SECONDS, 0.1 s) is left out of
    that batch: a capture in it commits without waiting for Redis, and the reserve is stored in a
    batch of its own once its check is done; Redis and PostgreSQL agree after."""
    from services.billing.batcher import QUIET_SECONDS
    from services.billing.service import ReserveRequest

    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("slow-captured", customer, 100, "USD")
    await asyncio.sleep(QUIET_SECONDS * 2)  # light load: the reserve's batch begins at once
    original = billing.otb.reserve_many
    checking, release = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any) -> list[int]:
        checking.set()
        await release.wait()
        return await original(*args)

    billing.otb.reserve_many = slow  # type: ignore[method-assign]
    try:
        reserving = asyncio.create_task(billing.reserve_many([ReserveRequest("slow-1", customer, 200, "USD")]))
        await checking.wait()
        capturing = asyncio.create_task(billing.capture("slow-captured", 80))  # joins the waiting batch
        captured = await asyncio.wait_for(capturing, 5)
        assert captured.status == CAPTURED and not reserving.done()  # the batch did not wait for Redis
        release.set()
        (hold,) = await reserving
    finally:
        billing.otb.reserve_many = original  # type: ignore[method-assign]
        release.set()
    assert getattr(hold, "hold_id", None) == "slow-1" and getattr(hold, "status", None) == ACTIVE
    w = await wallet(billing, customer)
    assert (w.held, w.balance) == (200, 920)
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert (snap.held, set(snap.holds)) == (200, {"slow-1"})


async def test_under_load_open_to_buy_decides_before_the_next_batch(billing: BillingService) -> None:
    """While a batch is under way (or one has just ended) the checks run meanwhile and their
    reserves join the next batch already decided (the overlap with a lock is for quiet moments
    only): under load a batch never waits on Redis, and reserves are not split into batches of one."""
    from services.billing.service import ReserveRequest

    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve("load-warm", customer, 1, "USD")
    busy, finish = asyncio.Event(), asyncio.Event()

    async def long_operation(tx: Any) -> None:
        busy.set()
        await finish.wait()

    running = asyncio.create_task(billing.commit.run(long_operation))
    await busy.wait()
    assert not billing.commit.idle
    queued_during_check: list[int] = []
    original = billing.otb.reserve_many

    async def checking(*args: Any) -> list[int]:
        queued_during_check.append(billing.commit._queue.qsize())
        return await original(*args)

    billing.otb.reserve_many = checking  # type: ignore[method-assign]
    try:
        reserving = asyncio.create_task(billing.reserve_many([ReserveRequest("load-1", customer, 100, "USD")]))
        await asyncio.sleep(0.05)
        finish.set()
        await running
        (hold,) = await reserving
    finally:
        billing.otb.reserve_many = original  # type: ignore[method-assign]
    assert queued_during_check == [0]  # not queued while Redis decided
    assert getattr(hold, "hold_id", None) == "load-1" and (await wallet(billing, customer)).held == 101
    assert not billing.commit.idle  # a batch just ended: the next ones are taken together too
