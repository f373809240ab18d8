"""The keys service's tables (schema `keys`). No column ever holds an unwrapped key or a secret
in the clear: CMKs stay at the customer, project and data keys are stored wrapped, shared
secrets sealed under the platform's master key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Index, Integer, LargeBinary, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from innosystem.kit.db import new_id, schema_metadata, utcnow
from innosystem.kit.idempotency import IdempotencyKeyColumns


class Base(DeclarativeBase):
    metadata = schema_metadata("keys")


Timestamp = TIMESTAMP(timezone=True)


class ClientKey(Base):
    """A CMK registration (the spec's EncryptionKey): where the key lives, never the key."""

    __tablename__ = "client_keys"
    __table_args__ = (Index(None, "customer_id", "create_time", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    description: Mapped[str] = mapped_column(Text, default="")
    # JSON list of the shared secrets, AES-256-GCM under the master key (nonce | ciphertext).
    sealed_secrets: Mapped[bytes] = mapped_column(LargeBinary)
    secret_fingerprints: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # {"allowed_purposes": [int], "allowed_fields": [str]}
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    timeout_ms: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[int] = mapped_column(SmallInteger)
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    min_decryption_version: Mapped[int] = mapped_column(Integer, default=1)
    last_verify_time: Mapped[datetime | None] = mapped_column(Timestamp)
    last_verify_error: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)
    disable_time: Mapped[datetime | None] = mapped_column(Timestamp)


class ClientKeyVersion(Base):
    __tablename__ = "client_key_versions"

    key_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_url: Mapped[str] = mapped_column(String(2048))
    external_key_id: Mapped[str] = mapped_column(String(512))
    key_manager_key_version: Mapped[str] = mapped_column(String(128), default="")
    destroyed: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class ProjectKey(Base):
    """A project's key-encryption key; its versions hold the material, wrapped by the CMK."""

    __tablename__ = "project_keys"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    key_id: Mapped[uuid.UUID] = mapped_column(UUID, index=True)
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    min_decryption_version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class ProjectKeyVersion(Base):
    __tablename__ = "project_key_versions"
    __table_args__ = (Index(None, "key_id", "client_key_version"),)

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(UUID)
    client_key_version: Mapped[int] = mapped_column(Integer)
    # From the key manager's Wrap; NULL once destroyed (crypto-shredding).
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    # A replica rewrapping this version holds it until then (one claim per key across replicas;
    # a replica that dies mid-rewrap lets it go when the time passes).
    rewrap_lease_until: Mapped[datetime | None] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class DataKey(Base):
    """A job's data key, wrapped by a version of its project key."""

    __tablename__ = "data_keys"
    __table_args__ = (Index(None, "project_id", "project_key_version"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    project_id: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[uuid.UUID] = mapped_column(UUID)
    project_key_version: Mapped[int] = mapped_column(Integer)
    # Keyring blob under the project key; NULL once destroyed.
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    # As ProjectKeyVersion.rewrap_lease_until.
    rewrap_lease_until: Mapped[datetime | None] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class ChainHead(Base):
    """The last record of a customer's access log; its row lock serializes appends per customer."""

    __tablename__ = "chain_heads"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AccessRecord(Base):
    """One entry of a customer's hash-chained access log (append-only: never updated)."""

    __tablename__ = "access_records"
    __table_args__ = (Index(None, "customer_id", "sequence", unique=True),
                      Index(None, "customer_id", "job_id"), Index(None, "access_id"))

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    sequence: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[int] = mapped_column(SmallInteger)
    access_id: Mapped[str] = mapped_column(String(64), default="")
    project_id: Mapped[str] = mapped_column(String(64), default="")
    job_type_id: Mapped[str] = mapped_column(String(64), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="")
    processor_id: Mapped[str] = mapped_column(String(128), default="")
    processor_kind: Mapped[int] = mapped_column(SmallInteger, default=0)
    processor_name: Mapped[str] = mapped_column(String(256), default="")
    purpose: Mapped[int] = mapped_column(SmallInteger, default=0)
    requested_fields: Mapped[list[str]] = mapped_column(JSONB, default=list)
    returned_fields: Mapped[list[str]] = mapped_column(JSONB, default=list)
    client_reference: Mapped[str] = mapped_column(String(256), default="")
    outcome: Mapped[int] = mapped_column(SmallInteger, default=0)
    reason: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    key_id: Mapped[str] = mapped_column(String(64), default="")
    client_key_version: Mapped[int] = mapped_column(Integer, default=0)
    project_key_version: Mapped[int] = mapped_column(Integer, default=0)
    processing_succeeded: Mapped[bool] = mapped_column(Boolean, default=False)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    output_summary: Mapped[str] = mapped_column(Text, default="")
    platform_request_id: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Access(Base):
    """An access in progress: what the completion (or the sweeper) needs to close it."""

    __tablename__ = "accesses"
    __table_args__ = (Index(None, "status", "create_time", postgresql_where=text("status IN (1, 2)")),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    # 1 requested (pre-access record committed), 2 granted (data handed out), 3 closed.
    status: Mapped[int] = mapped_column(SmallInteger)
    processor_id: Mapped[str] = mapped_column(String(128))
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    grant_time: Mapped[datetime | None] = mapped_column(Timestamp)


class NotificationChannel(Base):
    __tablename__ = "notification_channels"
    __table_args__ = (Index(None, "customer_id", "create_time", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    type: Mapped[int] = mapped_column(SmallInteger, default=1)
    webhook_url: Mapped[str] = mapped_column(String(2048))
    triggers: Mapped[list[int]] = mapped_column(JSONB, default=list)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    secret_fingerprint: Mapped[str] = mapped_column(String(8))
    last_delivery_time: Mapped[datetime | None] = mapped_column(Timestamp)
    last_delivery_error: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Delivery(Base):
    """Outbox of webhook deliveries, sent by a loop: of an access record (written in the record's
    transaction), or of billing's wallet event (written with the cursor's advance past it, id
    derived from channel and event, services/keys/walletfeed.py)."""

    __tablename__ = "deliveries"
    __table_args__ = (Index(None, "next_attempt_time", postgresql_where=text("done = false")),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    channel_id: Mapped[uuid.UUID] = mapped_column(UUID, index=True)
    record_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    trigger: Mapped[int] = mapped_column(SmallInteger)
    # billing's WalletEvent (serialized protobuf) when the delivery is of one; else NULL.
    wallet_event: Mapped[bytes | None] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class WalletEventCursor(Base):
    """How far the wallet-event feed has read billing's events (their `seq`): everything at or
    below it has become deliveries. One row, `billing`."""

    __tablename__ = "wallet_event_cursor"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class IdempotencyKey(IdempotencyKeyColumns, Base):
    __tablename__ = "idempotency_keys"
