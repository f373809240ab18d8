"""Idempotent creates: the first answer to a `request_id`, per caller scope, in the service's schema.

A service declares its table with the mixin (`class IdempotencyKey(IdempotencyKeyColumns, Base)`)
and, inside the create's transaction, calls `replay` before creating and `remember` after.
A repeat returns the first resource; the same id with another body is IDEMPOTENCY_KEY_REUSED.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import LargeBinary, String
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from innosystem.kit.db import utcnow
from innosystem.kit.errors import Aborted, InvalidArgument

MAX_REQUEST_ID = 200  # the column's length: a longer id was a 500 from PostgreSQL


class IdempotencyKeyColumns:
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    resource_id: Mapped[uuid.UUID] = mapped_column(UUID)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), default=utcnow)


async def replay(session: AsyncSession, model: Any, scope: str, request_id: str,
                 request_hash: bytes) -> uuid.UUID | None:
    """The resource an earlier request with this id created, or None to go ahead and create."""
    if not request_id:
        return None
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(f"request_id must be 1 to {MAX_REQUEST_ID} printable characters", field="request_id",
                              reason="INVALID_REQUEST_ID")
    earlier = await session.get(model, (scope, request_id))
    if earlier is None:
        return None
    if earlier.request_hash != request_hash:
        raise InvalidArgument("request_id was already used with a different request", field="request_id",
                              reason="IDEMPOTENCY_KEY_REUSED")
    return uuid.UUID(str(earlier.resource_id))


async def remember(session: AsyncSession, model: Any, scope: str, request_id: str, request_hash: bytes,
                   resource_id: uuid.UUID) -> None:
    """Record what this request created; ABORTED if a concurrent request with the same id won."""
    if not request_id:
        return
    await session.execute(insert(model).values(scope=scope, request_id=request_id, request_hash=request_hash,
                                               resource_id=resource_id, create_time=utcnow())
                          .on_conflict_do_nothing())
    row = await session.get(model, (scope, request_id))
    if row is None or row.resource_id != resource_id:
        raise Aborted("a concurrent request with the same request_id won; retry to get its answer",
                      reason="CONCURRENT_REQUEST")
