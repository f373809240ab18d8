"""Monthly spending limits per customer (wallet) and per project.

A month's spending is what captures charged in that UTC calendar month plus the active holds
(money that may still be charged). A reserve that would take it above a limit is refused with
SPENDING_LIMIT_REACHED and holds nothing.

The check runs in the ledger's batch under the wallet's row lock (`Spend`), so concurrent
submits on any replica cannot pass a limit together. Only wallets flagged `spending_limited` pay
for it: for them the batch loads the limits, this month's capture counters and the active holds
per project (one round trip), decides in memory, and adds its captures to the counters with
the batch's commit.
The counters are kept only while a wallet has limits; setting its first limit rebuilds this
month's from the journal. Refunds do not lower a month's spending.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert

from innosystem.kit.db import Conn, Writes, pipelined, utcnow
from innosystem.kit.errors import FailedPrecondition, InvalidArgument
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.batcher import Tx
from services.billing.models import Account, SpendCounterRow, SpendingLimitRow

if TYPE_CHECKING:
    from services.billing.service import BillingService

Key = tuple[uuid.UUID, str]  # (wallet, project id or "" for the whole customer)
MAX_PROJECT_ID = 200


def this_month(now: datetime | None = None) -> str:
    return (now or utcnow()).strftime("%Y-%m")


def _reached(what: str, limit: int, spent: int, amount: int, field: str | None) -> FailedPrecondition:
    return FailedPrecondition(f"{what} monthly spending limit {limit} would be passed: {spent} spent or held "
                              f"this month, {amount} more asked", field=field, reason="SPENDING_LIMIT_REACHED",
                              metadata={"limit_cents": str(limit), "spent_cents": str(spent)})


_SPEND = text(
    "SELECT 'limit' AS kind, wallet_id, project_id, monthly_limit AS amount FROM billing.spending_limits "
    "WHERE wallet_id = ANY(CAST(:w AS uuid[])) "
    "UNION ALL SELECT 'captured', wallet_id, project_id, captured FROM billing.spend_counters "
    "WHERE wallet_id = ANY(CAST(:w AS uuid[])) AND month = :month "
    "UNION ALL SELECT 'active', wallet_id, project_id, sum(amount) FROM billing.holds "
    "WHERE wallet_id = ANY(CAST(:w AS uuid[])) AND status = 1 GROUP BY wallet_id, project_id")
_ADD_SPENT = (
    "INSERT INTO billing.spend_counters (wallet_id, project_id, month, captured) "
    "SELECT w, p, %(month)s, c FROM unnest(%(w)s::uuid[], %(p)s::text[], %(c)s::bigint[]) AS v(w, p, c) "
    "ON CONFLICT (wallet_id, project_id, month) DO UPDATE SET captured = spend_counters.captured + EXCLUDED.captured")


@dataclass
class Spend:
    """The month's spending of the batch's limited wallets, kept current as the batch decides."""

    month: str
    wallets: set[uuid.UUID]
    limits: dict[Key, int]
    captured: dict[Key, int]
    active: dict[Key, int]
    added: dict[Key, int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    async def load(cls, conn: Conn, wallet_ids: list[uuid.UUID]) -> Spend:
        """The wallets' limits, this month's captures and their active holds, per project: one
        round trip, in the batch's transaction (a session's or the hot pool's)."""
        month = this_month()
        rows = await pipelined(conn, (_SPEND, {"w": wallet_ids, "month": month}))
        by: dict[str, dict[Key, int]] = {"limit": {}, "captured": defaultdict(int), "active": defaultdict(int)}
        for r in rows:
            by[r.kind][(r.wallet_id, r.project_id)] = int(r.amount)
        return cls(month, set(wallet_ids), by["limit"], by["captured"], by["active"])

    def refuse(self, wallet_id: uuid.UUID, project_id: str, amount: int, held: int) -> FailedPrecondition | None:
        """The refusal of a new hold of `amount`, if it passes a limit. `held`: the wallet's active holds."""
        whole = self.limits.get((wallet_id, ""))
        if whole is not None:
            spent = sum(v for (w, _), v in self.captured.items() if w == wallet_id) + held
            if spent + amount > whole:
                return _reached("the customer's", whole, spent, amount, None)
        own = self.limits.get((wallet_id, project_id)) if project_id else None
        if own is not None:
            spent = self.captured[(wallet_id, project_id)] + self.active[(wallet_id, project_id)]
            if spent + amount > own:
                return _reached("the project's", own, spent, amount, "project_id")
        return None

    def held(self, wallet_id: uuid.UUID, project_id: str, amount: int) -> None:
        if wallet_id in self.wallets:
            self.active[(wallet_id, project_id)] += amount

    def charged(self, wallet_id: uuid.UUID, project_id: str, amount: int) -> None:
        if wallet_id in self.wallets and amount:
            self.captured[(wallet_id, project_id)] += amount
            self.added[(wallet_id, project_id)] += amount

    def save(self, writes: Writes) -> None:
        """The batch's captures added to the month's counters, with the batch's commit."""
        if not self.added:
            return
        added = sorted(self.added.items())
        writes.execute(_ADD_SPENT, {"w": [w for (w, _), _ in added], "p": [p for (_, p), _ in added],
                                    "month": self.month, "c": [v for _, v in added]})


