"""The hot path of group commit: a whole batch of holds, captures and voids in a few statements.

`apply` locks every hold and wallet the batch touches (two SELECT … FOR UPDATE, holds then
wallets in id order, the first with the transaction's BEGIN), waits for the Open-to-Buy checks
still under way for its reserves (`Authorizing`), decides each item in arrival order in memory
against those locked figures (the same rules as one-by-one: idempotent repeats, resolve at most
once, no overdraft; a charge spends promotional credit first; a wallet that falls below its
low-balance threshold gets one event), then queues the outcome for the batch's commit: the new
holds, one UPDATE per resolved hold and per wallet. The journal rows and the platform accounts'
counters go to the batch (`Tx`) too; the group commit sends all of them with its COMMIT in one
round trip (`kit.db.Writes`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg import sql
from sqlalchemy import Table

from innosystem.kit import roundtrip
from innosystem.kit.db import Conn, as_sqlalchemy_error, driver_of, utcnow
from innosystem.kit.errors import DomainError, FailedPrecondition
from services.billing import alerts, limits
from services.billing.batcher import Tx
from services.billing.models import (
    ACTIVE,
    CAPTURE,
    CAPTURED,
    COMMISSION_T,
    EXPIRE,
    EXPIRED,
    HOLD,
    VOID,
    VOIDED,
    Account,
    Hold,
    HoldRow,
    Transfer,
)
from services.billing.otb import InsufficientFunds

# OverCapturePolicy values.
CAP_AT_HOLD, CHARGE_AVAILABLE = 2, 3


def commission_of(actual: int, rate_bps: int) -> int:
    """The reseller's share of a capture, rounded down to a whole minor unit."""
    return actual * rate_bps // 10_000


@dataclass(frozen=True)
class ReserveItem:
    hold_id: str
    wallet_id: uuid.UUID
    customer_id: uuid.UUID
    reseller_id: uuid.UUID | None
    currency: str
    amount: int
    job_id: str
    expire_time: datetime
    description: str
    revenue_id: uuid.UUID
    project_id: str = ""
    job_type_id: str = ""


@dataclass(frozen=True)
class CaptureItem:
    hold_id: str
    amount: int
    currency: str
    policy: int
    description: str
    rate_bps: int
    commission_account: uuid.UUID | None
    revenue_id: uuid.UUID


@dataclass(frozen=True)
class VoidItem:
    hold_id: str
    kind: int  # VOID or EXPIRE
    description: str
    now: datetime
    revenue_id: uuid.UUID


# How long a batch, its rows locked, waits for its reserves' Open-to-Buy checks: far more than a
# check takes, and short enough that a slow Redis does not hold the batch's locks (and the
# captures and releases in it) for long.
AUTHORIZE_WAIT_SECONDS = 0.1


@dataclass(frozen=True)
class Authorizing:
    """A reserve whose Open-to-Buy check is under way as its batch locks its rows: the check's
    round trip and the lock's overlap. `go` resolves to whether the reserve still stands after
    the check; one refused, or not checked within AUTHORIZE_WAIT_SECONDS, is LEFT_OUT."""

    item: ReserveItem
    go: asyncio.Future[bool]


class _LeftOut:
    """The outcome of an `Authorizing` reserve the batch did not decide: nothing of it was written."""


LEFT_OUT = _LeftOut()

Item = ReserveItem | CaptureItem | VoidItem
# Per item: (the hold after, whether this item changed it) or the refusal. A hold of None: no such hold.
Outcome = tuple[Hold | None, bool] | DomainError | _LeftOut

_HOLD_COLUMNS = [c.key for c in HoldRow.__table__.columns]


def _mismatch(wanted: str, have: str) -> FailedPrecondition:
    return FailedPrecondition(f"currency {wanted} differs from the hold's {have}", field="currency_code",
                              reason="CURRENCY_MISMATCH")


def not_active(h: dict[str, Any]) -> FailedPrecondition:
    status, hid = h["status"], h["hold_id"]
    if status == EXPIRED:
        return FailedPrecondition(f"hold {hid!r} expired", reason="HOLD_EXPIRED")
    if status == VOIDED:
        return FailedPrecondition(f"hold {hid!r} was released", reason="HOLD_ALREADY_RELEASED")
    return FailedPrecondition(f"hold {hid!r} was captured", reason="HOLD_ALREADY_CAPTURED")


