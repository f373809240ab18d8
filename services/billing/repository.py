"""Billing's SQL: accounts, holds, the journal. Never sees a protobuf."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.db import utcnow
from services.billing.models import (
    ACTIVE,
    ADJUSTMENT,
    CAPTURED,
    REFUND,
    WALLET,
    Account,
    CreditGrantRow,
    HoldRow,
    ReconciliationRow,
    Transfer,
)


class BillingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def ensure_account(self, kind: int, owner_id: uuid.UUID, currency: str, *,
                             reseller_id: uuid.UUID | None = None, credit_limit: int = 0) -> Account:
        await self.s.execute(insert(Account).values(
            id=uuid.uuid4(), kind=kind, owner_id=owner_id, currency=currency, reseller_id=reseller_id,
            credit_limit=credit_limit, debits_posted=0, credits_posted=0, debits_pending=0, credits_pending=0,
            create_time=utcnow(), update_time=utcnow(),
        ).on_conflict_do_nothing(index_elements=["kind", "owner_id", "currency"]))
        row = await self.s.scalar(select(Account).where(Account.kind == kind, Account.owner_id == owner_id,
                                                        Account.currency == currency))
        assert row is not None
        return row

    async def wallet(self, customer_id: uuid.UUID, currency: str | None) -> Account | None:
        q = select(Account).where(Account.kind == WALLET, Account.owner_id == customer_id)
        if currency:
            q = q.where(Account.currency == currency)
        return (await self.s.scalars(q.order_by(Account.create_time).limit(1))).first()

    async def account(self, account_id: uuid.UUID) -> Account | None:
        return await self.s.get(Account, account_id, populate_existing=True)

    async def existing_account(self, account_id: uuid.UUID) -> Account:
        """An account known to exist (accounts are never deleted), as it is now."""
        acc = await self.account(account_id)
        assert acc is not None
        return acc

    async def move_wallet(self, account_id: uuid.UUID, *, debits_posted: int = 0, credits_posted: int = 0,
                          debits_pending: int = 0, promo: int = 0) -> tuple[int, int] | None:
        """Change a wallet's counters unless that would overdraw it; (balance, held) after, or None if refused.
        `promo`: change of the promotional credit beyond what a posted debit spends of it.

        The guard makes a refusal a plain "no row" (no error, so the batch transaction stays usable);
        the CHECK `no_overdraft` stays as the database's own backstop.
        """
        t = Account.__table__.c
        stmt = (update(Account).where(t.id == account_id)
                .values(debits_posted=t.debits_posted + debits_posted, credits_posted=t.credits_posted + credits_posted,
                        debits_pending=t.debits_pending + debits_pending, update_time=utcnow(),
                        # a posted debit spends promotional credit first
                        promo=func.greatest(t.promo - max(debits_posted, 0), 0) + promo)
                .returning(t.credits_posted - t.debits_posted, t.debits_pending))
        if debits_posted + debits_pending > 0:
            stmt = stmt.where(t.debits_posted + t.debits_pending + (debits_posted + debits_pending)
                              <= t.credits_posted + credits_posted + t.credit_limit)
        conn = await self.s.connection()
        row = (await conn.execute(stmt)).first()
        return None if row is None else (int(row[0]), int(row[1]))

    async def set_credit_limit(self, account_id: uuid.UUID, limit: int) -> Account | None:
        """None if the wallet's posted debits and holds need a higher limit."""
        t = Account
        return (await self.s.execute(update(t).where(
            t.id == account_id, t.debits_posted + t.debits_pending <= t.credits_posted + limit).values(
            credit_limit=limit, update_time=utcnow()).returning(t)
            .execution_options(populate_existing=True))).scalar_one_or_none()

    async def delete_hold(self, hold_id: str) -> None:
        """Only for a hold inserted by the same operation a moment ago and refused (never a resolved one)."""
        await self.s.execute(delete(HoldRow).where(HoldRow.hold_id == hold_id, HoldRow.status == ACTIVE))

    async def insert_hold(self, values: dict[str, Any]) -> HoldRow | None:
        """The new hold; None if a hold with this id exists."""
        done = await self.s.execute(insert(HoldRow).values(**values).on_conflict_do_nothing()
                                    .returning(HoldRow).execution_options(populate_existing=True))
        return done.scalars().first()

    async def hold(self, hold_id: str, *, lock: bool = False) -> HoldRow | None:
        q = select(HoldRow).where(HoldRow.hold_id == hold_id).execution_options(populate_existing=True)
        return (await self.s.scalars(q.with_for_update() if lock else q)).first()

    async def holds_by_id(self, hold_ids: Sequence[str]) -> dict[str, HoldRow]:
        q = select(HoldRow).where(HoldRow.hold_id.in_(sorted(set(hold_ids))))
        return {h.hold_id: h for h in await self.s.scalars(q.execution_options(populate_existing=True))}

    async def extend_holds(self, wanted: dict[str, datetime]) -> dict[str, HoldRow]:
        """Active holds' deadlines moved to the given times where later (one statement); every named
        hold that exists, by id, as it is after."""
        ids = sorted(wanted)
        await self.s.execute(text(
            "UPDATE billing.holds AS h SET expire_time = v.expire "
            "FROM unnest(CAST(:ids AS text[]), CAST(:times AS timestamptz[])) AS v(id, expire) "
            "WHERE h.hold_id = v.id AND h.status = 1 AND h.expire_time < v.expire"),
            {"ids": ids, "times": [wanted[i] for i in ids]})
        rows = (await self.s.execute(select(HoldRow).where(HoldRow.hold_id.in_(ids))
                                     .execution_options(populate_existing=True))).scalars().all()
        return {r.hold_id: r for r in rows}

    async def resolve_hold(self, hold_id: str, **values: Any) -> HoldRow:
        return (await self.s.execute(update(HoldRow).where(HoldRow.hold_id == hold_id, HoldRow.status == ACTIVE)
                                     .values(**values).returning(HoldRow)
                                     .execution_options(populate_existing=True))).scalar_one()

    async def top_up_by_request(self, wallet_id: uuid.UUID, request_id: str) -> Transfer | None:
        return (await self.s.scalars(select(Transfer).where(
            Transfer.kind == 1, Transfer.credit_account_id == wallet_id, Transfer.request_id == request_id))).first()

    async def lock_account(self, account_id: uuid.UUID) -> None:
        """Serialize this transaction's checks with every other one that moves the account."""
        await self.s.execute(select(Account.id).where(Account.id == account_id).with_for_update())

    async def money_by_request(self, wallet_id: uuid.UUID, request_id: str) -> Transfer | None:
        """The refund or adjustment made under this request id, if any."""
        return (await self.s.scalars(select(Transfer).where(
            Transfer.kind.in_((REFUND, ADJUSTMENT)), Transfer.wallet_id == wallet_id,
            Transfer.request_id == request_id).execution_options(populate_existing=True))).first()

    async def job_charges(self, customer_id: uuid.UUID, job_id: str) -> list[tuple[uuid.UUID, str, int]]:
        """(wallet id, currency, captured) per wallet over the customer's captured holds of the job."""
        rows = await self.s.execute(
            select(HoldRow.wallet_id, HoldRow.currency, func.sum(HoldRow.captured))
            .where(HoldRow.customer_id == customer_id, HoldRow.job_id == job_id, HoldRow.status == CAPTURED)
            .group_by(HoldRow.wallet_id, HoldRow.currency).order_by(HoldRow.wallet_id))
        return [(r[0], r[1], int(r[2])) for r in rows.all()]

    async def job_refunds(self, wallet_id: uuid.UUID, job_id: str) -> int:
        return int(await self.s.scalar(select(func.coalesce(func.sum(Transfer.amount), 0)).where(
            Transfer.kind == REFUND, Transfer.wallet_id == wallet_id, Transfer.job_id == job_id)) or 0)

    async def month_totals(self, wallet_id: uuid.UUID, start: datetime, end: datetime) -> dict[str, int]:
        """The wallet's journal folded before `start` (opening balance) and over [start, end) per kind."""
        row = (await self.s.execute(text(_MONTH_SQL), {"w": wallet_id, "start": start, "end": end})).one()
        return {k: int(v) for k, v in row._mapping.items()}

    async def materialize_grants(self, wallet: Account) -> list[CreditGrantRow]:
        """The wallet's active grants (soonest expiry first, locked), each told what is left of it:
        what the wallet spent of its promotional credit since the last time comes off the soonest
        first. Call with the wallet locked; afterwards sum(remaining) == wallet.promo."""
        grants = list((await self.s.scalars(
            select(CreditGrantRow).where(CreditGrantRow.wallet_id == wallet.id, CreditGrantRow.status == 1)
            .order_by(CreditGrantRow.expire_time, CreditGrantRow.id).with_for_update()
            .execution_options(populate_existing=True))).all())
        spent = sum(g.remaining for g in grants) - wallet.promo
        for g in grants:
            take = min(g.remaining, max(spent, 0))
            if take:
                g.remaining -= take
                spent -= take
        await self.s.flush()
        return grants

    async def grant_by_request(self, wallet_id: uuid.UUID, request_id: str) -> CreditGrantRow | None:
        return (await self.s.scalars(select(CreditGrantRow).where(
            CreditGrantRow.wallet_id == wallet_id, CreditGrantRow.request_id == request_id)
            .execution_options(populate_existing=True))).first()

    async def add_grant(self, grant: CreditGrantRow) -> None:
        self.s.add(grant)
        await self.s.flush()

    async def due_grants(self, now: datetime, limit: int) -> list[CreditGrantRow]:
        return list((await self.s.scalars(
            select(CreditGrantRow).where(CreditGrantRow.status == 1, CreditGrantRow.expire_time <= now)
            .order_by(CreditGrantRow.expire_time).limit(limit))).all())

    async def next_grant_expiry(self) -> datetime | None:
        return await self.s.scalar(select(func.min(CreditGrantRow.expire_time)).where(CreditGrantRow.status == 1))

    async def grants(self, wallet_id: uuid.UUID, limit: int,
                     before: tuple[datetime, uuid.UUID] | None) -> list[CreditGrantRow]:
        """Newest first; keyset on (create_time, id)."""
        q = select(CreditGrantRow).where(CreditGrantRow.wallet_id == wallet_id)
        if before is not None:
            q = q.where(tuple_(CreditGrantRow.create_time, CreditGrantRow.id) < tuple_(*before))
        q = q.order_by(CreditGrantRow.create_time.desc(), CreditGrantRow.id.desc()).limit(limit)
        return list((await self.s.scalars(q)).all())

    async def insert_transfer(self, row: dict[str, Any]) -> Transfer:
        transfer = Transfer(**row)
        self.s.add(transfer)
        await self.s.flush()
        return transfer

    async def active_holds(self, wallet_id: uuid.UUID) -> list[HoldRow]:
        return list((await self.s.scalars(select(HoldRow).where(HoldRow.wallet_id == wallet_id,
                                                                HoldRow.status == ACTIVE))).all())

    async def due_holds(self, now: datetime, limit: int) -> list[HoldRow]:
        return list((await self.s.scalars(
            select(HoldRow).where(HoldRow.status == ACTIVE, HoldRow.expire_time <= now)
            .order_by(HoldRow.expire_time).limit(limit).with_for_update(skip_locked=True))).all())

    async def active_holds_created(self, start: datetime | None, before: datetime, after: tuple[datetime, str] | None,
                                   limit: int) -> list[tuple[str, str, datetime]]:
        """(hold id, job id, create time) of active holds created in [start, before), after the
        keyset `after`, oldest first (`ix_holds_active_create_time`)."""
        h = HoldRow.__table__.c
        q = select(h.hold_id, h.job_id, h.create_time).where(h.status == ACTIVE, h.create_time < before)
        if start is not None:
            q = q.where(h.create_time >= start)
        if after is not None:
            q = q.where(tuple_(h.create_time, h.hold_id) > tuple_(*after))
        rows = await self.s.execute(q.order_by(h.create_time, h.hold_id).limit(limit))
        return [(r.hold_id, r.job_id, r.create_time) for r in rows]

    async def next_expiry(self) -> datetime | None:
        return await self.s.scalar(select(func.min(HoldRow.expire_time)).where(HoldRow.status == ACTIVE))

    async def transactions(self, wallet_id: uuid.UUID, limit: int, before_seq: int | None, job_id: str,
                           kind: int, start: datetime | None, end: datetime | None) -> list[Transfer]:
        q = select(Transfer).where(Transfer.wallet_id == wallet_id)
        if before_seq is not None:
            q = q.where(Transfer.seq < before_seq)
        if job_id:
            q = q.where(Transfer.job_id == job_id)
        if kind:
            q = q.where(Transfer.kind == kind)
        if start is not None:
            q = q.where(Transfer.create_time >= start)
        if end is not None:
            q = q.where(Transfer.create_time < end)
        return list((await self.s.scalars(q.order_by(Transfer.seq.desc()).limit(limit))).all())

    async def commission_lines(self, reseller_id: uuid.UUID, currency: str, start: datetime | None,
                               end: datetime) -> list[tuple[uuid.UUID | None, int, int, int]]:
        """(customer id, captures, captured, commission) per customer in [start, end)."""
        conds = [Transfer.reseller_id == reseller_id, Transfer.currency == currency, Transfer.create_time < end,
                 or_(and_(Transfer.kind == 3, Transfer.amount > 0), Transfer.kind == 8)]
        if start is not None:
            conds.append(Transfer.create_time >= start)
        q = (select(Transfer.customer_id,
                    func.count().filter(Transfer.kind == 3),
                    func.coalesce(func.sum(Transfer.amount).filter(Transfer.kind == 3), 0),
                    func.coalesce(func.sum(Transfer.amount).filter(Transfer.kind == 8), 0))
             .where(*conds).group_by(Transfer.customer_id).order_by(Transfer.customer_id))
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in (await self.s.execute(q)).all()]

    async def wallets(self, customer_id: uuid.UUID | None) -> list[Account]:
        q = select(Account).where(Account.kind == WALLET)
        if customer_id is not None:
            q = q.where(Account.owner_id == customer_id)
        return list((await self.s.scalars(q.order_by(Account.id))).all())

    async def holds_of_wallets(self, wallet_ids: list[uuid.UUID]) -> list[HoldRow]:
        return list((await self.s.scalars(select(HoldRow).where(HoldRow.wallet_id.in_(wallet_ids),
                                                                HoldRow.status == ACTIVE))).all())

    async def add_reconciliation(self, row: ReconciliationRow) -> None:
        self.s.add(row)
        await self.s.flush()

    async def reconciliation(self, rid: uuid.UUID) -> ReconciliationRow | None:
        return await self.s.get(ReconciliationRow, rid)

    async def reconciliations(self, limit: int, after: tuple[datetime, uuid.UUID] | None,
                              findings_only: bool) -> list[ReconciliationRow]:
        q = select(ReconciliationRow)
        if after is not None:
            q = q.where(tuple_(ReconciliationRow.start_time, ReconciliationRow.id) < tuple_(*after))
        if findings_only:
            q = q.where(ReconciliationRow.consistent.is_(False))
        q = q.order_by(ReconciliationRow.start_time.desc(), ReconciliationRow.id.desc()).limit(limit)
        return list((await self.s.scalars(q)).all())


