"""Tenancy's tables (schema `tenancy`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from innosystem.kit.db import new_id, schema_metadata, utcnow
from innosystem.kit.idempotency import IdempotencyKeyColumns


class Base(DeclarativeBase):
    metadata = schema_metadata("tenancy")


Timestamp = TIMESTAMP(timezone=True)


class Reseller(Base):
    __tablename__ = "resellers"
    __table_args__ = (CheckConstraint("commission_rate_bps BETWEEN 0 AND 10000", name="commission_rate_range"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    active: Mapped[bool] = mapped_column(default=True)
    commission_rate_bps: Mapped[int] = mapped_column(default=0)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (Index(None, "reseller_id", "create_time", "id"), Index(None, "create_time", "id"))

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("resellers.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    active: Mapped[bool] = mapped_column(default=True)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (Index(None, "customer_id", "create_time", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list, server_default=text("'{}'"))
    active: Mapped[bool] = mapped_column(default=True)
    encryption_key_id: Mapped[str | None] = mapped_column(String(64))
    # The currency its jobs are held and charged in; "" = the platform's default.
    billing_currency_code: Mapped[str] = mapped_column(String(3), default="", server_default=text("''"))
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key, stored only as HMAC-SHA256(pepper, key): found in O(1) by its hash."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("kind IN (1, 2, 3)", name="kind_known"),  # PrincipalKind admin/reseller/customer
        Index(None, "reseller_id"), Index(None, "customer_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # The first characters of the key, for people to tell keys apart; not enough to use it.
    prefix: Mapped[str] = mapped_column(String(16))
    kind: Mapped[int] = mapped_column(SmallInteger)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("resellers.id", ondelete="CASCADE"))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    revoke_time: Mapped[datetime | None] = mapped_column(Timestamp)
    # Role (kit.roles); NULL on an account's legacy key (the one `:rotateApiKey` issues) = OWNER.
    role: Mapped[int | None] = mapped_column(SmallInteger)
    display_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    expire_time: Mapped[datetime | None] = mapped_column(Timestamp)
    last_use_time: Mapped[datetime | None] = mapped_column(Timestamp)


class User(Base):
    """A person of one account (the platform, a reseller or a customer) with one role.

    The password is an argon2id hash, the TOTP secret is sealed (`secrets.Sealer`), recovery
    codes are keyed hashes; nothing here lets anyone sign in as the user."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("account_kind IN (1, 2, 3)", name="account_kind_known"),
        CheckConstraint("role BETWEEN 1 AND 5", name="role_known"),
        Index("ux_users_email", func.lower(text("email")), unique=True),
        Index(None, "customer_id", "create_time", "id"), Index(None, "reseller_id", "create_time", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    account_kind: Mapped[int] = mapped_column(SmallInteger)  # PrincipalKind admin/reseller/customer
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("resellers.id", ondelete="CASCADE"))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[int] = mapped_column(SmallInteger)
    password_hash: Mapped[str | None] = mapped_column(Text)  # NULL until the invitation is accepted
    active: Mapped[bool] = mapped_column(default=True)
    locale: Mapped[str] = mapped_column(String(16), default="")
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    recovery_codes: Mapped[list[bytes]] = mapped_column(ARRAY(LargeBinary(32)), default=list,
                                                        server_default=text("'{}'"))
    # The TOTP time step of the last code accepted: a code works once, even within its 30 s.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class AccountPolicy(Base):
    """An account's rules for its people; the platform's row has the nil UUID as its id."""

    __tablename__ = "account_policies"

    account_kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    require_totp: Mapped[bool] = mapped_column(default=False)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class UserToken(Base):
    """A one-time token (invitation, password reset), stored as its keyed hash only."""

    __tablename__ = "user_tokens"
    __table_args__ = (Index(None, "user_id"),)

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))  # "invitation" | "reset"
    expire_time: Mapped[datetime] = mapped_column(Timestamp)
    use_time: Mapped[datetime | None] = mapped_column(Timestamp)


class SignInSession(Base):
    """A person's signed-in browser: the cookie's value is found by its keyed hash."""

    __tablename__ = "sessions"
    __table_args__ = (Index(None, "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client_address: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_use_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expire_time: Mapped[datetime] = mapped_column(Timestamp)
    revoke_time: Mapped[datetime | None] = mapped_column(Timestamp)


class IdempotencyKey(IdempotencyKeyColumns, Base):
    """The first answer to a create with a `request_id`, per caller and method."""

    __tablename__ = "idempotency_keys"


class WalletOpening(Base):
    """Outbox: a customer whose wallet billing has not confirmed yet.

    Written in the customer's own transaction, so a customer created while billing is down
    still gets its wallet: a background loop delivers and deletes these rows.
    """

    __tablename__ = "wallet_openings"
    __table_args__ = (Index(None, "next_attempt_time"),)

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")


class AuditEvent(Base):
    """An administrative action: on users, roles, API keys and sessions, and break-glass ones
    that reached into a tenant's credentials or encryption setting (an admin rotating a
    customer's API key, setting a project's encryption key).

    Append-only: a trigger (migration 0003) refuses UPDATE and DELETE, and rows keep no foreign
    key, so they outlive the customer they are about.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index(None, "customer_id", "create_time"), Index(None, "reseller_id", "create_time"))

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    action: Mapped[str] = mapped_column(String(64))  # the RPC, e.g. RotateCustomerApiKey
    actor_kind: Mapped[int] = mapped_column(SmallInteger)  # PrincipalKind
    actor_key_id: Mapped[str] = mapped_column(String(64), default="")
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    project_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    detail: Mapped[str] = mapped_column(Text, default="")
    actor_user_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    target: Mapped[str] = mapped_column(String(200), default="", server_default="")  # e.g. users/<id>
    client_address: Mapped[str] = mapped_column(String(64), default="", server_default="")
    request_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