class _Batch:
    def __init__(self, tx: Tx, holds: dict[str, dict[str, Any]], wallets: dict[uuid.UUID, dict[str, int]],
                 spend: limits.Spend | None = None) -> None:
        self.tx, self.holds, self.wallets, self.spend = tx, holds, wallets, spend
        self.new: set[str] = set()
        self.changed: set[str] = set()
        self.moved: set[uuid.UUID] = set()

    def move(self, wallet_id: uuid.UUID, debits_posted: int = 0, debits_pending: int = 0) -> bool:
        w = self.wallets[wallet_id]
        if debits_posted + debits_pending > 0 and (
                w["debits_posted"] + w["debits_pending"] + debits_posted + debits_pending
                > w["credits_posted"] + w["credit_limit"]):
            return False
        w["debits_posted"] += debits_posted
        w["debits_pending"] += debits_pending
        if debits_posted > 0:  # a charge spends promotional credit first
            w["promo"] = max(w["promo"] - debits_posted, 0)
        self.moved.add(wallet_id)
        return True

    def after(self, wallet_id: uuid.UUID) -> dict[str, int]:
        w = self.wallets[wallet_id]
        return {"balance_after": w["credits_posted"] - w["debits_posted"], "held_after": w["debits_pending"]}

    def reserve(self, i: ReserveItem) -> Outcome:
        h = self.holds.get(i.hold_id)
        if h is not None:
            return _row(h), False
        if self.spend is not None and (refusal := self.spend.refuse(
                i.wallet_id, i.project_id, i.amount, self.wallets[i.wallet_id]["debits_pending"])):
            return refusal
        if not self.move(i.wallet_id, debits_pending=i.amount):
            return InsufficientFunds(f"wallet cannot cover {i.amount}", reason="INSUFFICIENT_FUNDS")
        now = utcnow()
        self.holds[i.hold_id] = dict(
            hold_id=i.hold_id, wallet_id=i.wallet_id, customer_id=i.customer_id, job_id=i.job_id,
            currency=i.currency, amount=i.amount, status=ACTIVE, captured=0, released=0, commission=0,
            reseller_id=i.reseller_id, commission_rate_bps=0, create_time=now, expire_time=i.expire_time,
            resolve_time=None, project_id=i.project_id, job_type_id=i.job_type_id)
        self.new.add(i.hold_id)
        if self.spend is not None:
            self.spend.held(i.wallet_id, i.project_id, i.amount)
        self.tx.defer(i.revenue_id, credits_pending=i.amount)
        self.tx.journal(kind=HOLD, debit_account_id=i.wallet_id, credit_account_id=i.revenue_id, amount=i.amount,
                        currency=i.currency, wallet_id=i.wallet_id, customer_id=i.customer_id, hold_id=i.hold_id,
                        job_id=i.job_id, description=i.description, create_time=now, **self.after(i.wallet_id))
        return _row(self.holds[i.hold_id]), True

    def capture(self, i: CaptureItem) -> Outcome:
        h = self.holds.get(i.hold_id)
        if h is None:
            return None, False
        if i.currency and i.currency != h["currency"]:
            return _mismatch(i.currency, h["currency"])
        actual = h["amount"] if i.amount > h["amount"] and i.policy == CAP_AT_HOLD else i.amount
        if h["status"] == CAPTURED:
            if h["captured"] == actual:
                return _row(h), False
            return FailedPrecondition(f"hold {i.hold_id!r} was captured at {h['captured']}",
                                      reason="HOLD_ALREADY_CAPTURED")
        if h["status"] != ACTIVE:
            return not_active(h)
        if actual > h["amount"] and i.policy != CHARGE_AVAILABLE:
            return FailedPrecondition(f"capture {i.amount} exceeds the hold {h['amount']}", field="amount_cents",
                                      reason="CAPTURE_EXCEEDS_HOLD")
        if not self.move(h["wallet_id"], debits_posted=actual, debits_pending=-h["amount"]):
            return InsufficientFunds(f"wallet cannot cover {actual - h['amount']} above the hold",
                                     reason="INSUFFICIENT_FUNDS")
        reseller = h["reseller_id"] if i.commission_account is not None else None
        rate = i.rate_bps if reseller is not None else 0
        commission = commission_of(actual, rate)
        now = utcnow()
        self.tx.defer(i.revenue_id, credits_pending=-h["amount"], credits_posted=actual, debits_posted=commission)
        self.tx.journal(kind=CAPTURE, debit_account_id=h["wallet_id"], credit_account_id=i.revenue_id,
                        amount=actual, pending_amount=h["amount"], currency=h["currency"], wallet_id=h["wallet_id"],
                        customer_id=h["customer_id"], hold_id=i.hold_id, job_id=h["job_id"],
                        description=i.description, reseller_id=reseller, commission_rate_bps=rate, create_time=now,
                        **self.after(h["wallet_id"]))
        if commission and i.commission_account is not None:
            self.tx.defer(i.commission_account, credits_posted=commission)
            self.tx.journal(kind=COMMISSION_T, debit_account_id=i.revenue_id, credit_account_id=i.commission_account,
                            amount=commission, currency=h["currency"], customer_id=h["customer_id"],
                            hold_id=i.hold_id, job_id=h["job_id"], reseller_id=reseller, commission_rate_bps=rate,
                            description=f"commission on {i.hold_id}", create_time=now)
        h.update(status=CAPTURED, captured=actual, released=max(h["amount"] - actual, 0), commission=commission,
                 commission_rate_bps=rate, resolve_time=now)
        if self.spend is not None:
            self.spend.held(h["wallet_id"], h["project_id"], -h["amount"])
            self.spend.charged(h["wallet_id"], h["project_id"], actual)
        self.changed.add(i.hold_id)
        return _row(h), True

    def void(self, i: VoidItem) -> Outcome:
        h = self.holds.get(i.hold_id)
        if h is None:
            return None, False
        if i.kind == EXPIRE and (h["status"] != ACTIVE or h["expire_time"] > i.now):
            return None, False
        if h["status"] in (VOIDED, EXPIRED):
            return _row(h), False
        if h["status"] != ACTIVE:
            return not_active(h)
        self.move(h["wallet_id"], debits_pending=-h["amount"])
        now = utcnow()
        self.tx.defer(i.revenue_id, credits_pending=-h["amount"])
        self.tx.journal(kind=i.kind, debit_account_id=h["wallet_id"], credit_account_id=i.revenue_id,
                        amount=h["amount"], currency=h["currency"], wallet_id=h["wallet_id"],
                        customer_id=h["customer_id"], hold_id=i.hold_id, job_id=h["job_id"],
                        description=i.description, create_time=now, **self.after(h["wallet_id"]))
        h.update(status=VOIDED if i.kind == VOID else EXPIRED, released=h["amount"], resolve_time=now)
        if self.spend is not None:
            self.spend.held(h["wallet_id"], h["project_id"], -h["amount"])
        self.changed.add(i.hold_id)
        return _row(h), True


