"""Idempotent creates: the first answer to a `request_id`, per caller scope, in the service's schema.

A service declares its table with the mixin (`class IdempotencyKey(IdempotencyKeyColumns, Base)`)
and, inside the create's transaction, calls `replay` before creating and `remember` after.
A repeat returns the first resource; the same id with another body is IDEMPOTENCY_KEY_REUSED.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import sql
from sqlalchemy import LargeBinary, String, select
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from innosystem.kit.db import Writes, utcnow
from innosystem.kit.errors import Aborted, DomainError, InvalidArgument
from innosystem.kit.validation import check_request_id


class IdempotencyKeyColumns:
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    resource_id: Mapped[uuid.UUID] = mapped_column(UUID)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), default=utcnow)


async def replay(session: AsyncSession, model: Any, scope: str, request_id: str,
                 request_hash: bytes) -> uuid.UUID | None:
    """The resource an earlier request with this id created, or None to go ahead and create.
    An id the table cannot hold (over 200 characters, a NUL) is INVALID_ARGUMENT naming
    `request_id`, before anything is created (at `remember` it would fail the create with a 500)."""
    if not request_id:
        return None
    check_request_id(request_id)
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


async def replay_many(session: AsyncSession, model: Any, scope: str,
                      requests: Sequence[tuple[str, bytes]]) -> list[uuid.UUID | DomainError | None]:
    """`replay` for many (request id, request hash) of one scope in one query: per request, the
    resource an earlier request with its id created, None to go ahead, or its error."""
    out: list[uuid.UUID | DomainError | None] = [None] * len(requests)
    wanted = []
    for i, (request_id, _) in enumerate(requests):
        if request_id:
            try:
                check_request_id(request_id)
                wanted.append(request_id)
            except DomainError as err:
                out[i] = err
    if not wanted:
        return out
    t = model.__table__.c
    earlier = {r.request_id: (r.request_hash, r.resource_id) for r in await session.execute(
        select(t.request_id, t.request_hash, t.resource_id).where(t.scope == scope, t.request_id.in_(wanted)))}
    for i, (request_id, request_hash) in enumerate(requests):
        if out[i] is None and (hit := earlier.get(request_id)) is not None:
            out[i] = uuid.UUID(str(hit[1])) if hit[0] == request_hash else InvalidArgument(
                "request_id was already used with a different request", field="request_id",
                reason="IDEMPOTENCY_KEY_REUSED")
    return out


def remember_many(writes: Writes, model: Any, scope: str, created: Sequence[tuple[str, bytes, uuid.UUID]]) -> None:
    """`remember` for many (request id, request hash, resource id) of one scope, sent with the
    transaction's commit (`kit.db.Writes`). For creates whose resource id is derived from the
    request id, so that a concurrent repeat already fails on the resource's own primary key:
    nothing here needs to be read back."""
    if not created:
        return
    writes.execute(_remember_statement(model.__table__), [scope, utcnow(), [c[0] for c in created],
                                                           [c[1] for c in created], [c[2] for c in created]])


@functools.cache
def _remember_statement(table: Any) -> str:
    """`remember_many`'s INSERT for `table`, composed to text once (psycopg would compose it again
    on every execution)."""
    return sql.SQL(
        "INSERT INTO {} (scope, request_id, request_hash, resource_id, create_time) "
        "SELECT %s, r, h, id, %s FROM unnest(%s::text[], %s::bytea[], %s::uuid[]) AS k(r, h, id) "
        "ON CONFLICT DO NOTHING").format(sql.Identifier(table.schema, table.name)).as_string()
