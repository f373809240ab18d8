"""Monthly spending limits against the real embedded PostgreSQL and Valkey: a reserve that would
pass a limit is refused with SPENDING_LIMIT_REACHED and holds nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.limits import SpendingLimits
from services.billing.service import ON_DEMAND, BillingService
from tests.billing.billing_helpers import ADMIN, funded_wallet, wallet


async def _reason(coro: object) -> tuple[str, list[str]]:
    with pytest.raises(DomainError) as info:
        await coro  # type: ignore[misc]
    return info.value.reason, [f for f, _ in info.value.violations]


async def _spent(limits: SpendingLimits, customer: str) -> dict[str, tuple[int, int]]:
    return {v.project_id: (v.limit, v.spent) for v in await limits.list(ADMIN, customer, "")}


async def test_customer_limit_counts_captures_and_holds(billing: BillingService) -> None:
    limits = SpendingLimits(billing)
    customer, _ = await funded_wallet(billing, 10_000)
    # Spending before the first limit counts: the counters are rebuilt from the journal.
    await billing.reserve(f"a-{customer}", customer, 300, "USD", job_id="a")
    await billing.capture(f"a-{customer}", 200)
    own = Principal(kind=principals.CUSTOMER, customer_id=customer, key_id="c")
    view = await limits.set(own, customer, "", 1000, False, "")
    assert (view.limit, view.spent) == (1000, 200)
    await billing.reserve(f"b-{customer}", customer, 500, "USD", job_id="b")
    assert await _reason(billing.reserve(f"c-{customer}", customer, 301, "USD", job_id="c")) == \
        ("SPENDING_LIMIT_REACHED", [])
    w = await wallet(billing, customer)
    assert w.held == 500  # nothing held for the refused one
    await billing.reserve(f"c-{customer}", customer, 300, "USD", job_id="c")   # exactly at the limit
    await billing.release(f"b-{customer}")                                       # frees 500 of the month
    await billing.capture(f"c-{customer}", 250)
    assert await _spent(limits, customer) == {"": (1000, 450)}
    await billing.reserve(f"d-{customer}", customer, 550, "USD", job_id="d")
    assert (await _reason(billing.reserve(f"e-{customer}", customer, 1, "USD")))[0] == "SPENDING_LIMIT_REACHED"
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert f"e-{customer}" not in snap.holds
    assert (await billing.reconcile(ON_DEMAND, customer)).consistent


async def test_project_limit_applies_to_its_project_only(billing: BillingService) -> None:
    limits = SpendingLimits(billing)
    customer, _ = await funded_wallet(billing, 10_000)
    p1, p2 = str(uuid.uuid4()), str(uuid.uuid4())
    await limits.set(ADMIN, customer, p1, 100, False, "")
    await billing.reserve(f"p1-a-{customer}", customer, 60, "USD", project_id=p1)
    assert await _reason(billing.reserve(f"p1-b-{customer}", customer, 41, "USD", project_id=p1)) == \
        ("SPENDING_LIMIT_REACHED", ["project_id"])
    await billing.reserve(f"p2-a-{customer}", customer, 5000, "USD", project_id=p2)
    await billing.capture(f"p1-a-{customer}", 60)
    await billing.reserve(f"p1-c-{customer}", customer, 40, "USD", project_id=p1)
    assert await _spent(limits, customer) == {p1: (100, 100)}
    removed = await limits.set(ADMIN, customer, p1, 0, True, "")
    assert removed.removed
    await billing.reserve(f"p1-d-{customer}", customer, 1000, "USD", project_id=p1)
    assert await _spent(limits, customer) == {}


async def test_concurrent_reserves_never_pass_a_limit(billing: BillingService) -> None:
    limits = SpendingLimits(billing)
    customer, _ = await funded_wallet(billing, 10_000)
    await limits.set(ADMIN, customer, "", 1000, False, "")
    results = await asyncio.gather(*(billing.reserve(f"k{k}-{customer}", customer, 150, "USD") for k in range(12)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(results) - len(refused) == 6 and {r.reason for r in refused} == {"SPENDING_LIMIT_REACHED"}
    assert (await wallet(billing, customer)).held == 900


async def test_limit_errors_change_nothing(billing: BillingService) -> None:
    limits = SpendingLimits(billing)
    customer, _ = await funded_wallet(billing, 100)
    assert await _reason(limits.set(ADMIN, customer, "", -1, False, "")) == ("INVALID_AMOUNT", ["monthly_limit_cents"])
    assert await _reason(limits.set(ADMIN, customer, "", 2**62, False, "")) == \
        ("INVALID_AMOUNT", ["monthly_limit_cents"])
    assert await _reason(limits.set(ADMIN, customer, "x" * 201, 5, False, "")) == ("VALUE_TOO_LONG", ["project_id"])
    other = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="o")
    assert (await _reason(limits.set(other, customer, "", 5, False, "")))[0] == "WALLET_NOT_FOUND"
    assert await limits.list(ADMIN, customer, "") == []
    await billing.reserve(f"free-{customer}", customer, 100, "USD")  # no limit: nothing refused
    # A limit of 0 stops all spending.
    await billing.release(f"free-{customer}")
    await limits.set(ADMIN, customer, "", 0, False, "")
    assert (await _reason(billing.reserve(f"none-{customer}", customer, 1, "USD")))[0] == "SPENDING_LIMIT_REACHED"
