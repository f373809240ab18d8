"""Low-balance alerts: one `wallet.low_balance` event each time a wallet's available amount falls
below its threshold.

A wallet is armed while available ≥ threshold; the change that takes it below records one event
and disarms it (`low_balance_alerted`); the next change that brings it back re-arms it. The flag
is decided in the same transaction as the change, under the wallet's row lock, so concurrent
operations and replicas give one event per crossing. The ledger's batch decides it in memory
from the figures it has locked anyway (no statement unless a flag flips); the other operations
(top-up, refund, adjustment, grant, limits) call `check` with one conditional UPDATE.

Events are stored (`billing.wallet_events`, read by ListWalletEvents, and in store order by
jobs' webhook fan-out through ListWalletEventsAfter) and, after the commit, published best effort
as JSON on the Redis channel `billing:wallet-events` for whoever delivers notifications: losing a
publish loses no event, the table has it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from sqlalchemy import Table, select, update

from innosystem.kit import pagination
from innosystem.kit import principal as principals
from innosystem.kit.db import copy_rows, utcnow
from innosystem.kit.errors import InvalidArgument, PermissionDenied
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.batcher import Tx
from services.billing.models import Account, WalletEventRow

_EVENTS = cast(Table, WalletEventRow.__table__)

if TYPE_CHECKING:
    from services.billing.service import BillingService

log = logging.getLogger(__name__)

LOW_BALANCE = "wallet.low_balance"
CHANNEL = "billing:wallet-events"
MAX_FEED = 1000


def flipped(available: int, threshold: int, alerted: bool) -> bool | None:
    """The wallet's new `low_balance_alerted` if this change flips it, else None."""
    low = threshold > 0 and available < threshold
    return low if low != alerted else None


def event(wallet_id: uuid.UUID, customer_id: uuid.UUID, currency: str, balance: int, held: int, credit_limit: int,
          threshold: int) -> dict[str, Any]:
    return dict(id=uuid.uuid4(), type=LOW_BALANCE, customer_id=customer_id, wallet_id=wallet_id, currency=currency,
                available=balance - held + credit_limit, balance=balance, held=held, threshold=threshold,
                create_time=utcnow())


async def record(tx: Tx, events: list[dict[str, Any]]) -> None:
    """Store the events in the batch's transaction and hand them to the publisher after its commit."""
    if events:
        await copy_rows(tx.conn, _EVENTS, events)
        tx.events.extend(events)


async def check(tx: Tx, wallet_id: uuid.UUID) -> None:
    """After an operation moved the wallet (row locked): flip the flag if it crossed, record the event."""
    a = Account.__table__.c
    available = a.credits_posted - a.debits_posted - a.debits_pending + a.credit_limit
    low = (a.low_balance_threshold > 0) & (available < a.low_balance_threshold)
    row = (await tx.session.execute(
        update(Account).where(a.id == wallet_id, a.low_balance_alerted.is_distinct_from(low))
        .values(low_balance_alerted=low)
        .returning(a.owner_id, a.currency, a.low_balance_alerted, a.credits_posted - a.debits_posted,
                   a.debits_pending, a.credit_limit, a.low_balance_threshold))).first()
    if row is not None and row[2]:
        await record(tx, [event(wallet_id, row[0], row[1], int(row[3]), int(row[4]), int(row[5]), int(row[6]))])


def as_json(e: dict[str, Any]) -> str:
    """The published shape (docs/billing.md): the REST field names of WalletEvent."""
    return json.dumps({
        "id": str(e["id"]), "type": e["type"], "customerId": str(e["customer_id"]), "walletId": str(e["wallet_id"]),
        "currencyCode": e["currency"], "availableCents": e["available"], "balanceCents": e["balance"],
        "heldCents": e["held"], "thresholdCents": e["threshold"],
        "createTime": e["create_time"].isoformat().replace("+00:00", "Z")})


class Publisher:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def __call__(self, events: Sequence[dict[str, Any]]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for e in events:
                    pipe.publish(CHANNEL, as_json(e))
                await pipe.execute()
        except Exception as exc:  # the table has them; a subscriber that missed one lists them
            log.warning("publishing %d wallet events failed: %s", len(events), exc)


class LowBalanceAlerts:
    """Setting a wallet's threshold and reading its events (the use cases)."""

    def __init__(self, billing: BillingService) -> None:
        self.billing = billing

    async def set_threshold(self, caller: Principal, customer_id: str, currency: str, threshold: int) -> Account:
        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        if caller.kind not in (principals.ADMIN, principals.RESELLER, principals.CUSTOMER):
            raise PermissionDenied("not allowed to change the low-balance threshold", reason="PERMISSION_DENIED")
        if threshold < 0 or threshold > b.max_amount:
            raise InvalidArgument(f"low_balance_threshold_cents must be between 0 and {b.max_amount}",
                                  field="wallet.low_balance_threshold_cents", reason="INVALID_AMOUNT")

        async def op(tx: Tx) -> Account:
            await tx.session.execute(update(Account).where(Account.id == wallet.id)
                                     .values(low_balance_threshold=threshold, update_time=utcnow()))
            await check(tx, wallet.id)
            acc = await tx.session.get(Account, wallet.id, populate_existing=True)
            assert acc is not None
            return acc

        row: Account = await b.commit.run(op)
        return row

    async def events(self, caller: Principal, customer_id: str, size: int, token: str,
                     currency: str) -> tuple[list[WalletEventRow], str]:
        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        size = pagination.page_size(size)
        key = pagination.decode_token(token, 1)
        q = select(WalletEventRow).where(WalletEventRow.wallet_id == wallet.id)
        if key is not None:
            if not isinstance(key[0], int):
                raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN")
            q = q.where(WalletEventRow.seq < key[0])
        async with b.db.session() as s:
            rows = list((await s.scalars(q.order_by(WalletEventRow.seq.desc()).limit(size + 1))).all())
        if len(rows) > size:
            return rows[:size], pagination.encode_token(rows[size - 1].seq)
        return rows, ""

    async def after(self, after_seq: int, limit: int) -> list[WalletEventRow]:
        """Every wallet's events past `after_seq` in seq order (the internal feed)."""
        if not 1 <= limit <= MAX_FEED:
            raise InvalidArgument(f"limit must be between 1 and {MAX_FEED}", field="limit", reason="INVALID_PAGE_SIZE")
        e = WalletEventRow
        async with self.billing.db.session() as s:
            return list((await s.scalars(select(e).where(e.seq > after_seq).order_by(e.seq).limit(limit))).all())