def _row(h: dict[str, Any]) -> Hold:
    """A copy for the caller, as plain attributes."""
    return Hold(**h)


_HOLDS = cast(Table, HoldRow.__table__)
_ACCOUNTS = cast(Table, Account.__table__)
_WALLET_COLUMNS = ("id", "debits_posted", "credits_posted", "debits_pending", "credit_limit", "promo",
                   "low_balance_threshold", "low_balance_alerted", "spending_limited")


def _name(table: Table) -> sql.Identifier:
    return sql.Identifier(str(table.schema), table.name)


# The statements below are composed to text once, here: psycopg composes a `sql.Composed` again on
# every execution, a good part of a small transaction's client CPU.
#
# The batch's holds, then every wallet they or its reserves touch, locked in one order for all
# batches (holds by id, then wallets by id). A hold's wallet never changes, so the wallets' statement
# finds the wallets of the holds it captures or releases itself, and both go in one round trip (a
# reserve names its wallet: a batch of submits looks up no hold twice).
_LOCK_HOLDS = sql.SQL("SELECT {} FROM {} WHERE hold_id = ANY(%(holds)b) ORDER BY hold_id FOR UPDATE").format(
    sql.SQL(", ").join(map(sql.Identifier, _HOLD_COLUMNS)), _name(_HOLDS)).as_string()
