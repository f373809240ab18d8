"""Billing's tables (schema `billing`): accounts, the append-only transfer journal, holds, reconciliations.

Accounts keep TigerBeetle's four counters, updated in the same transaction as the journal rows
that move them. A wallet is credit-normal: balance = credits_posted - debits_posted, held =
debits_pending, and the database itself refuses an overdraft (CHECK `no_overdraft`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from innosystem.kit.db import keywords_init, new_id, schema_metadata, utcnow


class Base(DeclarativeBase):
    metadata = schema_metadata("billing")


Timestamp = TIMESTAMP(timezone=True)

# Account kinds. PROMOTION: where credit grants come from and their expired rests go back to.
WALLET, COMMISSION, REVENUE, FUNDING, PROMOTION = 1, 2, 3, 4, 5
# Platform accounts (revenue, funding) have this owner.
PLATFORM = uuid.UUID(int=0)

# Transfer kinds = TransferKind enum values.
TOP_UP, HOLD, CAPTURE, VOID, EXPIRE, REFUND, ADJUSTMENT, COMMISSION_T = 1, 2, 3, 4, 5, 6, 7, 8
CREDIT_GRANT, CREDIT_EXPIRE = 9, 10
RESOLUTIONS = (CAPTURE, VOID, EXPIRE)

# Hold statuses = HoldStatus enum values.
ACTIVE, CAPTURED, VOIDED, EXPIRED = 1, 2, 3, 4


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind IN (1, 2, 3, 4, 5)", name="kind_known"),
        CheckConstraint("promo >= 0", name="promo_nonnegative"),
        CheckConstraint("low_balance_threshold >= 0", name="low_balance_threshold_nonnegative"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso"),
        CheckConstraint("debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 "
                        "AND credits_pending >= 0", name="counters_nonnegative"),
        CheckConstraint("credit_limit >= 0", name="credit_limit_nonnegative"),
        CheckConstraint("kind <> 1 OR debits_posted + debits_pending <= credits_posted + credit_limit",
                        name="no_overdraft"),
        Index(None, "kind", "owner_id", "currency", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    kind: Mapped[int] = mapped_column(SmallInteger)
    # Customer (wallet), reseller (commission) or PLATFORM.
    owner_id: Mapped[uuid.UUID] = mapped_column(UUID)
    currency: Mapped[str] = mapped_column(String(3))
    # Wallets: the customer's reseller, who earns commission on its captures.
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    credit_limit: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    # Wallets: the part of the balance that is unspent promotional credit. Posted debits spend it
    # first (never below 0); the credit_grants rows say which grants it is left of.
    promo: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Wallets: a low-balance event is due when available falls below the threshold (0: off);
    # `low_balance_alerted` until available is back at or above it (one event per crossing).
    low_balance_threshold: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    low_balance_alerted: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    # Wallets: any spending limit set, so reserves check limits and captures keep spend counters.
    spending_limited: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    @property
    def balance(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def held(self) -> int:
        return self.debits_pending


class Transfer(Base):
    """One journal entry. Rows are never updated or deleted (a trigger refuses it).

    Effects on the counters: TOP_UP, REFUND, ADJUSTMENT, COMMISSION, CREDIT_GRANT and CREDIT_EXPIRE
    post `amount`; HOLD adds `amount` to pending; CAPTURE posts `amount` and removes
    `pending_amount` (the hold) from pending; VOID and EXPIRE remove `amount` (the hold) from pending.
    """

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("kind BETWEEN 1 AND 10", name="kind_known"),
        CheckConstraint("amount > 0 OR (kind = 3 AND amount = 0)", name="amount_positive"),
        CheckConstraint("pending_amount >= 0 AND (kind = 3 OR pending_amount = 0)", name="pending_amount_capture"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        CheckConstraint("kind NOT IN (2, 3, 4, 5) OR hold_id IS NOT NULL", name="hold_id_present"),
        # A hold is created once and resolves at most once (capture, void or expire).
        Index("uq_transfers_hold_created", "hold_id", unique=True, postgresql_where=text("kind = 2")),
        Index("uq_transfers_hold_resolved", "hold_id", unique=True, postgresql_where=text("kind IN (3, 4, 5)")),
        # Top-ups are idempotent per wallet on the caller's request id.
        Index("uq_transfers_top_up_request", "credit_account_id", "request_id", unique=True,
              postgresql_where=text("kind = 1")),
        # Refunds and adjustments are idempotent per wallet on the caller's request id.
        Index("uq_transfers_money_request", "wallet_id", "request_id", unique=True,
              postgresql_where=text("kind IN (6, 7)")),
        # A job's earlier refunds (a refund never exceeds the job's captures).
        Index("ix_transfers_refund_job", "wallet_id", "job_id", postgresql_where=text("kind = 6")),
        Index(None, "wallet_id", "seq"),
        # Statements: a wallet's transfers by month.
        Index(None, "wallet_id", "create_time"),
        Index(None, "reseller_id", "create_time", postgresql_where=text("reseller_id IS NOT NULL")),
    )

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    kind: Mapped[int] = mapped_column(SmallInteger)
    debit_account_id: Mapped[uuid.UUID] = mapped_column(UUID)
    credit_account_id: Mapped[uuid.UUID] = mapped_column(UUID)
    amount: Mapped[int] = mapped_column(BigInteger)
    pending_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    # The customer wallet concerned, if any, and its posted balance and held amount after this transfer.
    wallet_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    balance_after: Mapped[int] = mapped_column(BigInteger, default=0)
    held_after: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_id: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[str] = mapped_column(String(200), default="")
    request_id: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # Commission snapshot (CAPTURE and COMMISSION).
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    commission_rate_bps: Mapped[int] = mapped_column(default=0)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class HoldRow(Base):
    """The current state of an Open-to-Buy hold (its history is in the journal)."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("status BETWEEN 1 AND 4", name="status_known"),
        CheckConstraint("captured >= 0 AND released >= 0 AND (status = 1 OR captured + released "
                        "= amount OR captured > amount)", name="resolution_sums"),
        Index("ix_holds_active_expire_time", "expire_time", postgresql_where=text("status = 1")),
        Index(None, "wallet_id", postgresql_where=text("status = 1")),
        # Refunds find a job's captures.
        Index(None, "customer_id", "job_id"),
        # Usage reports: captures by time.
        Index("ix_holds_captured_customer", "customer_id", "resolve_time", postgresql_where=text("status = 2")),
        # The jobs service's sweep for holds whose submit died before the job's commit.
        Index("ix_holds_active_create_time", "create_time", "hold_id", postgresql_where=text("status = 1")),
    )

    hold_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    wallet_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    job_id: Mapped[str] = mapped_column(String(200), default="")
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[int] = mapped_column(SmallInteger, default=ACTIVE)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)
    released: Mapped[int] = mapped_column(BigInteger, default=0)
    commission: Mapped[int] = mapped_column(BigInteger, default=0)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    commission_rate_bps: Mapped[int] = mapped_column(default=0)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expire_time: Mapped[datetime] = mapped_column(Timestamp)
    resolve_time: Mapped[datetime | None] = mapped_column(Timestamp)
    # The job's project ("" if the caller named none): per-project spending limits.
    project_id: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # The job's type ("" if the caller named none): usage reports.
    job_type_id: Mapped[str] = mapped_column(String(200), default="", server_default="")


