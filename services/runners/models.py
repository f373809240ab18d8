"""The runner registry's tables (schema `runners`).

Durable facts live here (identity, scope, token hash, operator status, what the runner declared
on its last connection, connection times). What changes per job (free slots, running jobs) lives
in Redis with the session (see sessions.py) and is merged in when a runner is read.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Index, LargeBinary, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from innosystem.kit.db import new_id, schema_metadata, utcnow
from innosystem.kit.idempotency import IdempotencyKeyColumns


class Base(DeclarativeBase):
    metadata = schema_metadata("runners")


Timestamp = TIMESTAMP(timezone=True)


class Runner(Base):
    __tablename__ = "runners"
    __table_args__ = (
        CheckConstraint("scope IN (1, 2)", name="scope_known"),  # RunnerScope shared / customer
        CheckConstraint("(scope = 2) = (customer_id IS NOT NULL)", name="customer_iff_customer_scope"),
        # Connection status (AVAILABLE, BUSY, OFFLINE, ERROR); MAINTENANCE is the `maintenance` flag.
        CheckConstraint("status IN (1, 2, 3, 4)", name="status_known"),
        Index(None, "customer_id", "create_time", "id"),
        Index(None, "create_time", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    scope: Mapped[int] = mapped_column(SmallInteger)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    status: Mapped[int] = mapped_column(SmallInteger, default=3)
    # Set by an operator: no new jobs, running ones finish.
    maintenance: Mapped[bool] = mapped_column(default=False)
    allowed_processors: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list,
                                                          server_default=text("'{}'"))
    processors: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list, server_default=text("'{}'"))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list, server_default=text("'{}'"))
    max_concurrent_jobs: Mapped[int] = mapped_column(default=0)
    version: Mapped[str] = mapped_column(String(100), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    # The current session (stream) if connected; a newer session supersedes it.
    session_id: Mapped[str | None] = mapped_column(String(64))
    # HMAC-SHA256(pepper, token); the token itself is never stored.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    last_heartbeat_time: Mapped[datetime | None] = mapped_column(Timestamp)
    connect_time: Mapped[datetime | None] = mapped_column(Timestamp)
    create_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class IdempotencyKey(IdempotencyKeyColumns, Base):
    __tablename__ = "idempotency_keys"
