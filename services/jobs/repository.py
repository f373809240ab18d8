"""The jobs service's SQL: every read of tenant data goes through a Scope."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, String, and_, case, cast, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.kit.pagination import Keyset, after_keyset
from innosystem.kit.scope import Scope
from services.jobs.models import (
    Job,
    JobAttempt,
    JobStatusChange,
    JobType,
    JobTypePrice,
    PriceMarkup,
    Webhook,
    WebhookDelivery,
)

UNFINISHED = (1, 2, 6)  # pending, running, scheduled
PENDING, RUNNING, SCHEDULED = enums.JOB_STATUS_PENDING, enums.JOB_STATUS_RUNNING, enums.JOB_STATUS_SCHEDULED
FAILED, CANCELLED = enums.JOB_STATUS_FAILED, enums.JOB_STATUS_CANCELLED


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


# The columns a batch action reads of each locked job.
_BATCH_COLUMNS = (Job.id, Job.status, Job.hold_id, Job.queue_name, Job.lease_id, Job.runner_id, Job.cancel_requested,
                  Job.attempt_count, Job.customer_id, Job.project_id, Job.job_type_id, Job.estimated_cost_cents,
                  Job.currency_code, Job.retry_count, Job.priority, Job.create_time)


@dataclass
class Cancelled:
    """What cancelling one batch did, for the work after its commit."""

    count: int = 0
    holds: list[str] = field(default_factory=list)  # to release
    removed: dict[str, list[str]] = field(default_factory=dict)  # queue → waiting jobs to take out
    notices: list[dict[str, Any]] = field(default_factory=list)  # running jobs' cancel requests
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Retried:
    jobs: Sequence[Any] = ()  # back to Pending: id, queue_name, customer_id, priority, queue_time, create_time
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class BatchesRepository:
    """BatchCancelJobs' and BatchRetryJobs' SQL: one statement per kind of change for a whole batch."""

    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def count(self, stmt: Select[Any]) -> int:
        return int(await self.s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)

    async def lock_next(self, stmt: Select[Any], after: uuid.UUID | None, limit: int,
                        retry: bool = False) -> Sequence[Row[Any]]:
        """The next `limit` jobs of `stmt` (a filtered select of Job) after `after` in id order,
        locked; a job locked by someone else is skipped."""
        rows: Any = stmt.with_only_columns(*_BATCH_COLUMNS)
        if after is not None:
            rows = rows.where(Job.id > after)
        return (await self.s.execute(rows.order_by(Job.id).limit(limit).with_for_update(skip_locked=True))).all()

    async def cancel(self, rows: Sequence[Row[Any]], why: str, reason: str, now: datetime) -> Cancelled:
        """Waiting jobs end Cancelled; running ones get a cancel request (their runners are told)."""
        out = Cancelled()
        waiting = [r for r in rows if r.status in (PENDING, SCHEDULED)]
        running = [r for r in rows if r.status == RUNNING and not r.cancel_requested]
        if waiting:
            await self.s.execute(update(Job).where(Job.id.in_([r.id for r in waiting]))
                                 .values(status=CANCELLED, complete_time=now, next_attempt_time=None, update_time=now)
                                 .execution_options(synchronize_session=False))
            await self.s.execute(insert(JobStatusChange), [
                {"job_id": r.id, "status": CANCELLED, "time": now, "reason": why, "attempt": r.attempt_count}
                for r in waiting])
        if running:
            await self.s.execute(update(Job).where(Job.id.in_([r.id for r in running]))
                                 .values(cancel_requested=True, cancel_reason=reason, cancel_time=now, update_time=now)
                                 .execution_options(synchronize_session=False))
        stamp = now.isoformat()
        for r in waiting:
            if r.hold_id:
                out.holds.append(r.hold_id)
            out.removed.setdefault(r.queue_name, []).append(str(r.id))
            out.events.append((str(r.id), {"status": CANCELLED, "reason": why, "attempt": r.attempt_count,
                                           "time": stamp}))
        for r in running:
            out.notices.append({"job_id": str(r.id), "lease_id": str(r.lease_id), "runner_id": r.runner_id,
                                "reason": reason, "time": stamp.replace("+00:00", "Z")})
            out.events.append((str(r.id), {"cancel_requested": True}))
        out.count = len(waiting) + len(running)
        return out

    async def retry(self, rows: Sequence[Row[Any]], expire: datetime, now: datetime) -> Retried:
        """Failed jobs back to Pending with a fresh attempt budget and the new hold RetryJob names
        `<job id>:r<retry>` (none for a job that costs nothing), which the caller reserved."""
        if not rows:
            return Retried()
        ids = [r.id for r in rows]
        hold = case((Job.estimated_cost_cents > 0, func.concat(cast(Job.id, String), ":r", Job.retry_count + 1)),
                    else_="")
        back: Sequence[Any] = (await self.s.execute(
            update(Job).where(Job.id.in_(ids), Job.status == FAILED)
            .values(status=PENDING, update_time=now, retry_count=Job.retry_count + 1, hold_id=hold,
                    hold_expire_time=case((Job.estimated_cost_cents > 0, expire), else_=None),
                    attempt_count=0, dead_lettered=False, dead_letter_time=None, complete_time=None, error="",
                    error_type="", cost_cents=0, queue_time=now, cancel_requested=False)
            .returning(Job.id, Job.retry_count, Job.queue_name, Job.customer_id, Job.priority, Job.queue_time,
                       Job.create_time)
            .execution_options(synchronize_session=False))).all()
        await self.s.execute(delete(JobAttempt).where(JobAttempt.job_id.in_(ids)))
        out = Retried(jobs=back)
        if back:
            changes = [{"job_id": r.id, "status": PENDING, "time": now, "attempt": 0,
                        "reason": f"retried by request (retry {r.retry_count}, batch)"} for r in back]
            await self.s.execute(insert(JobStatusChange), changes)
            out.events = [(str(c["job_id"]), {"status": PENDING, "reason": c["reason"], "attempt": 0,
                                              "time": now.isoformat()}) for c in changes]
        return out

    async def holds_in_use(self, hold_ids: Sequence[str]) -> set[str]:
        stmt = select(Job.hold_id).where(Job.hold_id.in_(list(hold_ids)))
        return set((await self.s.execute(stmt)).scalars().all())
