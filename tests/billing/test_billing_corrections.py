"""Refunds, adjustments and monthly statements against the real embedded PostgreSQL and Valkey."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.corrections import Corrections
from services.billing.models import ADJUSTMENT, REFUND
from services.billing.service import ON_DEMAND, BillingService
from services.billing.statements import month_bounds, statement
from tests.billing.billing_helpers import ADMIN, funded_wallet, wallet


async def _reason(coro: object) -> str:
    with pytest.raises(DomainError) as info:
        await coro  # type: ignore[misc]
    return info.value.reason


def _fields(err: DomainError) -> list[str]:
    return [f for f, _ in err.violations]


async def _charged(billing: BillingService, funds: int, job: str, cost: int,
                   reseller_rate: int | None = None) -> tuple[str, str]:
    customer, reseller = await funded_wallet(billing, funds, reseller_rate=reseller_rate)
    await billing.reserve(job, customer, cost, "USD", job_id=job)
    await billing.capture(job, cost)
    return customer, reseller


async def test_refund_returns_a_captured_job_once_per_request(billing: BillingService) -> None:
    corrections = Corrections(billing)
    job = f"job-{uuid.uuid4()}"
    customer, _ = await _charged(billing, 10_000, job, 3000)
    moved = await corrections.refund(ADMIN, customer, job, 1000, "slow run", "r-1")
    assert moved.transfer.kind == REFUND and moved.transfer.job_id == job and moved.wallet.balance == 8000
    again = await corrections.refund(ADMIN, customer, job, 1000, "slow run", "r-1")
    assert again.transfer.id == moved.transfer.id and (await wallet(billing, customer)).balance == 8000
    assert await _reason(corrections.refund(ADMIN, customer, job, 999, "slow run", "r-1")) == "IDEMPOTENCY_KEY_REUSED"
    # Never above what was captured minus earlier refunds.
    assert await _reason(corrections.refund(ADMIN, customer, job, 2001, "more", "r-2")) == "REFUND_EXCEEDS_CAPTURE"
    await corrections.refund(ADMIN, customer, job, 2000, "the rest", "r-3")
    assert await _reason(corrections.refund(ADMIN, customer, job, 1, "again", "r-4")) == "REFUND_EXCEEDS_CAPTURE"
    assert (await wallet(billing, customer)).balance == 10_000
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert not snap.loaded or snap.balance == 10_000
    page = await billing.list_transactions(ADMIN, customer, 50, "", "", REFUND, None, None)
    assert sorted(t.amount for t in page.items) == [1000, 2000]


async def test_concurrent_refunds_of_one_job_never_exceed_its_capture(billing: BillingService) -> None:
    corrections = Corrections(billing)
    job = f"job-{uuid.uuid4()}"
    customer, _ = await _charged(billing, 5000, job, 1000)
    results = await asyncio.gather(*(corrections.refund(ADMIN, customer, job, 300, "burst", f"c-{k}")
                                     for k in range(6)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(ok) == 3 and len(refused) == 3
    assert {r.reason for r in refused} == {"REFUND_EXCEEDS_CAPTURE"}
    assert (await wallet(billing, customer)).balance == 4000 + 900


async def test_refund_refusals_change_nothing(billing: BillingService) -> None:
    corrections = Corrections(billing)
    job = f"job-{uuid.uuid4()}"
    customer, _ = await _charged(billing, 5000, job, 1000)
    before = await wallet(billing, customer)
    for amount, field, reason in ((0, "amount_cents", "INVALID_AMOUNT"), (-5, "amount_cents", "INVALID_AMOUNT"),
                                  (2**62, "amount_cents", "INVALID_AMOUNT")):
        with pytest.raises(DomainError) as info:
            await corrections.refund(ADMIN, customer, job, amount, "why", "bad")
        assert info.value.reason == reason and _fields(info.value) == [field]
    with pytest.raises(DomainError) as info:
        await corrections.refund(ADMIN, customer, job, 10, "", "no-reason")
    assert info.value.reason == "MISSING_FIELD" and _fields(info.value) == ["reason"]
    with pytest.raises(DomainError) as info:
        await corrections.refund(ADMIN, customer, "no-such-job", 10, "why", "r")
    assert info.value.reason == "CAPTURE_NOT_FOUND" and _fields(info.value) == ["job_id"]
    # A job that is only held (not captured) has nothing to refund.
    await billing.reserve(f"{job}-held", customer, 100, "USD", job_id=f"{job}-held")
    assert await _reason(corrections.refund(ADMIN, customer, f"{job}-held", 10, "why", "r")) == "CAPTURE_NOT_FOUND"
    after = await wallet(billing, customer)
    assert (after.balance, after.held) == (before.balance, before.held + 100)


async def test_who_may_refund(billing: BillingService) -> None:
    corrections = Corrections(billing, reseller_refund_limit=500)
    job = f"job-{uuid.uuid4()}"
    customer, reseller = await _charged(billing, 5000, job, 2000, reseller_rate=1000)
    as_reseller = Principal(kind=principals.RESELLER, reseller_id=reseller, key_id="r")
    as_customer = Principal(kind=principals.CUSTOMER, customer_id=customer, key_id="c")
    stranger = Principal(kind=principals.RESELLER, reseller_id=str(uuid.uuid4()), key_id="x")
    assert await _reason(corrections.refund(as_customer, customer, job, 10, "me", "c-1")) == "REFUND_NOT_ALLOWED"
    assert await _reason(corrections.refund(stranger, customer, job, 10, "me", "s-1")) == "WALLET_NOT_FOUND"
    assert await _reason(corrections.refund(as_reseller, customer, job, 501, "goodwill", "rs-1")) == \
        "REFUND_ABOVE_RESELLER_LIMIT"
    moved = await corrections.refund(as_reseller, customer, job, 500, "goodwill", "rs-2")
    assert moved.wallet.balance == 3500
    # With no limit set, a reseller may not refund at all.
    assert await _reason(Corrections(billing).refund(as_reseller, customer, job, 1, "x", "rs-3")) == \
        "REFUND_ABOVE_RESELLER_LIMIT"


async def test_adjustments_credit_and_debit_and_name_the_reconciliation(billing: BillingService) -> None:
    corrections = Corrections(billing)
    customer, _ = await funded_wallet(billing, 1000)
    await billing.reserve(f"h-{customer}", customer, 600, "USD")
    credit = await corrections.adjust(ADMIN, customer, 250, "goodwill", "a-1", "", "")
    assert credit.transfer.kind == ADJUSTMENT and credit.wallet.balance == 1250
    assert credit.transfer.credit_account_id == credit.wallet.id
    # A debit may take only what is not held.
    assert await _reason(corrections.adjust(ADMIN, customer, -651, "fix", "a-2", "", "")) == "INSUFFICIENT_FUNDS"
    run = await billing.reconcile(ON_DEMAND, customer, dry_run=True)
    debit = await corrections.adjust(ADMIN, customer, -650, "fix", "a-3", "USD", str(run.id))
    assert debit.wallet.balance == 600 and debit.transfer.debit_account_id == debit.wallet.id
    assert str(run.id) in debit.transfer.description
    assert (await corrections.adjust(ADMIN, customer, -650, "fix", "a-3", "USD", str(run.id))).transfer.id == \
        debit.transfer.id
    assert await _reason(corrections.adjust(ADMIN, customer, 650, "fix", "a-3", "USD", str(run.id))) == \
        "IDEMPOTENCY_KEY_REUSED"
    for amount, rec, field, reason in ((0, "", "amount_cents", "INVALID_AMOUNT"),
                                       (-(2**62), "", "amount_cents", "INVALID_AMOUNT"),
                                       (5, str(uuid.uuid4()), "reconciliation_id", "RECONCILIATION_NOT_FOUND"),
                                       (5, "not-a-uuid", "reconciliation_id", "RECONCILIATION_NOT_FOUND")):
        with pytest.raises(DomainError) as info:
            await corrections.adjust(ADMIN, customer, amount, "x", "bad", "", rec)
        assert info.value.reason == reason and _fields(info.value) == [field]
    assert await _reason(corrections.adjust(ADMIN, customer, 5, "x", "eur", "EUR", "")) == "CURRENCY_MISMATCH"
    as_customer = Principal(kind=principals.CUSTOMER, customer_id=customer, key_id="c")
    assert await _reason(corrections.adjust(as_customer, customer, 5, "x", "mine", "", "")) == "ADMIN_ONLY"
    w = await wallet(billing, customer)
    assert (w.balance, w.held) == (600, 600)
    async with billing.db.session() as s:
        assert await billing._global_checks(s) == []


async def test_adjustments_move_open_to_buy_both_ways(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 100)
    await billing.reserve(f"warm-{customer}", customer, 1, "USD")  # loads the wallet into Redis
    await Corrections(billing).adjust(ADMIN, customer, 900, "credit", "a", "", "")
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert snap.loaded and snap.balance == 1000
    await Corrections(billing).adjust(ADMIN, customer, -500, "debit", "b", "", "")
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert snap.balance == 500
    assert await _reason(billing.reserve(f"big-{customer}", customer, 500, "USD")) == "INSUFFICIENT_FUNDS"
    await billing.reserve(f"fits-{customer}", customer, 499, "USD")
    assert (await wallet(billing, customer)).held == 500


async def test_statement_equals_the_ledger_to_the_cent(billing: BillingService) -> None:
    corrections = Corrections(billing)
    job = f"job-{uuid.uuid4()}"
    customer, _ = await _charged(billing, 10_000, job, 1234)
    await billing.reserve(f"{job}-2", customer, 500, "USD", job_id=f"{job}-2")
    await billing.capture(f"{job}-2", 0)  # free: no charged job
    await billing.reserve(f"{job}-3", customer, 77, "USD", job_id=f"{job}-3")  # still held
    await corrections.refund(ADMIN, customer, job, 234, "partial", "r")
    await corrections.adjust(ADMIN, customer, -66, "fee", "a1", "", "")
    await corrections.adjust(ADMIN, customer, 11, "credit", "a2", "", "")
    month = utcnow().strftime("%Y-%m")
    st = await statement(billing, ADMIN, customer, month, "")
    assert (st.opening, st.top_ups, st.charges, st.charged_jobs, st.refunds, st.adjustments) == \
        (0, 10_000, 1234, 1, 234, -55)
    assert st.closing == st.opening + st.top_ups - st.charges + st.refunds + st.adjustments
    w = await wallet(billing, customer)
    assert (st.closing, st.closing_held) == (w.balance, w.held) == (8945, 77)
    # The journal, paged, says the same.
    page = await billing.list_transactions(ADMIN, customer, 500, "", "", 0, st.start, st.end)
    assert page.items[0].balance_after == st.closing
    assert sum(t.amount for t in page.items if t.kind == 1) == st.top_ups
    # The next month opens where this one closes; the previous one is empty.
    _, end = month_bounds(month)
    following = await statement(billing, ADMIN, customer, end.strftime("%Y-%m"), "")
    assert following.opening == following.closing == st.closing and following.top_ups == 0
    previous = await statement(billing, ADMIN, customer, "2000-01", "")
    assert (previous.opening, previous.closing, previous.charges) == (0, 0, 0)


async def test_statement_errors_and_visibility(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 10)
    for month in ("2026-13", "26-01", "2026-1", "", "1969-12"):
        with pytest.raises(DomainError) as info:
            await statement(billing, ADMIN, customer, month, "")
        assert info.value.reason == "INVALID_MONTH" and _fields(info.value) == ["month"]
    other = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="o")
    assert await _reason(statement(billing, other, customer, "2026-01", "")) == "WALLET_NOT_FOUND"
    own = Principal(kind=principals.CUSTOMER, customer_id=customer, key_id="c")
    assert (await statement(billing, own, customer, utcnow().strftime("%Y-%m"), "")).top_ups == 10
    assert month_bounds("2026-12")[1].month == 1