class Hold:
    """A hold's state as plain attributes named after `HoldRow`'s columns: what a ledger batch
    answers with (an ORM object per hold was a sixth of billing's CPU in batch submits)."""

    __slots__ = tuple(c.key for c in HoldRow.__table__.columns)
    __init__ = keywords_init(__slots__)  # the columns as keywords; those not given are None

    if TYPE_CHECKING:  # the columns, as HoldRow declares them
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


# What the service answers with: a ledger batch's plain hold or a row read through the ORM.
AnyHold = Hold | HoldRow


class ReconciliationRow(Base):
    """An auditable reconciliation run: what was checked, what was found, what was repaired."""

    __tablename__ = "reconciliations"
    __table_args__ = (Index(None, "start_time", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    trigger: Mapped[int] = mapped_column(SmallInteger)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    dry_run: Mapped[bool] = mapped_column(default=False)
    start_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    complete_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    wallets_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    holds_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    transfers_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    consistent: Mapped[bool] = mapped_column(default=True)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)


class CreditGrantRow(Base):
    """Promotional credit in a wallet. `remaining` is exact after `materialize` (wallet locked):
    the wallet's `promo` counter is spent on the hot path, and the grants are told which of them
    it came from (soonest expiry first) only when one is added or expires."""

    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint("amount > 0 AND remaining >= 0 AND remaining <= amount AND expired >= 0",
                        name="amounts_valid"),
        CheckConstraint("status IN (1, 2)", name="status_known"),
        Index("uq_credit_grants_request", "wallet_id", "request_id", unique=True),
        Index("ix_credit_grants_active_expire_time", "expire_time", postgresql_where=text("status = 1")),
        Index(None, "wallet_id", "create_time", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    wallet_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expired: Mapped[int] = mapped_column(BigInteger, default=0)
    # CreditGrantStatus: 1 active, 2 expired.
    status: Mapped[int] = mapped_column(SmallInteger, default=1)
    reason: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[str] = mapped_column(String(200))
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expire_time: Mapped[datetime] = mapped_column(Timestamp)


class WalletEventRow(Base):
    """A wallet event (low balance) for its owner's notification channels; append-only."""

    __tablename__ = "wallet_events"
    __table_args__ = (Index(None, "wallet_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(100))
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    wallet_id: Mapped[uuid.UUID] = mapped_column(UUID)
    currency: Mapped[str] = mapped_column(String(3))
    available: Mapped[int] = mapped_column(BigInteger)
    balance: Mapped[int] = mapped_column(BigInteger)
    held: Mapped[int] = mapped_column(BigInteger)
    threshold: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class SpendingLimitRow(Base):
    """A monthly spending limit of a wallet: the whole customer (project_id "") or one project."""

    __tablename__ = "spending_limits"
    __table_args__ = (CheckConstraint("monthly_limit >= 0", name="limit_nonnegative"),)

    wallet_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    project_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    monthly_limit: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class SpendCounterRow(Base):
    """What a limited wallet's captures charged per project and UTC month (kept only while the
    wallet has limits; rebuilt from the journal when a first limit is set)."""

    __tablename__ = "spend_counters"

    wallet_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    project_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)


class ExchangeRateRow(Base):
    """Quote minor units per million base minor units from `effective_time` on; never edited."""

    __tablename__ = "exchange_rates"
    __table_args__ = (
        CheckConstraint("rate_ppm > 0", name="rate_positive"),
        CheckConstraint("base <> quote", name="distinct_currencies"),
        Index(None, "base", "quote", "effective_time"),
        Index(None, "effective_time", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    base: Mapped[str] = mapped_column(String(3))
    quote: Mapped[str] = mapped_column(String(3))
    rate_ppm: Mapped[int] = mapped_column(BigInteger)
    effective_time: Mapped[datetime] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
