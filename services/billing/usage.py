"""Usage reports: what jobs cost over a period, per project, job type, day, month or customer.

One grouped statement over the captured holds in the period (a hold carries its job's customer,
reseller, project and type, as the jobs service named them at submit). Amounts are per currency;
with a reporting currency each capture is converted at the exchange rate in force when it was
captured (rounded down per capture), so a report does not change when a later rate is added.
Refunds are not subtracted (they are in the statements and the journal).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import text

from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from innosystem.tenancy.v1.tenancy_pb2 import Principal

if TYPE_CHECKING:
    from services.billing.service import BillingService

# UsageGrouping values → the SQL expression of a line's group.
PROJECT, JOB_TYPE, DAY, MONTH, CUSTOMER = 1, 2, 3, 4, 5
_GROUP = {
    PROJECT: "project_id",
    JOB_TYPE: "job_type_id",
    DAY: "to_char(resolve_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    MONTH: "to_char(resolve_time AT TIME ZONE 'UTC', 'YYYY-MM')",
    CUSTOMER: "customer_id::text",
}
MAX_RANGE = timedelta(days=400)


@dataclass(frozen=True)
class UsageLine:
    group: str
    currency: str
    jobs: int
    amount: int


@dataclass(frozen=True)
class Usage:
    start: datetime
    end: datetime
    group_by: int
    lines: list[UsageLine]


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    now = utcnow()
    end = end or now
    start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start >= end:
        raise InvalidArgument("end_time must be after start_time", field="end_time", reason="INVALID_TIME_RANGE")
    if end - start > MAX_RANGE:
        raise InvalidArgument("a usage report covers at most 400 days", field="end_time", reason="TIME_RANGE_TOO_LONG")
    return start, end


# Each capture in the reporting currency: as it is, or at the latest rate effective at its time.
_CONVERTED = """
WITH c AS (
    SELECT {key} AS g, h.job_id, h.currency, h.captured, r.rate_ppm
    FROM billing.holds h
    LEFT JOIN LATERAL (SELECT x.rate_ppm FROM billing.exchange_rates x
                       WHERE x.base = h.currency AND x.quote = :rc AND x.effective_time <= h.resolve_time
                       ORDER BY x.effective_time DESC LIMIT 1) r ON h.currency <> :rc
    WHERE h.{scope} = :owner AND h.status = 2 AND h.resolve_time >= :start AND h.resolve_time < :end
)
SELECT g, :rc, count(DISTINCT job_id),
       coalesce(sum(CASE WHEN currency = :rc THEN captured ELSE captured * rate_ppm / 1000000 END), 0),
       string_agg(DISTINCT currency, ',') FILTER (WHERE currency <> :rc AND rate_ppm IS NULL)
FROM c GROUP BY 1 ORDER BY 1
"""


async def _report(billing: BillingService, scope: str, owner: uuid.UUID, start: datetime | None,
                  end: datetime | None, group_by: int, reporting: str = "") -> Usage:
    from services.billing.wallets import known_currency

    group_by = group_by or MONTH
    if group_by not in _GROUP:
        raise InvalidArgument("group_by is not a known grouping", field="group_by", reason="INVALID_GROUPING")
    start, end = _range(start, end)
    key = _GROUP[group_by]
    params = {"owner": owner, "start": start, "end": end}
    if reporting:
        params["rc"] = known_currency(reporting, "reporting_currency_code")
        sql = _CONVERTED.format(key=key.replace("resolve_time", "h.resolve_time"), scope=scope)
        async with billing.db.session() as s:
            rows = (await s.execute(text(sql), params)).all()
        missing = sorted({c for *_, gaps in rows if gaps for c in gaps.split(",")})
        if missing:
            raise FailedPrecondition(f"no exchange rate from {', '.join(missing)} to {params['rc']} in force at "
                                     "some captures of the period", field="reporting_currency_code",
                                     reason="RATE_NOT_FOUND")
        return Usage(start, end, group_by, [UsageLine(g or "", c, int(n), int(a)) for g, c, n, a, _ in rows])
    sql = (f"SELECT {key} AS g, currency, count(DISTINCT job_id), coalesce(sum(captured), 0) FROM billing.holds "
           f"WHERE {scope} = :owner AND status = 2 AND resolve_time >= :start AND resolve_time < :end "
           "GROUP BY 1, 2 ORDER BY 1, 2")
    async with billing.db.session() as s:
        rows = (await s.execute(text(sql), params)).all()
    return Usage(start, end, group_by, [UsageLine(g or "", c, int(n), int(a)) for g, c, n, a in rows])


async def customer_usage(billing: BillingService, caller: Principal, customer_id: str, start: datetime | None,
                         end: datetime | None, group_by: int, reporting: str = "") -> Usage:
    wallet = await billing._visible_wallet(caller, customer_id, "")
    return await _report(billing, "customer_id", wallet.owner_id, start, end, group_by, reporting)


async def reseller_usage(billing: BillingService, caller: Principal, reseller_id: str, start: datetime | None,
                         end: datetime | None, group_by: int, reporting: str = "") -> Usage:
    if caller.kind != principals.ADMIN and not (caller.kind == principals.RESELLER
                                                and caller.reseller_id == reseller_id):
        raise NotFound(f"reseller {reseller_id} not found", reason="RESELLER_NOT_FOUND")
    try:
        rid = uuid.UUID(reseller_id)
    except ValueError:
        raise NotFound(f"reseller {reseller_id} not found", reason="RESELLER_NOT_FOUND") from None
    return await _report(billing, "reseller_id", rid, start, end, group_by, reporting)
