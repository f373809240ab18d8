"""The jobs service's SQL: every read of tenant data goes through a Scope."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.pagination import Keyset, after_keyset
from innosystem.kit.scope import Scope
from services.jobs.models import Job, JobType, JobTypePrice, PriceMarkup, Webhook, WebhookDelivery

UNFINISHED = (1, 2, 6)  # pending, running, scheduled


def _visible(stmt: Select[Any], scope: Scope) -> Select[Any]:
    """The scope's own types, and the catalog (everyone's)."""
    if scope.unrestricted:
        return stmt
    mine = JobType.reseller_id == scope.reseller_id if scope.reseller_id is not None \
        else JobType.customer_id == scope.customer_id
    return stmt.where(or_(JobType.catalog.is_(True), mine))


class JobsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    # job types
    async def add(self, row: JobType) -> None:
        self.s.add(row)
        await self.s.flush()

    async def get_job_type(self, job_type_id: uuid.UUID, scope: Scope, *, lock: bool = False) -> JobType | None:
        stmt = _visible(select(JobType).where(JobType.id == job_type_id), scope)
        return (await self.s.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()

    async def name_taken(self, project_id: uuid.UUID | None, name: str) -> bool:
        """In the project, or (None) in the catalog."""
        where = JobType.project_id == project_id if project_id is not None else JobType.catalog.is_(True)
        stmt = select(JobType.id).where(where, JobType.name == name)
        return (await self.s.execute(stmt)).first() is not None

    async def count_job_types(self, customer_id: uuid.UUID) -> int:
        stmt = select(func.count()).select_from(JobType).where(JobType.customer_id == customer_id)
        return int(await self.s.scalar(stmt) or 0)

    async def list_job_types(self, scope: Scope, limit: int, after: Keyset | None, *,
                             project_id: uuid.UUID | None = None, customer_id: uuid.UUID | None = None,
                             enabled_only: bool = False, name: str = "", catalog_only: bool = False
                             ) -> Sequence[JobType]:
        stmt = _visible(select(JobType), scope)
        if catalog_only:
            stmt = stmt.where(JobType.catalog.is_(True))
        elif project_id is None and customer_id is None:  # "-": the projects' types the caller sees
            stmt = stmt.where(JobType.catalog.is_(False))
        if project_id is not None:
            stmt = stmt.where(JobType.project_id == project_id)
        if customer_id is not None:
            stmt = stmt.where(JobType.customer_id == customer_id)
        if enabled_only:
            stmt = stmt.where(JobType.enabled.is_(True))
        if name:
            stmt = stmt.where(JobType.name == name)
        stmt = after_keyset(stmt, JobType, after).limit(limit)
        return (await self.s.execute(stmt)).scalars().all()

    async def prices(self, job_type_ids: Sequence[uuid.UUID], *, currency: str = "", newest_first: bool = False,
                     limit: int | None = None) -> Sequence[JobTypePrice]:
        """Price versions of the types, by effective time (oldest first unless `newest_first`)."""
        p = JobTypePrice
        stmt = select(p).where(p.job_type_id.in_(job_type_ids))
        if currency:
            stmt = stmt.where(p.currency_code == currency)
        order = (p.effective_time.desc(), p.create_time.desc()) if newest_first else (p.effective_time, p.create_time)
        stmt = stmt.order_by(*order)
        return (await self.s.execute(stmt.limit(limit) if limit else stmt)).scalars().all()

    async def catalog(self) -> tuple[Sequence[JobType], Sequence[JobTypePrice]]:
        """Every catalog type and its prices (oldest first): what submits cache."""
        types = (await self.s.execute(select(JobType).where(JobType.catalog.is_(True)))).scalars().all()
        return types, await self.prices([t.id for t in types]) if types else []

    async def markup(self, customer_id: uuid.UUID) -> PriceMarkup | None:
        return await self.s.get(PriceMarkup, customer_id)

    async def markups(self, customer_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """The customers' markups in basis points (0 for those without)."""
        rows = (await self.s.execute(select(PriceMarkup.customer_id, PriceMarkup.markup_bps)
                                     .where(PriceMarkup.customer_id.in_(customer_ids)))).all()
        return {c: 0 for c in customer_ids} | {c: bps for c, bps in rows}

    async def set_markup(self, customer_id: uuid.UUID, reseller_id: uuid.UUID | None, markup_bps: int,
                         now: datetime) -> PriceMarkup:
        stmt = insert(PriceMarkup).values(customer_id=customer_id, reseller_id=reseller_id, markup_bps=markup_bps,
                                          update_time=now)
        upsert = stmt.on_conflict_do_update(index_elements=[PriceMarkup.customer_id],
                                            set_={"markup_bps": markup_bps, "update_time": now})
        return (await self.s.execute(upsert.returning(PriceMarkup))).scalar_one()

    async def delete_job_type(self, job_type_id: uuid.UUID) -> None:
        await self.s.execute(delete(JobType).where(JobType.id == job_type_id))

    async def has_unfinished_jobs(self, job_type_id: uuid.UUID) -> bool:
        stmt = select(Job.id).where(Job.job_type_id == job_type_id, Job.status.in_(UNFINISHED)).limit(1)
        return (await self.s.execute(stmt)).first() is not None


class WebhooksRepository:
    """Webhook endpoints and their delivery log (the delivery loop's own SQL is in deliveries.py)."""

    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, row: Webhook) -> None:
        self.s.add(row)
        await self.s.flush()

    async def get(self, webhook_id: uuid.UUID, scope: Scope) -> Webhook | None:
        stmt = scope.filter(select(Webhook).where(Webhook.id == webhook_id),
                            reseller_column=Webhook.reseller_id, customer_column=Webhook.customer_id)
        return (await self.s.execute(stmt)).scalar_one_or_none()

    async def count(self, project_id: uuid.UUID) -> int:
        stmt = select(func.count()).select_from(Webhook).where(Webhook.project_id == project_id)
        return int(await self.s.scalar(stmt) or 0)

    async def list(self, project_id: uuid.UUID, limit: int, after: Keyset | None) -> Sequence[Webhook]:
        stmt = after_keyset(select(Webhook).where(Webhook.project_id == project_id), Webhook, after)
        return (await self.s.execute(stmt.limit(limit))).scalars().all()

    async def delete(self, webhook_id: uuid.UUID) -> None:
        await self.s.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
        await self.s.execute(delete(Webhook).where(Webhook.id == webhook_id))

    async def deliveries(self, webhook_id: uuid.UUID, limit: int, before: Keyset | None) -> Sequence[WebhookDelivery]:
        """Newest first; `before` is the last row of the previous page."""
        d = WebhookDelivery
        stmt = select(d).where(d.webhook_id == webhook_id)
        if before is not None:
            stmt = stmt.where(or_(d.create_time < before[0], and_(d.create_time == before[0], d.id < before[1])))
        stmt = stmt.order_by(d.create_time.desc(), d.id.desc()).limit(limit)
        return (await self.s.execute(stmt)).scalars().all()

    async def redeliver(self, webhook_id: uuid.UUID, delivery_id: uuid.UUID, now: datetime,
                        expire: datetime) -> WebhookDelivery | None:
        d = WebhookDelivery
        stmt = (update(d).where(d.id == delivery_id, d.webhook_id == webhook_id)
                .values(state=1, next_attempt_time=now, expire_time=expire).returning(d))
        return (await self.s.execute(stmt)).scalar_one_or_none()
