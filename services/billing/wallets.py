"""Multi-currency: more wallets per customer (one per currency) and the operator's exchange rates.

Money never moves between a customer's wallets by itself: every hold, charge, top-up and
correction names its wallet by currency, and a job is held and charged in its own currency.
Exchange rates only convert reports (usage.py); they are appended, never edited: a rate holds
from its effective time until a later one of the same pair.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, tuple_

from innosystem.kit import pagination
from innosystem.kit import principal as principals
from innosystem.kit.currencies import ISO_4217
from innosystem.kit.db import utcnow
from innosystem.kit.errors import AlreadyExists, InvalidArgument
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.models import WALLET, Account, ExchangeRateRow
from services.billing.repository import BillingRepository

if TYPE_CHECKING:
    from services.billing.service import BillingService

MAX_RATE_PPM = 10**15


def known_currency(code: str, field: str) -> str:
    """An active ISO 4217 code (upper-cased), or INVALID_CURRENCY / UNKNOWN_CURRENCY naming the field."""
    code = code.strip().upper()
    if not code:
        raise InvalidArgument(f"{field} is required", field=field, reason="MISSING_FIELD")
    if len(code) != 3 or not code.isalpha():
        raise InvalidArgument(f"{field} must be an ISO 4217 code", field=field, reason="INVALID_CURRENCY")
    if code not in ISO_4217:
        raise InvalidArgument(f"{field} {code!r} is not an active ISO 4217 currency", field=field,
                              reason="UNKNOWN_CURRENCY")
    return code


class Wallets:
    def __init__(self, billing: BillingService) -> None:
        self.billing = billing

    async def create(self, caller: Principal, customer_id: str, currency: str) -> Account:
        b = self.billing
        first = await b._visible_wallet(caller, customer_id, "")  # the customer's default wallet
        currency = known_currency(currency, "currency_code")
        async with b.db.session() as s:
            repo = BillingRepository(s)
            if await repo.wallet(first.owner_id, currency) is not None:
                raise AlreadyExists(f"the customer has a {currency} wallet", field="currency_code",
                                    reason="WALLET_EXISTS")
            return await repo.ensure_account(WALLET, first.owner_id, currency, reseller_id=first.reseller_id)

    async def of_customer(self, caller: Principal, customer_id: str) -> list[Account]:
        b = self.billing
        first = await b._visible_wallet(caller, customer_id, "")
        async with b.db.session() as s:
            rows = await s.scalars(select(Account).where(Account.kind == WALLET, Account.owner_id == first.owner_id)
                                   .order_by(Account.create_time, Account.id))
            return list(rows.all())

    async def add_rate(self, caller: Principal, base: str, quote: str, rate_ppm: int,
                       effective: datetime | None) -> ExchangeRateRow:
        principals.require_admin(caller)
        base = known_currency(base, "exchange_rate.base_currency_code")
        quote = known_currency(quote, "exchange_rate.quote_currency_code")
        if base == quote:
            raise InvalidArgument("a rate converts between two different currencies",
                                  field="exchange_rate.quote_currency_code", reason="SAME_CURRENCY")
        if not 0 < rate_ppm <= MAX_RATE_PPM:
            raise InvalidArgument(f"rate_ppm must be between 1 and {MAX_RATE_PPM}", field="exchange_rate.rate_ppm",
                                  reason="INVALID_RATE")
        now = utcnow()
        row = ExchangeRateRow(id=uuid.uuid4(), base=base, quote=quote, rate_ppm=rate_ppm,
                              effective_time=effective or now, create_time=now)
        async with self.billing.db.session() as s:
            s.add(row)
            await s.flush()
        return row

    async def rates(self, base: str, quote: str, size: int, token: str) -> tuple[list[ExchangeRateRow], str]:
        size = pagination.page_size(size)
        q = select(ExchangeRateRow)
        if base:
            q = q.where(ExchangeRateRow.base == known_currency(base, "base_currency_code"))
        if quote:
            q = q.where(ExchangeRateRow.quote == known_currency(quote, "quote_currency_code"))
        if (after := pagination.decode_keyset(token)) is not None:
            q = q.where(tuple_(ExchangeRateRow.effective_time, ExchangeRateRow.id) < tuple_(*after))
        q = q.order_by(ExchangeRateRow.effective_time.desc(), ExchangeRateRow.id.desc()).limit(size + 1)
        async with self.billing.db.session() as s:
            rows = list((await s.scalars(q)).all())
        if len(rows) > size:
            last = rows[size - 1]
            return rows[:size], pagination.encode_token(last.effective_time.isoformat(), str(last.id))
        return rows, ""