_LOCK_WALLETS = sql.SQL(
    "SELECT {} FROM {} WHERE id = ANY(%(wallets)b::uuid[] || ARRAY(SELECT wallet_id FROM {} "
    "WHERE hold_id = ANY(%(settled)b::text[]))) ORDER BY id FOR UPDATE").format(
    sql.SQL(", ").join(map(sql.Identifier, _WALLET_COLUMNS)), _name(_ACCOUNTS), _name(_HOLDS)).as_string()
# One statement per batch for its resolved holds and its moved wallets (arrays, one row each;
# arrays go in binary, `%(name)b`, several times cheaper to dump: kit.db `_ARRAY_CAST`).
_RESOLVE_HOLDS = sql.SQL(
    "UPDATE {} AS h SET status = v.s, captured = v.c, released = v.r, commission = v.cm, "
    "commission_rate_bps = v.rate, resolve_time = v.rt FROM unnest(%(hid)b::text[], %(s)b::smallint[], "
    "%(c)b::bigint[], %(r)b::bigint[], %(cm)b::bigint[], %(rate)b::int[], %(rt)b::timestamptz[]) "
    "AS v(hid, s, c, r, cm, rate, rt) WHERE h.hold_id = v.hid").format(_name(_HOLDS)).as_string()
_MOVE_WALLETS = sql.SQL(
    "UPDATE {} AS a SET debits_posted = v.dp, debits_pending = v.dpe, promo = v.pr, low_balance_alerted = v.al, "
    "update_time = %(now)s FROM unnest(%(wid)b::uuid[], %(dp)b::bigint[], %(dpe)b::bigint[], %(pr)b::bigint[], "
    "%(al)b::boolean[]) AS v(wid, dp, dpe, pr, al) WHERE a.id = v.wid").format(_name(_ACCOUNTS)).as_string()


