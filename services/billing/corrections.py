"""Refunds and adjustments: money moved between platform revenue and a wallet by a person.

Both are one balanced transfer (REFUND or ADJUSTMENT) in the group commit, never an edit of an
earlier one. Each operation first locks the wallet row, so its checks (the request id not used yet,
a refund within what the job was charged minus what was refunded already) see every earlier
refund of the wallet, whichever replica or batch committed it. PostgreSQL first, then Redis, as
for a top-up: a crash in between leaves Redis trailing, which reconciliation repairs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing import alerts
from services.billing.batcher import Tx
from services.billing.models import ADJUSTMENT, PLATFORM, REFUND, REVENUE, Account, Transfer
from services.billing.otb import InsufficientFunds
from services.billing.repository import BillingRepository
from services.billing.service import MAX_DESCRIPTION, MAX_ID, BillingService, _text


@dataclass(frozen=True)
class Moved:
    """A refund's or adjustment's outcome: the wallet after and the journal entry."""

    wallet: Account
    transfer: Transfer


class Corrections:
    def __init__(self, billing: BillingService, *, reseller_refund_limit: int = 0) -> None:
        self.billing = billing
        # Largest refund a reseller may post for one of its customers; 0: only an admin refunds.
        self.reseller_refund_limit = reseller_refund_limit

    async def refund(self, caller: Principal, customer_id: str, job_id: str, amount: int, reason: str,
                     request_id: str) -> Moved:
        b = self.billing
        visible = await b._visible_wallet(caller, customer_id, "")
        is_reseller = (caller.kind == principals.RESELLER and visible.reseller_id is not None
                       and caller.reseller_id == str(visible.reseller_id))
        if caller.kind != principals.ADMIN and not is_reseller:
            raise PermissionDenied("only an admin or the customer's reseller may refund", reason="REFUND_NOT_ALLOWED")
        job_id = _text(job_id, "job_id", MAX_ID, required=True)
        amount = b._amount(amount, "amount_cents")
        reason = _text(reason, "reason", MAX_DESCRIPTION, required=True)
        request_id = _text(request_id, "request_id", MAX_ID, required=True)
        if is_reseller and amount > self.reseller_refund_limit:
            raise PermissionDenied(f"a reseller may refund at most {self.reseller_refund_limit} minor units at once",
                                   field="amount_cents", reason="REFUND_ABOVE_RESELLER_LIMIT")
        async with b.db.session() as s:
            charged = await BillingRepository(s).job_charges(visible.owner_id, job_id)
        if not charged:
            raise NotFound(f"no captured job {job_id!r} for this customer", field="job_id",
                           reason="CAPTURE_NOT_FOUND")
        wallet_id, currency, _ = charged[0]
        revenue = await b._account_id(REVENUE, PLATFORM, currency)

        async def op(tx: Tx) -> tuple[Moved, bool]:
            repo = BillingRepository(tx.session)
            await repo.lock_account(wallet_id)
            first = await repo.money_by_request(wallet_id, request_id)
            if first is not None:
                if (first.kind, first.amount, first.job_id, first.description) != (REFUND, amount, job_id, reason):
                    raise _reused(request_id)
                return Moved(await repo.existing_account(wallet_id), first), False
            captured = sum(c for w, _, c in await repo.job_charges(visible.owner_id, job_id) if w == wallet_id)
            refunded = await repo.job_refunds(wallet_id, job_id)
            if amount > captured - refunded:
                raise FailedPrecondition(f"refund {amount} exceeds what job {job_id!r} was charged ({captured}) "
                                         f"minus earlier refunds ({refunded})", field="amount_cents",
                                         reason="REFUND_EXCEEDS_CAPTURE")
            moved = await repo.move_wallet(wallet_id, credits_posted=amount)
            assert moved is not None  # a credit is never refused
            tx.defer(revenue, debits_posted=amount)
            transfer = await repo.insert_transfer(dict(
                kind=REFUND, debit_account_id=revenue, credit_account_id=wallet_id, amount=amount, currency=currency,
                wallet_id=wallet_id, customer_id=visible.owner_id, balance_after=moved[0], held_after=moved[1],
                job_id=job_id, request_id=request_id, description=reason, create_time=utcnow()))
            await alerts.check(tx, wallet_id)
            return Moved(await repo.existing_account(wallet_id), transfer), True

        result, fresh = await b.commit.run(op)
        if fresh:
            await b._redis_quietly(b.otb.top_up(result.wallet.owner_id, result.wallet.currency, amount))
        return result

    async def adjust(self, caller: Principal, customer_id: str, amount: int, reason: str, request_id: str,
                     currency: str, reconciliation_id: str) -> Moved:
        b = self.billing
        wallet = await b._visible_wallet(caller, customer_id, currency)
        principals.require_admin(caller)
        if amount == 0:
            raise InvalidArgument("amount_cents must not be zero", field="amount_cents", reason="INVALID_AMOUNT")
        size = b._amount(abs(amount), "amount_cents")
        reason = _text(reason, "reason", MAX_DESCRIPTION, required=True)
        request_id = _text(request_id, "request_id", MAX_ID, required=True)
        if reconciliation_id:
            try:
                rid = uuid.UUID(reconciliation_id)
            except ValueError:
                rid = None
            async with b.db.session() as s:
                found = rid is not None and await BillingRepository(s).reconciliation(rid) is not None
            if not found:
                raise NotFound(f"reconciliation {reconciliation_id!r} not found", field="reconciliation_id",
                               reason="RECONCILIATION_NOT_FOUND")
            reason = f"{reason} (reconciliation {rid})"
        revenue = await b._account_id(REVENUE, PLATFORM, wallet.currency)
        # A credit moves money from revenue to the wallet, a debit the other way.
        debit, credit = (revenue, wallet.id) if amount > 0 else (wallet.id, revenue)

        async def op(tx: Tx) -> tuple[Moved, bool]:
            repo = BillingRepository(tx.session)
            await repo.lock_account(wallet.id)
            first = await repo.money_by_request(wallet.id, request_id)
            if first is not None:
                if (first.kind, first.amount, first.credit_account_id, first.description) != (
                        ADJUSTMENT, size, credit, reason):
                    raise _reused(request_id)
                return Moved(await repo.existing_account(wallet.id), first), False
            if amount > 0:
                moved = await repo.move_wallet(wallet.id, credits_posted=size)
                tx.defer(revenue, debits_posted=size)
            else:
                moved = await repo.move_wallet(wallet.id, debits_posted=size)
                if moved is None:
                    raise InsufficientFunds(f"the wallet cannot cover a debit of {size}", field="amount_cents",
                                            reason="INSUFFICIENT_FUNDS")
                tx.defer(revenue, credits_posted=size)
            assert moved is not None
            transfer = await repo.insert_transfer(dict(
                kind=ADJUSTMENT, debit_account_id=debit, credit_account_id=credit, amount=size,
                currency=wallet.currency, wallet_id=wallet.id, customer_id=wallet.owner_id, balance_after=moved[0],
                held_after=moved[1], request_id=request_id, description=reason, create_time=utcnow()))
            await alerts.check(tx, wallet.id)
            return Moved(await repo.existing_account(wallet.id), transfer), True

        result, fresh = await b.commit.run(op)
        if fresh:
            await b._redis_quietly(b.otb.top_up(wallet.owner_id, wallet.currency, amount))
        return result


def _reused(request_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"request_id {request_id!r} was used for another refund or adjustment",
                              field="request_id", reason="IDEMPOTENCY_KEY_REUSED")


