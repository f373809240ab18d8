"""Credit grants: promotional credit with an expiry, spent before the paid balance.

A grant is a CREDIT_GRANT transfer from the platform's promotion account into the wallet, and it
raises the wallet's `promo` counter (the promotional part of the balance). Every posted debit of
the wallet (a capture on the hot path, a debit adjustment) lowers `promo` first, with no look at
the grants; which grants the spending came from (soonest expiry first) is worked out only when a
grant is added or expires (`materialize_grants`, wallet locked), so captures stay one counter
update. At its expiry the grant's unspent rest goes back to the promotion account by a
CREDIT_EXPIRE transfer. The rest taken is capped at what the wallet has free (balance minus
holds): a job holding money the grant paid for keeps it, and never overdraws the wallet.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from innosystem.kit import pagination
from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import FailedPrecondition, InvalidArgument
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing import alerts
from services.billing.batcher import Tx
from services.billing.models import CREDIT_EXPIRE, CREDIT_GRANT, PLATFORM, PROMOTION, Account, CreditGrantRow, Transfer
from services.billing.repository import BillingRepository
from services.billing.service import MAX_DESCRIPTION, MAX_ID, BillingService, Page, _text

log = logging.getLogger(__name__)

ACTIVE, EXPIRED = 1, 2  # CreditGrantStatus
MAX_LIFETIME = timedelta(days=3660)
EXPIRY_BATCH = 200


@dataclass(frozen=True)
class Granted:
    wallet: Account
    grant: CreditGrantRow
    transfer: Transfer


class CreditGrants:
    def __init__(self, billing: BillingService) -> None:
        self.billing = billing
        self.wake = asyncio.Event()
        self._sleep_until: datetime | None = None

    async def grant(self, caller: Principal, customer_id: str, amount: int, expire_time: datetime | None,
                    reason: str, request_id: str, currency: str) -> Granted:
        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        principals.require_admin(caller)
        amount = b._amount(amount, "amount_cents")
        now = utcnow()
        if expire_time is None or not now < expire_time <= now + MAX_LIFETIME:
            raise InvalidArgument("expire_time must be in the future and at most 10 years ahead", field="expire_time",
                                  reason="INVALID_EXPIRE_TIME")
        reason = _text(reason, "reason", MAX_DESCRIPTION, required=True)
        request_id = _text(request_id, "request_id", MAX_ID, required=True)
        promotion = await b._account_id(PROMOTION, PLATFORM, wallet.currency)

        async def op(tx: Tx) -> tuple[Granted, bool]:
            repo = BillingRepository(tx.session)
            await repo.lock_account(wallet.id)
            first = await repo.grant_by_request(wallet.id, request_id)
            if first is not None:
                if (first.amount, first.expire_time, first.reason) != (amount, expire_time, reason):
                    raise FailedPrecondition(f"request_id {request_id!r} was used for another grant",
                                             field="request_id", reason="IDEMPOTENCY_KEY_REUSED")
                transfer = await tx.session.get(Transfer, first.id)
                assert transfer is not None
                return Granted(await repo.existing_account(wallet.id), first, transfer), False
            await repo.materialize_grants(await repo.existing_account(wallet.id))
            moved = await repo.move_wallet(wallet.id, credits_posted=amount, promo=amount)
            assert moved is not None
            tx.defer(promotion, debits_posted=amount)
            # The grant and its transfer share the id: the journal entry is found from the grant.
            gid = uuid.uuid4()
            transfer = await repo.insert_transfer(dict(
                id=gid, kind=CREDIT_GRANT, debit_account_id=promotion, credit_account_id=wallet.id, amount=amount,
                currency=wallet.currency, wallet_id=wallet.id, customer_id=wallet.owner_id, balance_after=moved[0],
                held_after=moved[1], request_id=request_id, description=reason, create_time=utcnow()))
            grant = CreditGrantRow(id=gid, wallet_id=wallet.id, customer_id=wallet.owner_id, currency=wallet.currency,
                                   amount=amount, remaining=amount, expired=0, status=ACTIVE, reason=reason,
                                   request_id=request_id, create_time=transfer.create_time, expire_time=expire_time)
            await repo.add_grant(grant)
            await alerts.check(tx, wallet.id)
            return Granted(await repo.existing_account(wallet.id), grant, transfer), True

        result, fresh = await b.commit.run(op)
        if fresh:
            await b._redis_quietly(b.otb.top_up(wallet.owner_id, wallet.currency, amount))
            if self._sleep_until is None or expire_time < self._sleep_until:
                self.wake.set()
        return result

    async def list(self, caller: Principal, customer_id: str, size: int, token: str, currency: str) -> Page:
        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        size = pagination.page_size(size)
        before = pagination.decode_keyset(token)

        async def op(tx: Tx) -> list[CreditGrantRow]:
            # remaining is exact only once the wallet's spending is attributed (wallet locked)
            repo = BillingRepository(tx.session)
            await repo.lock_account(wallet.id)
            await repo.materialize_grants(await repo.existing_account(wallet.id))
            return await repo.grants(wallet.id, size + 1, before)

        rows: list[CreditGrantRow] = await b.commit.run(op)
        if len(rows) > size:
            last = rows[size - 1]
            return Page(rows[:size], pagination.encode_token(last.create_time.isoformat(), str(last.id)))
        return Page(rows, "")

    async def expire_due(self, now: datetime | None = None) -> int:
        """Expire the grants due at `now`, each in its own operation (one wallet's failure is its own)."""
        now = now or utcnow()
        async with self.billing.db.session() as s:
            due = await BillingRepository(s).due_grants(now, EXPIRY_BATCH)
        done = await asyncio.gather(*(self._expire(g.id, g.wallet_id, g.currency, now) for g in due),
                                    return_exceptions=True)
        for r in done:
            if isinstance(r, BaseException):
                log.warning("expiring a credit grant failed: %s", r)
        return sum(1 for r in done if r is True)

    async def _expire(self, grant_id: uuid.UUID, wallet_id: uuid.UUID, currency: str, now: datetime) -> bool:
        b = self.billing
        promotion = await b._account_id(PROMOTION, PLATFORM, currency)

        async def op(tx: Tx) -> tuple[Account, int] | None:
            repo = BillingRepository(tx.session)
            await repo.lock_account(wallet_id)
            wallet = await repo.existing_account(wallet_id)
            grants = await repo.materialize_grants(wallet)
            grant = next((g for g in grants if g.id == grant_id and g.expire_time <= now), None)
            if grant is None:
                return None  # expired already (another replica), or not due
            free = max(wallet.balance - wallet.held, 0)
            take = min(grant.remaining, free)
            if take:
                moved = await repo.move_wallet(wallet_id, debits_posted=take, promo=-(grant.remaining - take))
                assert moved is not None  # take <= balance - held
                tx.defer(promotion, credits_posted=take)
                await repo.insert_transfer(dict(
                    kind=CREDIT_EXPIRE, debit_account_id=wallet_id, credit_account_id=promotion, amount=take,
                    currency=currency, wallet_id=wallet_id, customer_id=wallet.owner_id, balance_after=moved[0],
                    held_after=moved[1], request_id=f"expire-{grant_id}",
                    description=f"credit grant {grant_id} expired", create_time=utcnow()))
            elif grant.remaining:
                await repo.move_wallet(wallet_id, promo=-grant.remaining)
            grant.expired, grant.remaining, grant.status = take, 0, EXPIRED
            await alerts.check(tx, wallet_id)
            await tx.session.flush()
            return wallet, take

        outcome = await b.commit.run(op)
        if outcome is None:
            return False
        wallet, take = outcome
        if take:
            await b._redis_quietly(b.otb.top_up(wallet.owner_id, wallet.currency, -take))
        return True

    async def expire_forever(self) -> None:
        """Expire grants at their deadline: sleep until the next one, woken early by a nearer new grant."""
        while True:
            self.wake.clear()
            if await self.expire_due() >= EXPIRY_BATCH:
                continue
            async with self.billing.db.session() as s:
                nxt = await BillingRepository(s).next_grant_expiry()
            delay = 300.0 if nxt is None else min(max(0.0, (nxt - utcnow()).total_seconds()) + 0.01, 300.0)
            self._sleep_until = utcnow() + timedelta(seconds=delay)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except TimeoutError:
                pass

