"""Reads: GetJob (with its pending reason), ListJobs, ListDeadLetterJobs, GetQueueStats, and the
job filter that ListJobs and the batch actions share.

A list page is bounded in bytes as well as in jobs: payloads and results (each up to a MiB) are
read from PostgreSQL only for a FULL view, a chunk of jobs at a time, and a page that would pass
`max_list_page_bytes` ends early with a next_page_token (it always holds at least one job). A
BASIC page (the default) never loads them at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import pagination
from innosystem.kit.errors import InvalidArgument, NotFound
from innosystem.kit.protos import timestamp, to_datetime
from innosystem.kit.scope import Scope
from innosystem.kit.validation import check_request_id, id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs import runsql
from services.jobs.convert import job_pb
from services.jobs.models import Job, JobAttempt, JobStatusChange
from services.jobs.runtime import FINAL, PENDING, RUNNING, SCHEDULED, Deps

MAX_LIST = 1000
FULL_CHUNK = 50  # FULL jobs whose payloads and results are read in one statement
# A list never reads these unless its view is FULL (and then by chunk): raiseload makes any other
# read of them an error rather than a silent per-row query.
WITHOUT_DOCUMENTS = (defer(Job.payload, raiseload=True), defer(Job.result, raiseload=True))
STATUSES = frozenset(enums.JobStatus.values()) - {0}


def visible(stmt: Select[Any], scope: Scope) -> Select[Any]:
    return scope.filter(stmt, reseller_column=Job.reseller_id, customer_column=Job.customer_id)


def newest_first(stmt: Select[Any], after: pagination.Keyset | None) -> Select[Any]:
    if after is not None:
        stmt = stmt.where(or_(Job.create_time < after[0], and_(Job.create_time == after[0], Job.id < after[1])))
    return stmt.order_by(Job.create_time.desc(), Job.id.desc())


def uuid_field(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID", field=field, reason="INVALID_ID") from None


def matching(stmt: Select[Any], f: Any) -> Select[Any]:
    """`stmt` narrowed by a job filter: ListJobsRequest or JobFilter (the same field names).
    Raises naming the first bad field as the caller's request names it."""
    prefix = "filter." if isinstance(f, pb.JobFilter) else ""
    if f.status:
        if f.status not in STATUSES:
            raise InvalidArgument(f"unknown status {f.status}", field=prefix + "status", reason="INVALID_STATUS")
        stmt = stmt.where(Job.status == f.status)
    if f.job_type_id:
        stmt = stmt.where(Job.job_type_id == uuid_field(f.job_type_id, prefix + "job_type_id"))
    if f.priority:
        if f.priority not in (1, 2, 3, 4):
            raise InvalidArgument(f"unknown priority {f.priority}", field=prefix + "priority",
                                  reason="INVALID_PRIORITY")
        stmt = stmt.where(Job.priority == f.priority)
    if f.HasField("start_time"):
        stmt = stmt.where(Job.create_time >= to_datetime(f.start_time))
    if f.HasField("end_time"):
        stmt = stmt.where(Job.create_time < to_datetime(f.end_time))
    if f.request_id:
        stmt = stmt.where(Job.request_id == check_request_id(f.request_id, prefix + "request_id"))
    return stmt


