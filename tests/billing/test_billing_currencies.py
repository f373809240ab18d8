"""Multi-currency against the real embedded PostgreSQL and Valkey: a wallet per currency, no
implicit conversion, operator exchange rates and usage converted at the rate of each capture."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.service import BillingService
from services.billing.usage import PROJECT, customer_usage
from services.billing.wallets import Wallets
from tests.billing.billing_helpers import ADMIN, funded_wallet


async def _reason(coro: object) -> tuple[str, list[str]]:
    with pytest.raises(DomainError) as info:
        await coro  # type: ignore[misc]
    return info.value.reason, [f for f, _ in info.value.violations]


async def test_one_wallet_per_currency_and_no_implicit_conversion(billing: BillingService) -> None:
    wallets = Wallets(billing)
    customer, _ = await funded_wallet(billing, 1000)
    own = Principal(kind=principals.CUSTOMER, customer_id=customer, key_id="c")
    eur = await wallets.create(own, customer, "eur")
    assert (eur.currency, eur.balance) == ("EUR", 0)
    assert await _reason(wallets.create(own, customer, "EUR")) == ("WALLET_EXISTS", ["currency_code"])
    assert await _reason(wallets.create(own, customer, "XYZ")) == ("UNKNOWN_CURRENCY", ["currency_code"])
    assert await _reason(wallets.create(own, customer, "EU")) == ("INVALID_CURRENCY", ["currency_code"])
    assert [w.currency for w in await wallets.of_customer(own, customer)] == ["USD", "EUR"]
    assert (await billing.get_wallet(own, customer)).currency == "USD"  # the default stays the first
    await billing.top_up(ADMIN, customer, 500, "EUR", "eur-1", "")
    # A EUR job is held in the EUR wallet only: the USD balance is never touched or converted.
    assert (await _reason(billing.reserve(f"e1-{customer}", customer, 600, "EUR")))[0] == "INSUFFICIENT_FUNDS"
    await billing.reserve(f"e2-{customer}", customer, 400, "EUR")
    await billing.capture(f"e2-{customer}", 400)
    usd, eur_after = await billing.get_wallet(ADMIN, customer, "USD"), await billing.get_wallet(ADMIN, customer, "EUR")
    assert (usd.balance, eur_after.balance) == (1000, 100)
    stranger = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="s")
    assert (await _reason(wallets.create(stranger, customer, "GBP")))[0] == "WALLET_NOT_FOUND"


async def test_rates_are_admin_only_and_checked(billing: BillingService) -> None:
    wallets = Wallets(billing)
    rate = await wallets.add_rate(ADMIN, "usd", "sek", 10_500_000, None)
    assert (rate.base, rate.quote, rate.rate_ppm) == ("USD", "SEK", 10_500_000)
    for base, quote, ppm, want in (("USD", "USD", 1, ("SAME_CURRENCY", ["exchange_rate.quote_currency_code"])),
                                   ("USD", "SEK", 0, ("INVALID_RATE", ["exchange_rate.rate_ppm"])),
                                   ("USD", "SEK", -5, ("INVALID_RATE", ["exchange_rate.rate_ppm"])),
                                   ("ABC", "SEK", 5, ("UNKNOWN_CURRENCY", ["exchange_rate.base_currency_code"]))):
        assert await _reason(wallets.add_rate(ADMIN, base, quote, ppm, None)) == want
    customer = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="c")
    assert (await _reason(wallets.add_rate(customer, "USD", "SEK", 5, None)))[0] == "ADMIN_ONLY"
    rows, _ = await wallets.rates("USD", "SEK", 50, "")
    assert [r.id for r in rows] == [rate.id]


async def test_usage_converted_at_the_rate_in_force_at_each_capture(billing: BillingService) -> None:
    wallets = Wallets(billing)
    customer, _ = await funded_wallet(billing, 10_000)
    await wallets.create(ADMIN, customer, "CHF")
    await billing.top_up(ADMIN, customer, 10_000, "CHF", "chf", "")
    await wallets.add_rate(ADMIN, "USD", "CHF", 900_000, utcnow() - timedelta(hours=1))

    async def charge(job: str, amount: int, currency: str) -> datetime:
        await billing.reserve(f"{job}-{customer}", customer, amount, currency, job_id=job, project_id="p")
        captured = await billing.capture(f"{job}-{customer}", amount)
        assert captured.resolve_time is not None
        return captured.resolve_time

    first = await charge("u1", 1001, "USD")               # 900.9 → 900 CHF
    # A new rate from just after that capture: the first keeps its rate, the next gets the new one.
    await wallets.add_rate(ADMIN, "USD", "CHF", 500_000, first + timedelta(microseconds=1))
    await charge("u2", 1000, "USD")                       # 500 CHF
    await charge("c1", 77, "CHF")                         # as it is
    start, end = utcnow() - timedelta(hours=2), utcnow() + timedelta(minutes=1)
    plain = await customer_usage(billing, ADMIN, customer, start, end, PROJECT)
    assert [(x.currency, x.jobs, x.amount) for x in plain.lines] == [("CHF", 1, 77), ("USD", 2, 2001)]
    converted = await customer_usage(billing, ADMIN, customer, start, end, PROJECT, "chf")
    assert [(x.group, x.currency, x.jobs, x.amount) for x in converted.lines] == [("p", "CHF", 3, 900 + 500 + 77)]
    assert await _reason(customer_usage(billing, ADMIN, customer, start, end, PROJECT, "NOK")) == \
        ("RATE_NOT_FOUND", ["reporting_currency_code"])
    assert await _reason(customer_usage(billing, ADMIN, customer, start, end, PROJECT, "QQQ")) == \
        ("UNKNOWN_CURRENCY", ["reporting_currency_code"])