# A wallet's posted effect per transfer: + top-up, refund, adjustment credit and credit grant;
# - capture, adjustment debit and expired credit; holds, voids and expiries move only the held amount.
_MONTH_SQL = """
WITH t AS (
    SELECT kind, amount, pending_amount, create_time >= :start AS inside,
           CASE WHEN kind IN (1, 6) THEN amount WHEN kind = 3 THEN -amount
                WHEN kind = 7 AND credit_account_id = :w THEN amount WHEN kind = 7 THEN -amount
                WHEN kind = 9 THEN amount WHEN kind = 10 THEN -amount
                ELSE 0 END AS posted,
           CASE WHEN kind = 2 THEN amount WHEN kind = 3 THEN -pending_amount
                WHEN kind IN (4, 5) THEN -amount ELSE 0 END AS held
    FROM billing.transfers WHERE wallet_id = :w AND create_time < :end
)
SELECT coalesce(sum(posted) FILTER (WHERE NOT inside), 0) AS opening,
       coalesce(sum(posted), 0) AS closing,
       coalesce(sum(held), 0) AS closing_held,
       coalesce(sum(amount) FILTER (WHERE inside AND kind = 1), 0) AS top_ups,
       coalesce(sum(amount) FILTER (WHERE inside AND kind = 3), 0) AS charges,
       count(*) FILTER (WHERE inside AND kind = 3 AND amount > 0) AS charged_jobs,
       coalesce(sum(amount) FILTER (WHERE inside AND kind = 6), 0) AS refunds,
       coalesce(sum(posted) FILTER (WHERE inside AND kind = 7), 0) AS adjustments,
       coalesce(sum(amount) FILTER (WHERE inside AND kind = 9), 0) AS credits_granted,
       coalesce(sum(amount) FILTER (WHERE inside AND kind = 10), 0) AS credits_expired
FROM t
"""