async def _lock(conn: Conn, items: list[Item]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The batch's hold rows and wallet rows, locked, with the transaction's BEGIN in one round trip."""
    driver = await driver_of(conn)
    params = {"holds": sorted({i.hold_id for i in items}),
              "wallets": sorted({i.wallet_id for i in items if isinstance(i, ReserveItem)}),
              "settled": sorted({i.hold_id for i in items if not isinstance(i, ReserveItem)})}
    try:
        holds, wallets = await roundtrip.run(driver, [(_LOCK_HOLDS, params, False), (_LOCK_WALLETS, params, False)])
    except psycopg.Error as exc:
        raise as_sqlalchemy_error(exc, "locking a ledger batch") from exc
    return roundtrip.rows(driver, holds, "dict"), roundtrip.rows(driver, wallets, "dict")


async def apply(conn: Conn, tx: Tx, queued: Sequence[Item | Authorizing]) -> list[Outcome]:
    items = [i.item if isinstance(i, Authorizing) else i for i in queued]
    hold_rows, wallet_rows = await _lock(conn, items)
    if checking := [i.go for i in queued if isinstance(i, Authorizing) and not i.go.done()]:
        await asyncio.wait(checking, timeout=AUTHORIZE_WAIT_SECONDS)
    holds = {r["hold_id"]: r for r in hold_rows}
    wallets = {r["id"]: {"debits_posted": r["debits_posted"], "credits_posted": r["credits_posted"],
                         "debits_pending": r["debits_pending"], "credit_limit": r["credit_limit"],
                         "promo": r["promo"], "threshold": r["low_balance_threshold"],
                         "alerted": r["low_balance_alerted"]}
               for r in wallet_rows}
    # (customer, currency) per wallet, for events: known from the holds and reserves themselves
    identity = {h["wallet_id"]: (h["customer_id"], h["currency"]) for h in holds.values()}
    identity.update({i.wallet_id: (i.customer_id, i.currency) for i in items if isinstance(i, ReserveItem)})
    limited = sorted(r["id"] for r in wallet_rows if r["spending_limited"])
    # Only wallets with a spending limit pay for it: their limits, counters and holds per project.
    spend = await limits.Spend.load(conn, limited) if limited else None
    batch = _Batch(tx, holds, wallets, spend)
    outcomes: list[Outcome] = []
    for item, entry in zip(items, queued, strict=True):
        if isinstance(entry, Authorizing) and not (entry.go.done() and not entry.go.cancelled() and entry.go.result()):
            outcomes.append(LEFT_OUT)
        elif isinstance(item, ReserveItem):
            outcomes.append(batch.reserve(item))
        elif isinstance(item, CaptureItem):
            outcomes.append(batch.capture(item))
        else:
            outcomes.append(batch.void(item))
    if batch.new:
        await tx.writes.insert(conn, _HOLDS, [holds[k] for k in sorted(batch.new)])
    if resolved := [holds[k] for k in sorted(batch.changed - batch.new)]:
        tx.writes.execute(_RESOLVE_HOLDS, {
            "hid": [h["hold_id"] for h in resolved], "s": [h["status"] for h in resolved],
            "c": [h["captured"] for h in resolved], "r": [h["released"] for h in resolved],
            "cm": [h["commission"] for h in resolved], "rate": [h["commission_rate_bps"] for h in resolved],
            "rt": [h["resolve_time"] for h in resolved]})
    if spend is not None:
        spend.save(tx.writes)
    if batch.moved:
        events = []
        for k in sorted(batch.moved):  # low-balance crossings, decided on the locked figures
            w = wallets[k]
            balance = w["credits_posted"] - w["debits_posted"]
            flip = alerts.flipped(balance - w["debits_pending"] + w["credit_limit"], w["threshold"], w["alerted"])
            if flip is not None:
                w["alerted"] = flip
                if flip:
                    events.append(alerts.event(k, *identity[k], balance, w["debits_pending"], w["credit_limit"],
                                               w["threshold"]))
        await alerts.record(tx, events)
        moved = sorted(batch.moved)
        tx.writes.execute(_MOVE_WALLETS, {
            "wid": moved, "dp": [wallets[k]["debits_posted"] for k in moved],
            "dpe": [wallets[k]["debits_pending"] for k in moved], "pr": [wallets[k]["promo"] for k in moved],
            "al": [wallets[k]["alerted"] for k in moved], "now": utcnow()})
    return outcomes


# A joined reserve (`BillingService.reserve_in`): one wallet's new holds written in the caller's
# commit with no read of the wallet before it. The wallet moves by a relative update guarded in its
# WHERE clause as `_Batch.reserve` decides on a locked row (no overdraft; and the rules that need
# more than the row, a spending limit or a low-balance alert to raise, are not taken here), the
# journal's running figures come from that update's RETURNING, and the closing check
# (`billing.guards_held`, migration 0004) fails the whole transaction with GUARDS_FAILED when a
# guard did not hold or a hold id exists (a repeat): the caller then reserves the usual way.
GUARDS_FAILED = "IB001"
_GUARDED = sql.SQL("""
WITH item AS (
    SELECT * FROM unnest(%(hid)b::text[], %(amount)b::bigint[], %(job)b::text[], %(expire)b::timestamptz[],
                         %(description)b::text[], %(project)b::text[], %(job_type)b::text[]) WITH ORDINALITY
        AS t(hold_id, amount, job_id, expire_time, description, project_id, job_type_id, pos)
), moved AS (
    UPDATE {accounts} AS a SET debits_pending = a.debits_pending + %(total)s, update_time = %(now)s
    WHERE a.id = %(wallet)s AND NOT a.spending_limited
      AND a.debits_posted + a.debits_pending + %(total)s <= a.credits_posted + a.credit_limit
      AND (a.low_balance_threshold > 0 AND a.credits_posted - a.debits_posted - a.debits_pending - %(total)s
           + a.credit_limit < a.low_balance_threshold) = a.low_balance_alerted
    RETURNING a.credits_posted - a.debits_posted AS balance, a.debits_pending - %(total)s AS held_before
), held AS (
    INSERT INTO {holds} (hold_id, wallet_id, customer_id, job_id, currency, amount, status, captured, released,
                         commission, reseller_id, commission_rate_bps, create_time, expire_time, project_id,
                         job_type_id)
    SELECT hold_id, %(wallet)s, %(customer)s, job_id, %(currency)s, amount, {active}, 0, 0, 0, %(reseller)s, 0,
           %(now)s, expire_time, project_id, job_type_id
    FROM item WHERE EXISTS (SELECT FROM moved)
    ON CONFLICT (hold_id) DO NOTHING
    RETURNING hold_id
), journal AS (
    INSERT INTO {transfers} (id, kind, debit_account_id, credit_account_id, amount, pending_amount, currency,
                             wallet_id, customer_id, balance_after, held_after, hold_id, job_id, description,
                             commission_rate_bps, create_time)
    SELECT billing.ordered_uuid(), {kind}, %(wallet)s, %(revenue)s, i.amount, 0, %(currency)s, %(wallet)s, %(customer)s,
           m.balance, m.held_before + sum(i.amount) OVER (ORDER BY i.pos), i.hold_id, i.job_id, i.description, 0,
           %(now)s
    FROM item AS i, moved AS m
)
SELECT billing.guards_held((SELECT count(*) FROM moved) = 1 AND (SELECT count(*) FROM held) = %(n)s)
""").format(accounts=_name(_ACCOUNTS), holds=_name(_HOLDS), transfers=_name(cast(Table, Transfer.__table__)),
            active=sql.Literal(ACTIVE), kind=sql.Literal(HOLD)).as_string()


def reserve_guarded(tx: Tx, items: Sequence[ReserveItem], now: datetime) -> list[Hold]:
    """One wallet's new holds queued in `tx`'s writes for its caller's COMMIT, each as a locked
    batch would store it (`_Batch.reserve`), and the revenue account's counters; the holds, as
    they are once that commit succeeds."""
    first = items[0]
    assert all(i.wallet_id == first.wallet_id and i.currency == first.currency for i in items), "one wallet"
    tx.writes.execute(_GUARDED, {
        "hid": [i.hold_id for i in items], "amount": [i.amount for i in items], "job": [i.job_id for i in items],
        "expire": [i.expire_time for i in items], "description": [i.description for i in items],
        "project": [i.project_id for i in items], "job_type": [i.job_type_id for i in items],
        "total": sum(i.amount for i in items), "n": len(items), "wallet": first.wallet_id,
        "customer": first.customer_id, "currency": first.currency, "reseller": first.reseller_id,
        "revenue": first.revenue_id, "now": now})
    for i in items:
        tx.defer(i.revenue_id, credits_pending=i.amount)
    return [Hold(hold_id=i.hold_id, wallet_id=i.wallet_id, customer_id=i.customer_id, job_id=i.job_id,
                 currency=i.currency, amount=i.amount, status=ACTIVE, captured=0, released=0, commission=0,
                 reseller_id=i.reseller_id, commission_rate_bps=0, create_time=now, expire_time=i.expire_time,
                 resolve_time=None, project_id=i.project_id, job_type_id=i.job_type_id) for i in items]


@dataclass(frozen=True)
class GuardedCapture:
    """One capture of a joined ending (`BillingService.capture_in`): `amount` at most `held`, what
    the hold was reserved for; its reseller's commission decided (`rate_bps`, none without one)."""

    hold_id: str
    amount: int
    held: int
    description: str
    reseller_id: uuid.UUID | None
    rate_bps: int
    commission: int
    commission_account: uuid.UUID | None
    revenue_id: uuid.UUID


# A joined capture (`BillingService.capture_in`): one wallet's captures written in the caller's
# commit, each as `_Batch.capture` decides on locked rows, guarded in the statement instead of read
# first: the hold still active, of this wallet, holding what its reserve held and of the reseller
# the commission was decided for; the wallet's spending not limited and no low-balance flag to flip
# (a capture within its hold never lowers what the wallet can spend, so it raises no alert, but may
# end one). The journal's running figures come from the wallet update's RETURNING, as for a joined
# reserve; any guard that did not hold fails the transaction with GUARDS_FAILED.
_CAPTURED = sql.SQL("""
WITH item AS (
    SELECT * FROM unnest(%(hid)b::text[], %(amount)b::bigint[], %(held)b::bigint[], %(description)b::text[],
                         %(reseller)b::uuid[], %(rate)b::int[], %(commission)b::bigint[], %(caccount)b::uuid[])
        WITH ORDINALITY AS t(hold_id, amount, held, description, reseller_id, rate, commission, caccount, pos)
), captured AS (
    UPDATE {holds} AS h SET status = {captured}, captured = i.amount, released = i.held - i.amount,
        commission = i.commission, commission_rate_bps = i.rate, resolve_time = %(now)s
    FROM item AS i
    WHERE h.hold_id = i.hold_id AND h.status = {active} AND h.wallet_id = %(wallet)s AND h.amount = i.held
      AND h.reseller_id IS NOT DISTINCT FROM i.reseller_id
    RETURNING h.hold_id, h.customer_id, h.job_id, i.amount, i.held, i.description, i.reseller_id, i.rate,
              i.commission, i.caccount, i.pos
), moved AS (
    UPDATE {accounts} AS a SET debits_posted = a.debits_posted + %(posted)s,
        debits_pending = a.debits_pending - %(pending)s, promo = greatest(a.promo - %(posted)s, 0),
        update_time = %(now)s
    WHERE a.id = %(wallet)s AND NOT a.spending_limited AND EXISTS (SELECT FROM captured)
      AND (a.low_balance_threshold > 0 AND a.credits_posted - a.debits_posted - %(posted)s - a.debits_pending
           + %(pending)s + a.credit_limit < a.low_balance_threshold) = a.low_balance_alerted
    RETURNING a.credits_posted - a.debits_posted + %(posted)s AS balance_before,
              a.debits_pending + %(pending)s AS held_before
), journal AS (
    INSERT INTO {transfers} (id, kind, debit_account_id, credit_account_id, amount, pending_amount, currency,
                             wallet_id, customer_id, balance_after, held_after, hold_id, job_id, description,
                             reseller_id, commission_rate_bps, create_time)
    SELECT billing.ordered_uuid(), {capture}, %(wallet)s, %(revenue)s, c.amount, c.held, %(currency)s, %(wallet)s,
           c.customer_id, m.balance_before - sum(c.amount) OVER w, m.held_before - sum(c.held) OVER w, c.hold_id,
           c.job_id, c.description, c.reseller_id, c.rate, %(now)s
    FROM captured AS c, moved AS m
    WINDOW w AS (ORDER BY c.pos)
), commissions AS (
    INSERT INTO {transfers} (id, kind, debit_account_id, credit_account_id, amount, pending_amount, currency,
                             customer_id, balance_after, held_after, hold_id, job_id, description, reseller_id,
                             commission_rate_bps, create_time)
    SELECT billing.ordered_uuid(), {commission}, %(revenue)s, c.caccount, c.commission, 0, %(currency)s, c.customer_id,
           0, 0, c.hold_id, c.job_id, 'commission on ' || c.hold_id, c.reseller_id, c.rate, %(now)s
    FROM captured AS c, moved AS m WHERE c.commission > 0
)
SELECT billing.guards_held((SELECT count(*) FROM captured) = %(n)s AND (SELECT count(*) FROM moved) = 1)
""").format(accounts=_name(_ACCOUNTS), holds=_name(_HOLDS), transfers=_name(cast(Table, Transfer.__table__)),
            active=sql.Literal(ACTIVE), captured=sql.Literal(CAPTURED), capture=sql.Literal(CAPTURE),
            commission=sql.Literal(COMMISSION_T)).as_string()


def capture_guarded(tx: Tx, wallet_id: uuid.UUID, currency: str, items: Sequence[GuardedCapture],
                    now: datetime) -> None:
    """One wallet's captures queued in `tx`'s writes for its caller's COMMIT (`_CAPTURED`), and the
    platform accounts' counters as `_Batch.capture` moves them."""
    revenue = items[0].revenue_id
    assert all(i.revenue_id == revenue and i.amount <= i.held for i in items), "one currency, within the holds"
    tx.writes.execute(_CAPTURED, {
        "hid": [i.hold_id for i in items], "amount": [i.amount for i in items], "held": [i.held for i in items],
        "description": [i.description for i in items], "reseller": [i.reseller_id for i in items],
        "rate": [i.rate_bps for i in items], "commission": [i.commission for i in items],
        "caccount": [i.commission_account for i in items], "posted": sum(i.amount for i in items),
        "pending": sum(i.held for i in items), "n": len(items), "wallet": wallet_id, "currency": currency,
        "revenue": revenue, "now": now})
    for i in items:
        tx.defer(revenue, credits_pending=-i.held, credits_posted=i.amount, debits_posted=i.commission)
        if i.commission and i.commission_account is not None:
            tx.defer(i.commission_account, credits_posted=i.commission)
