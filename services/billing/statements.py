"""Monthly statements: a wallet's UTC calendar month folded from the journal in one statement.

Opening and closing balances are the fold of the wallet's transfers before and up to the month's
end (not the stored counters), so a statement's totals reconcile with the ledger to the cent:
closing = opening + top-ups - charges + refunds + adjustments + credits granted - credits expired.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from innosystem.kit.errors import InvalidArgument
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.repository import BillingRepository
from services.billing.service import BillingService

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class MonthStatement:
    customer_id: uuid.UUID
    wallet_id: uuid.UUID
    month: str
    currency: str
    start: datetime
    end: datetime
    opening: int
    closing: int
    closing_held: int
    top_ups: int
    charges: int
    charged_jobs: int
    refunds: int
    adjustments: int
    credits_granted: int
    credits_expired: int


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of a "YYYY-MM" month, in UTC."""
    m = _MONTH.match(month)
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise InvalidArgument("month must be YYYY-MM (UTC calendar month, 1970 or later)", field="month",
                              reason="INVALID_MONTH")
    year, mon = int(m.group(1)), int(m.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def statement(billing: BillingService, caller: Principal, customer_id: str, month: str,
                    currency: str) -> MonthStatement:
    wallet = await billing._visible_wallet(caller, customer_id, currency)
    start, end = month_bounds(month)
    async with billing.db.session() as s:
        t = await BillingRepository(s).month_totals(wallet.id, start, end)
    return MonthStatement(wallet.owner_id, wallet.id, month, wallet.currency, start, end, t["opening"], t["closing"],
                          t["closing_held"], t["top_ups"], t["charges"], t["charged_jobs"], t["refunds"],
                          t["adjustments"], t["credits_granted"], t["credits_expired"])
