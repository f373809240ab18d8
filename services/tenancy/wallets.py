"""Opens a new customer's wallet at billing (`BillingService.OpenWallet`, idempotent).

`open_now` is tried before CreateCustomer answers, so that a top-up right after creation finds
the wallet; if billing cannot answer in time, the outbox row written with the customer (same
transaction) is delivered by the loop below instead, and the customer is created all the same.

The loop sleeps until the next row is due or until a new customer is committed (an event,
not a poll), claims due rows with SKIP LOCKED so several replicas share the work, and backs
off per row while billing is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

import grpc
from sqlalchemy import delete, func, select, update

from innosystem.billing.v1 import billing_pb2, billing_pb2_grpc
from innosystem.kit.db import Database, utcnow
from services.tenancy.models import WalletOpening

log = logging.getLogger(__name__)

BATCH = 100
MAX_BACKOFF_SECONDS = 60.0
IDLE_SECONDS = 30.0
# How long CreateCustomer waits for billing before leaving the wallet to the outbox.
OPEN_NOW_TIMEOUT_SECONDS = 2.0


class WalletOpener:
    def __init__(self, db: Database, billing: grpc.aio.Channel, call_timeout: float = 5.0,
                 open_now_timeout: float = OPEN_NOW_TIMEOUT_SECONDS) -> None:
        self.db = db
        self.call_timeout = call_timeout
        self.open_now_timeout = open_now_timeout
        self.stub = billing_pb2_grpc.BillingServiceStub(billing)
        self.wake = asyncio.Event()

    async def open_now(self, customer_id: uuid.UUID, reseller_id: uuid.UUID | None) -> bool:
        """Open the wallet of a customer just committed (its outbox row is written); True when
        billing confirmed and the row is gone, False when the loop will deliver it instead."""
        request = billing_pb2.OpenWalletRequest(customer_id=str(customer_id), reseller_id=str(reseller_id or ""))
        try:
            # No wait_for_ready: billing down fails at once and the outbox takes over.
            await self.stub.OpenWallet(request, timeout=self.open_now_timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("wallet of customer %s left to the outbox: %s %s", customer_id, exc.code().name,
                        exc.details())
            self.wake.set()
            return False
        async with self.db.session() as s:
            await s.execute(delete(WalletOpening).where(WalletOpening.customer_id == customer_id))
        return True

    async def run(self) -> None:
        while True:
            self.wake.clear()
            await self.deliver_due()
            await self._sleep_until_next()

    async def _sleep_until_next(self) -> None:
        async with self.db.session() as s:
            due = await s.scalar(select(func.min(WalletOpening.next_attempt_time)))
        delay = IDLE_SECONDS if due is None else max(0.0, (due - utcnow()).total_seconds())
        if delay > 0:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        """Open the wallets that are due; returns how many billing confirmed."""
        delivered = 0
        async with self.db.session() as s:
            rows = (await s.execute(
                select(WalletOpening).where(WalletOpening.next_attempt_time <= utcnow())
                .order_by(WalletOpening.next_attempt_time).limit(BATCH).with_for_update(skip_locked=True)
            )).scalars().all()
            for index, row in enumerate(rows):
                request = billing_pb2.OpenWalletRequest(customer_id=str(row.customer_id),
                                                        reseller_id=str(row.reseller_id or ""))
                try:
                    await self.stub.OpenWallet(request, timeout=self.call_timeout, wait_for_ready=True)
                except grpc.aio.AioRpcError as exc:
                    # Billing unreachable (or not serving wallets yet): back off this row and
                    # the rest of the batch instead of waiting out a timeout for each one.
                    error = f"{exc.code().name}: {exc.details()}"[:500]
                    for pending in rows[index:]:
                        backoff = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** pending.attempts)
                        await s.execute(update(WalletOpening)
                                        .where(WalletOpening.customer_id == pending.customer_id)
                                        .values(attempts=pending.attempts + 1, last_error=error,
                                                next_attempt_time=utcnow() + timedelta(seconds=backoff)))
                    log.warning("cannot open %d wallet(s) yet: %s", len(rows) - index, error)
                    break
                await s.execute(delete(WalletOpening).where(WalletOpening.customer_id == row.customer_id))
                delivered += 1
        return delivered
