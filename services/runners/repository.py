"""The registry's SQL: every read of tenant data goes through a Scope."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.pagination import Keyset, after_keyset
from innosystem.kit.scope import Scope
from services.runners.models import Runner

SHARED, CUSTOMER = 1, 2
AVAILABLE, BUSY, OFFLINE, ERROR, MAINTENANCE = 1, 2, 3, 4, 5


def _visible(stmt: Select[Any], scope: Scope) -> Select[Any]:
    # A reseller sees no runners (runners belong to the platform or to one customer).
    if scope.reseller_id is not None:
        return stmt.where(Runner.customer_id == uuid.UUID(int=0))
    return scope.filter(stmt, reseller_column=None, customer_column=Runner.customer_id)


class RunnerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, row: Runner) -> None:
        self.s.add(row)
        await self.s.flush()

    async def count_for_customer(self, customer_id: uuid.UUID) -> int:
        """The customer's registered runners, counted under a per-customer transaction lock, so two
        concurrent registrations cannot both pass the cap with one place left."""
        await self.s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                             {"k": f"runners:customer:{customer_id}"})
        stmt = select(func.count()).select_from(Runner).where(Runner.customer_id == customer_id)
        return int((await self.s.execute(stmt)).scalar_one())

    async def get(self, runner_id: uuid.UUID, scope: Scope, *, lock: bool = False) -> Runner | None:
        stmt = _visible(select(Runner).where(Runner.id == runner_id), scope)
        return (await self.s.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()

    async def list_runners(self, scope: Scope, limit: int, after: Keyset | None, *, status: int = 0,
                           runner_scope: int = 0, customer_id: uuid.UUID | None = None) -> Sequence[Runner]:
        stmt = _visible(select(Runner), scope)
        if status == MAINTENANCE:
            stmt = stmt.where(Runner.maintenance.is_(True))
        elif status:
            stmt = stmt.where(Runner.status == status, Runner.maintenance.is_(False))
        if runner_scope:
            stmt = stmt.where(Runner.scope == runner_scope)
        if customer_id is not None:
            stmt = stmt.where(Runner.customer_id == customer_id)
        return (await self.s.execute(after_keyset(stmt, Runner, after).limit(limit))).scalars().all()

    async def online_shared(self) -> Sequence[Runner]:
        stmt = select(Runner).where(Runner.scope == SHARED, Runner.status != OFFLINE, Runner.maintenance.is_(False))
        return (await self.s.execute(stmt)).scalars().all()

    async def connected_ids(self) -> Sequence[tuple[uuid.UUID, str | None]]:
        stmt = select(Runner.id, Runner.session_id).where(Runner.status != OFFLINE)
        return [(r[0], r[1]) for r in (await self.s.execute(stmt)).all()]

    async def find_by_token(self, token_hash: bytes) -> Runner | None:
        return (await self.s.execute(select(Runner).where(Runner.token_hash == token_hash))).scalar_one_or_none()

    async def delete(self, row: Runner) -> None:
        await self.s.delete(row)

    async def connected(self, runner_id: uuid.UUID, session_id: str, now: datetime, status: int, *,
                        processors: list[str],
                        tags: list[str], max_concurrent_jobs: int, version: str, hostname: str) -> None:
        await self.s.execute(update(Runner).where(Runner.id == runner_id).values(
            session_id=session_id, status=status, connect_time=now, last_heartbeat_time=now,
            processors=processors, tags=tags, max_concurrent_jobs=max_concurrent_jobs, version=version,
            hostname=hostname, update_time=now))

    async def disconnected(self, runner_id: uuid.UUID, session_id: str | None, now: datetime) -> bool:
        """Offline, unless a newer session took over (then nothing changes)."""
        stmt = update(Runner).where(Runner.id == runner_id)
        if session_id is not None:
            stmt = stmt.where(Runner.session_id == session_id)
        result = await self.s.execute(stmt.values(status=OFFLINE, session_id=None, connect_time=None,
                                                  last_heartbeat_time=now, update_time=now))
        return bool(getattr(result, "rowcount", 0))

    async def heartbeat(self, beats: dict[uuid.UUID, tuple[str, int, datetime]]) -> None:
        """Many runners' last heartbeat and connection status in one executemany (only where the
        session is still theirs)."""
        if not beats:
            return
        table: Table = Runner.__table__  # type: ignore[assignment]  # Core executemany, not ORM bulk
        stmt = (update(table).where(table.c.id == bindparam("rid"), table.c.session_id == bindparam("sid"))
                .values(last_heartbeat_time=bindparam("when"), status=bindparam("st")))
        await self.s.execute(stmt, [{"rid": r, "sid": sid, "st": st, "when": when}
                                    for r, (sid, st, when) in beats.items()])