class Queries:
    def __init__(self, deps: Deps, visible_project: Any) -> None:
        self.deps = deps
        self._visible_project = visible_project

    async def visible_job(self, caller: Principal, job_id: str) -> Job:
        async with self.deps.db.session() as s:
            return await _visible_job(s, caller, job_id)

    async def get(self, caller: Principal, job_id: str, view: int) -> pb.Job:
        """The job, its attempts and history and whether its charge still waits in the billing
        outbox, read in one transaction (three round trips where three sessions took nine)."""
        full = view != pb.JOB_VIEW_BASIC
        async with self.deps.db.session() as s:
            job = await _visible_job(s, caller, job_id)
            attempts, history = await _documents(s, job.id) if full else ((), ())
            # a final job's charge may still wait in the billing outbox
            billing_pending = bool(job.status in FINAL and job.hold_id
                                   and job.id in await runsql.outbox_pending(s, [job.id]))
        message = job_pb(job, full=full, attempts=attempts, history=history, pending=await self.pending_info(job))
        message.billing_pending = billing_pending
        return message

    async def job_message(self, job: Job, *, full: bool) -> pb.Job:
        attempts: Sequence[JobAttempt] = ()
        history: Sequence[JobStatusChange] = ()
        if full:
            async with self.deps.db.session() as s:
                attempts, history = await _documents(s, job.id)
        return job_pb(job, full=full, attempts=attempts, history=history, pending=await self.pending_info(job))

    async def pending_info(self, job: Job) -> pb.PendingInfo | None:
        """Why a waiting job waits: backoff, start time, no runner online for its queue, or its place."""
        if job.status == SCHEDULED:
            if job.attempt_count > 0:
                return pb.PendingInfo(reason=pb.PENDING_REASON_BACKOFF,
                                      message=f"retry after attempt {job.attempt_count} failed: {job.error}")
            return pb.PendingInfo(reason=pb.PENDING_REASON_SCHEDULED, message="start time in the future")
        if job.status != PENDING:
            return None
        queue = self.deps.queue
        try:
            online = await queue.client.exists(f"{queue.prefix}seen:{job.queue_name}")
            position = await queue.ahead_of(job.queue_name, str(job.id))
        except Exception:  # Redis trouble: the reason is unknown, not an error
            return None
        if not online:
            tags = job.settings.get("required_tags") or []
            return pb.PendingInfo(reason=pb.PENDING_REASON_NO_COMPATIBLE_RUNNER,
                                  message=f"no runner online for {job.job_type_name}"
                                          + (f" with tags {', '.join(tags)}" if tags else ""))
        ahead = position.higher_priority + position.ahead_in_class
        return pb.PendingInfo(reason=pb.PENDING_REASON_QUEUED, jobs_ahead=ahead,
                              message=f"{position.higher_priority} of higher priority ahead")

    async def list_jobs(self, caller: Principal, r: pb.ListJobsRequest) -> tuple[list[pb.Job], str]:
        size = pagination.page_size(r.page_size, maximum=MAX_LIST)
        after = pagination.decode_keyset(r.page_token)
        stmt = visible(select(Job), Scope.of(caller))
        if r.project_id != "-":
            stmt = stmt.where(Job.project_id == (await self._visible_project(caller, r.project_id)).project_id)
        if r.customer_id:
            stmt = stmt.where(Job.customer_id == uuid_field(r.customer_id, "customer_id"))
        stmt = matching(stmt, r)
        async with self.deps.db.session() as s:
            rows = (await s.execute(newest_first(stmt, after).options(*WITHOUT_DOCUMENTS)
                                    .limit(size + 1))).scalars().all()
        page = pagination.keyset_page(rows, size)
        full = r.view == pb.JOB_VIEW_FULL
        messages: list[pb.Job] = []
        used, limit = 0, self.deps.config.max_list_page_bytes
        items = list(page.items)
        for start in range(0, len(items), FULL_CHUNK):
            chunk = items[start:start + FULL_CHUNK]
            if full:
                await self._load_documents(chunk)
            for job in chunk:
                message = await self.job_message(job, full=True) if full else job_pb(job)
                used += message.ByteSize()
                if messages and used > limit:  # ends after the last job that fits
                    return messages, pagination.keyset_page(items[:len(messages) + 1], len(messages)).next_page_token
                messages.append(message)
        return messages, page.next_page_token

    async def _load_documents(self, jobs: Sequence[Job]) -> None:
        """Payloads and results of `jobs` (loaded without them), in one statement."""
        async with self.deps.db.session() as s:
            found = {row.id: row for row in (await s.execute(
                select(Job.id, Job.payload, Job.result).where(Job.id.in_([j.id for j in jobs])))).all()}
        for job in jobs:
            row = found.get(job.id)  # gone meanwhile (deleted): shown without them
            set_committed_value(job, "payload", row.payload if row is not None else None)
            set_committed_value(job, "result", row.result if row is not None else None)

    async def dead_letters(self, caller: Principal, r: pb.ListDeadLetterJobsRequest) -> tuple[list[pb.Job], str]:
        size = pagination.page_size(r.page_size)
        key = pagination.decode_token(r.page_token, 2)
        stmt = visible(select(Job).where(Job.dead_lettered.is_(True)), Scope.of(caller))
        if r.project_id != "-":
            stmt = stmt.where(Job.project_id == (await self._visible_project(caller, r.project_id)).project_id)
        if r.job_type_id:
            stmt = stmt.where(Job.job_type_id == uuid_field(r.job_type_id, "job_type_id"))
        if key is not None:
            try:
                at, jid = datetime.fromisoformat(key[0]), uuid.UUID(key[1])
            except (TypeError, ValueError):
                raise InvalidArgument("page_token is malformed", field="page_token",
                                      reason="INVALID_PAGE_TOKEN") from None
            stmt = stmt.where(or_(Job.dead_letter_time < at, and_(Job.dead_letter_time == at, Job.id < jid)))
        stmt = stmt.order_by(Job.dead_letter_time.desc(), Job.id.desc()).options(*WITHOUT_DOCUMENTS).limit(size + 1)
        async with self.deps.db.session() as s:
            rows = (await s.execute(stmt)).scalars().all()
        messages: list[pb.Job] = []
        used, limit = 0, self.deps.config.max_list_page_bytes
        for job in rows[:size]:
            message = job_pb(job)
            used += message.ByteSize()
            if messages and used > limit:
                break
            messages.append(message)
        token = ""
        if len(rows) > len(messages):
            last = rows[len(messages) - 1]
            token = pagination.encode_token(last.dead_letter_time.isoformat() if last.dead_letter_time else "",
                                            str(last.id))
        return messages, token

    async def stats(self, caller: Principal, r: pb.GetQueueStatsRequest) -> pb.QueueStats:
        """Counts from PostgreSQL (the truth) per (project, type, priority); oldest pending age too."""
        now = self.deps.now()
        columns: list[Any] = [Job.customer_id, Job.project_id, Job.job_type_id, Job.job_type_name, Job.priority,
                              Job.status, Job.dead_lettered, func.count(), func.min(Job.queue_time)]
        counts: Select[Any] = select(*columns)
        stmt = visible(counts.where(or_(Job.status.in_([PENDING, SCHEDULED, RUNNING]), Job.dead_lettered.is_(True))),
                       Scope.of(caller))
        if r.project_id:
            stmt = stmt.where(Job.project_id == (await self._visible_project(caller, r.project_id)).project_id)
        if r.customer_id:
            stmt = stmt.where(Job.customer_id == uuid_field(r.customer_id, "customer_id"))
        if r.job_type_id:
            stmt = stmt.where(Job.job_type_id == uuid_field(r.job_type_id, "job_type_id"))
        stmt = stmt.group_by(Job.customer_id, Job.project_id, Job.job_type_id, Job.job_type_name, Job.priority,
                             Job.status, Job.dead_lettered)
        async with self.deps.db.session() as s:
            rows = (await s.execute(stmt)).all()
        table: dict[tuple[Any, ...], pb.QueueStat] = {}
        for cust, proj, jt, name, prio, status, dead, count, oldest in rows:
            key = (cust, proj, jt, prio)
            stat = table.get(key)
            if stat is None:
                stat = table[key] = pb.QueueStat(customer_id=str(cust), project_id=str(proj), job_type_id=str(jt),
                                                 job_type_name=name, priority=prio)
            if dead:
                stat.dead_letter_count += count
            elif status == PENDING:
                stat.pending_count += count
                if oldest is not None:
                    stat.oldest_pending_age_ms = max(0, int((now - oldest).total_seconds() * 1000))
            elif status == SCHEDULED:
                stat.scheduled_count += count
            elif status == RUNNING:
                stat.running_count += count
        ordered = sorted(table.values(), key=lambda q: (q.project_id, q.job_type_name, -q.priority))
        return pb.QueueStats(queues=ordered, compute_time=timestamp(now))


async def _visible_job(s: AsyncSession, caller: Principal, job_id: str) -> Job:
    jid = id_or_not_found(job_id, "job_id", "job")
    job = (await s.execute(visible(select(Job).where(Job.id == jid), Scope.of(caller)))).scalar_one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
    return job


async def _documents(s: AsyncSession, job_id: uuid.UUID) -> tuple[Sequence[JobAttempt], Sequence[JobStatusChange]]:
    """A job's attempts and status history, oldest first."""
    attempts = (await s.execute(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                .order_by(JobAttempt.attempt))).scalars().all()
    history = (await s.execute(select(JobStatusChange).where(JobStatusChange.job_id == job_id)
                               .order_by(JobStatusChange.id))).scalars().all()
    return attempts, history
