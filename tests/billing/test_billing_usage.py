"""Usage reports against the real embedded PostgreSQL: charged jobs and amounts per group."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.service import BillingService
from services.billing.usage import CUSTOMER, DAY, JOB_TYPE, MONTH, PROJECT, customer_usage, reseller_usage
from tests.billing.billing_helpers import ADMIN, RATES, funded_wallet


async def _charge(billing: BillingService, customer: str, job: str, cost: int, project: str, job_type: str,
                  captured: int | None = None) -> None:
    await billing.reserve(f"{job}-{customer}", customer, cost, "USD", job_id=job, project_id=project,
                          job_type_id=job_type)
    await billing.capture(f"{job}-{customer}", cost if captured is None else captured)


async def test_usage_by_project_type_day_and_month(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 10_000)
    p1, p2, t1, t2 = "proj-1", "proj-2", "type-1", "type-2"
    await _charge(billing, customer, "j1", 100, p1, t1)
    await _charge(billing, customer, "j2", 250, p1, t2)
    await _charge(billing, customer, "j3", 40, p2, t2, captured=0)   # free: a job, no amount
    await billing.reserve(f"j4-{customer}", customer, 70, "USD", job_id="j4", project_id=p2)  # held: not usage
    start, end = utcnow() - timedelta(hours=1), utcnow() + timedelta(minutes=1)
    lines = lambda u: [(x.group, x.currency, x.jobs, x.amount) for x in u.lines]  # noqa: E731
    by_project = await customer_usage(billing, ADMIN, customer, start, end, PROJECT)
    assert lines(by_project) == [(p1, "USD", 2, 350), (p2, "USD", 1, 0)]
    by_type = await customer_usage(billing, ADMIN, customer, start, end, JOB_TYPE)
    assert lines(by_type) == [(t1, "USD", 1, 100), (t2, "USD", 2, 250)]
    today = utcnow().strftime("%Y-%m-%d")
    days = lines(await customer_usage(billing, ADMIN, customer, start, end, DAY))
    assert sum(n for *_, n, _ in days) == 3 and sum(a for *_, a in days) == 350
    assert all(g in (today, (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%d")) for g, *_ in days)
    month = await customer_usage(billing, ADMIN, customer, None, None, 0)  # default: this month by month
    assert month.group_by == MONTH and lines(month) == [(utcnow().strftime("%Y-%m"), "USD", 3, 350)]
    before = await customer_usage(billing, ADMIN, customer, start - timedelta(days=2), start, PROJECT)
    assert before.lines == []


async def test_reseller_usage_spans_its_customers_only(billing: BillingService) -> None:
    a, reseller = await funded_wallet(billing, 1000, reseller_rate=500)
    b = str(uuid.uuid4())
    await billing.open_wallet(b, reseller, "USD", 0)
    await billing.top_up(ADMIN, b, 1000, "", f"f-{b}", "")
    stranger, _ = await funded_wallet(billing, 1000, reseller_rate=100)
    RATES[uuid.UUID(reseller)] = 500
    for c, cost in ((a, 10), (b, 20), (b, 30), (stranger, 99)):
        await _charge(billing, c, f"job-{cost}", cost, "p", "t")
    me = Principal(kind=principals.RESELLER, reseller_id=reseller, key_id="r")
    report = await reseller_usage(billing, me, reseller, None, None, CUSTOMER)
    assert sorted((x.group, x.jobs, x.amount) for x in report.lines) == sorted([(a, 1, 10), (b, 2, 50)])
    other = Principal(kind=principals.RESELLER, reseller_id=str(uuid.uuid4()), key_id="o")
    with pytest.raises(DomainError) as info:
        await reseller_usage(billing, other, reseller, None, None, CUSTOMER)
    assert info.value.reason == "RESELLER_NOT_FOUND"


async def test_usage_errors_name_the_field(billing: BillingService) -> None:
    customer, _ = await funded_wallet(billing, 10)
    now = utcnow()
    for start, end, group, want in ((now, now - timedelta(seconds=1), 0, ("INVALID_TIME_RANGE", "end_time")),
                                    (now - timedelta(days=401), now, 0, ("TIME_RANGE_TOO_LONG", "end_time")),
                                    (None, None, 99, ("INVALID_GROUPING", "group_by"))):
        with pytest.raises(DomainError) as info:
            await customer_usage(billing, ADMIN, customer, start, end, group)
        assert (info.value.reason, info.value.violations[0][0]) == want
    other = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="o")
    with pytest.raises(DomainError) as info:
        await customer_usage(billing, other, customer, None, None, 0)
    assert info.value.reason == "WALLET_NOT_FOUND"