@dataclass(frozen=True)
class LimitView:
    wallet: Account
    project_id: str
    limit: int
    spent: int
    removed: bool
    update_time: datetime


# This month's captures of one wallet per project, from the journal (a first limit's counters).
_REBUILD_SQL = """
INSERT INTO billing.spend_counters (wallet_id, project_id, month, captured)
SELECT t.wallet_id, coalesce(h.project_id, ''), :month, sum(t.amount)
FROM billing.transfers t LEFT JOIN billing.holds h ON h.hold_id = t.hold_id
WHERE t.wallet_id = :w AND t.kind = 3 AND t.create_time >= :start
GROUP BY t.wallet_id, coalesce(h.project_id, '')
"""


class SpendingLimits:
    """Setting and reading limits (the use cases)."""

    def __init__(self, billing: BillingService) -> None:
        self.billing = billing

    async def set(self, caller: Principal, customer_id: str, project_id: str, limit: int, remove: bool,
                  currency: str) -> LimitView:
        from services.billing.statements import month_bounds

        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        if len(project_id) > MAX_PROJECT_ID:
            raise InvalidArgument(f"project_id must be at most {MAX_PROJECT_ID} characters", field="project_id",
                                  reason="VALUE_TOO_LONG")
        if not remove and (limit < 0 or limit > b.max_amount):
            raise InvalidArgument(f"monthly_limit_cents must be between 0 and {b.max_amount}",
                                  field="monthly_limit_cents", reason="INVALID_AMOUNT")

        async def op(tx: Tx) -> LimitView:
            s = tx.session
            await s.execute(select(Account.id).where(Account.id == wallet.id).with_for_update())
            acc = await s.get(Account, wallet.id, populate_existing=True)
            assert acc is not None
            t = SpendingLimitRow.__table__.c
            now = utcnow()
            if remove:
                await s.execute(delete(SpendingLimitRow).where(t.wallet_id == wallet.id, t.project_id == project_id))
                left = await s.scalar(select(t.wallet_id).where(t.wallet_id == wallet.id).limit(1))
                if left is None and acc.spending_limited:
                    await s.execute(update(Account).where(Account.id == wallet.id).values(spending_limited=False))
                    await s.execute(delete(SpendCounterRow).where(SpendCounterRow.wallet_id == wallet.id))
                return LimitView(acc, project_id, 0, 0, True, now)
            if not acc.spending_limited:
                month = this_month(now)
                await s.execute(delete(SpendCounterRow).where(SpendCounterRow.wallet_id == wallet.id))
                await s.execute(text(_REBUILD_SQL), {"w": wallet.id, "month": month,
                                                     "start": month_bounds(month)[0]})
                await s.execute(update(Account).where(Account.id == wallet.id).values(spending_limited=True))
            stmt = insert(SpendingLimitRow).values(wallet_id=wallet.id, project_id=project_id, monthly_limit=limit,
                                                   update_time=now)
            await s.execute(stmt.on_conflict_do_update(index_elements=["wallet_id", "project_id"],
                                                       set_={"monthly_limit": limit, "update_time": now}))
            spent = (await _spent(s, wallet.id, acc.held)).get(project_id, 0)
            return LimitView(acc, project_id, limit, spent, False, now)

        view: LimitView = await b.commit.run(op)
        return view

    async def list(self, caller: Principal, customer_id: str, currency: str) -> list[LimitView]:
        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        async with b.db.session() as s:
            rows = (await s.scalars(select(SpendingLimitRow).where(SpendingLimitRow.wallet_id == wallet.id)
                                    .order_by(SpendingLimitRow.project_id))).all()
            spent = await _spent(s, wallet.id, wallet.held) if rows else {}
        return [LimitView(wallet, r.project_id, r.monthly_limit, spent.get(r.project_id, 0), False, r.update_time)
                for r in rows]


async def _spent(s: Conn, wallet_id: uuid.UUID, held: int) -> dict[str, int]:
    """This month's spending per project id, and for "" the whole customer's (captures + active holds)."""
    spend = await Spend.load(s, [wallet_id])
    out: dict[str, int] = defaultdict(int)
    for (_, p), v in spend.captured.items():
        out[p] += v
        out[""] += v if p else 0
    for (_, p), v in spend.active.items():
        if p:
            out[p] += v
    out[""] += held
    return out
