"""The jobs service's tables (schema `jobs`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Double, Index, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from innosystem.kit.db import new_id, schema_metadata, utcnow
from innosystem.kit.idempotency import IdempotencyKeyColumns


class Base(DeclarativeBase):
    metadata = schema_metadata("jobs")


Timestamp = TIMESTAMP(timezone=True)


class JobType(Base):
    """A category of jobs with its defaults, owned by one project.

    The owner (customer, and its reseller: immutable in tenancy) is copied from tenancy at
    create, so every read is scoped in SQL without asking tenancy again. Enums are stored as
    the proto numbers; the service never stores UNSPECIFIED (it resolves the defaults).
    """

    __tablename__ = "job_types"
    __table_args__ = (
        Index(None, "project_id", "name", unique=True),
        Index(None, "project_id", "create_time", "id"),
        Index(None, "customer_id", "create_time", "id"),
        Index(None, "reseller_id", "create_time", "id"),
        Index(None, "create_time", "id"),
        CheckConstraint("default_priority BETWEEN 1 AND 4", name="priority_known"),
        CheckConstraint("default_persistence_policy BETWEEN 1 AND 4", name="persistence_known"),
        CheckConstraint("processor_type BETWEEN 1 AND 4", name="processor_known"),
        CheckConstraint("base_cost_cents >= 0 AND max_cost_cents >= 0", name="costs_not_negative"),
        CheckConstraint("timeout_seconds > 0", name="timeout_positive"),
        CheckConstraint("retry_max_attempts >= 1 AND retry_backoff_multiplier >= 1 AND "
                        "retry_initial_interval_seconds >= 0 AND "
                        "retry_max_interval_seconds >= retry_initial_interval_seconds", name="retry_policy_sane"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID)
    reseller_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    default_priority: Mapped[int] = mapped_column(SmallInteger)
    retry_max_attempts: Mapped[int] = mapped_column()
    retry_initial_interval_seconds: Mapped[int] = mapped_column()
    retry_backoff_multiplier: Mapped[float] = mapped_column(Double)
    retry_max_interval_seconds: Mapped[int] = mapped_column()
    non_retryable_error_types: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list,
                                                                 server_default=text("'{}'"))
    default_persistence_policy: Mapped[int] = mapped_column(SmallInteger)
    base_cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    max_cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    currency_code: Mapped[str] = mapped_column(String(3), default="")
    over_capture_policy: Mapped[int] = mapped_column(SmallInteger, default=0)
    charge_on_failure: Mapped[bool] = mapped_column(default=False)
    processor_type: Mapped[int] = mapped_column(SmallInteger)
    external_api: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    max_batch_size: Mapped[int] = mapped_column(default=0)
    enabled: Mapped[bool] = mapped_column(default=True)
    version: Mapped[str] = mapped_column(String(64), default="")
    required_tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list, server_default=text("'{}'"))
    timeout_seconds: Mapped[int] = mapped_column()
    sensitive_fields: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list,
                                                        server_default=text("'{}'"))
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class IdempotencyKey(IdempotencyKeyColumns, Base):
    """The first answer to a create with a `request_id`, per caller scope and method."""

    __tablename__ = "idempotency_keys"
