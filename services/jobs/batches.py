"""BatchCancelJobs and BatchRetryJobs: CancelJob and RetryJob for every job a filter matches.

The matched jobs are taken a batch at a time in id order (`BATCH`, locked with SKIP LOCKED, so a
job another call is changing right now is skipped, not waited for), and each batch is one
transaction of set-oriented statements (`BatchesRepository`). Only jobs created by the time the call
began match, so a filter without an end time cannot chase jobs submitted while it runs.

Money follows the same rules as the single calls (`control.py`): a cancel's holds are released
after its batch commits, through the same `outcomes.settle_billing`; a retry's new holds are
reserved in one billing call while the batch's rows are locked, and released again if the batch
does not commit. Redis work after a commit (queue removal, requeue, events) cannot undo it: an
error there is logged and recovery repairs Redis from PostgreSQL.

An interrupted call has committed the batches before the interruption; calling it again does the
rest (what it changed no longer matches). A `request_id` returns the first complete answer.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict
from sqlalchemy import Select, select

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import idempotency
from innosystem.kit import principal as principals
from innosystem.kit.errors import InvalidArgument, PermissionDenied
from innosystem.kit.protos import request_hash
from innosystem.kit.scope import Scope
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs import outcomes
from services.jobs.billing import HoldRequest
from services.jobs.control import MAX_REASON
from services.jobs.leases import requeue
from services.jobs.models import IdempotencyKey, Job, JobBatch
from services.jobs.queries import matching, visible
from services.jobs.repository import UNFINISHED, BatchesRepository, Cancelled, Retried
from services.jobs.runtime import FAILED, Deps
from services.jobs.submission import HOLD_MARGIN

log = logging.getLogger(__name__)

BATCH = 500  # jobs per transaction: bounded lock time and statement size, however many match


@dataclass
class Counts:
    customer_id: uuid.UUID
    matched: int = 0
    changed: int = 0

    def answer(self, validate_only: bool) -> pb.BatchJobsResponse:
        return pb.BatchJobsResponse(matched_count=self.matched, changed_count=self.changed,
                                    skipped_count=self.matched - self.changed, validate_only=validate_only,
                                    customer_id=str(self.customer_id))


def _require_filter(f: pb.JobFilter) -> None:
    if not (f.status or f.job_type_id or f.priority or f.HasField("start_time") or f.HasField("end_time")
            or f.request_id):
        raise InvalidArgument("filter: set at least one of status, job_type_id, priority, start_time, end_time, "
                              "request_id; an action on every job of a project is refused", field="filter",
                              reason="EMPTY_FILTER")


class Batches:
    def __init__(self, deps: Deps, visible_project: Any) -> None:
        self.deps = deps
        self._visible_project = visible_project

    async def cancel(self, caller: Principal, r: pb.BatchCancelJobsRequest) -> pb.BatchJobsResponse:
        if len(r.reason) > MAX_REASON:
            raise InvalidArgument(f"reason: at most {MAX_REASON} characters", field="reason", reason="INVALID_REASON")
        return await self._run(caller, r, "cancel", self._cancel_batch)

    async def retry(self, caller: Principal, r: pb.BatchRetryJobsRequest) -> pb.BatchJobsResponse:
        return await self._run(caller, r, "retry", self._retry_batch)

    async def _run(self, caller: Principal, r: Any, action: str, one_batch: Any) -> pb.BatchJobsResponse:
        _require_filter(r.filter)
        if caller.kind not in (principals.ADMIN, principals.RESELLER, principals.CUSTOMER):
            raise PermissionDenied("only a customer, its reseller or an admin changes jobs in bulk",
                                   reason="PERMISSION_DENIED")
        owner = await self._visible_project(caller, r.project_id)
        began = self.deps.now()
        stmt = matching(visible(select(Job.id), Scope.of(caller)), r.filter).where(
            Job.project_id == owner.project_id, Job.create_time <= began)
        stmt = stmt.where(Job.status.in_(UNFINISHED)) if action == "cancel" else stmt.where(Job.status == FAILED)
        scope = f"Batch{action.title()}Jobs:{owner.project_id}"
        digest = request_hash(r)
        if not r.validate_only and r.request_id:
            async with self.deps.db.session() as s:
                earlier = await idempotency.replay(s, IdempotencyKey, scope, r.request_id, digest)
                if earlier is not None and (batch := await s.get(JobBatch, earlier)) is not None:
                    return Counts(owner.customer_id, batch.matched_count, batch.changed_count).answer(False)
        async with self.deps.db.session() as s:
            counts = Counts(owner.customer_id, matched=await BatchesRepository(s).count(stmt))
        if r.validate_only or not counts.matched:
            return counts.answer(r.validate_only)
        after: uuid.UUID | None = None
        while True:
            done, after = await one_batch(stmt, after, r)
            counts.changed += done
            if after is None:
                break
        async with self.deps.db.session() as s:
            batch = JobBatch(project_id=owner.project_id, customer_id=owner.customer_id, action=action,
                             filter=MessageToDict(r.filter), matched_count=counts.matched,
                             changed_count=counts.changed, skipped_count=counts.matched - counts.changed)
            s.add(batch)
            await s.flush()
            await idempotency.remember(s, IdempotencyKey, scope, r.request_id, digest, batch.id)
        log.info("batch %s of project %s: %d matched, %d changed", action, owner.project_id, counts.matched,
                 counts.changed)
        return counts.answer(False)

    async def _cancel_batch(self, stmt: Select[Any], after: uuid.UUID | None,
                            r: pb.BatchCancelJobsRequest) -> tuple[int, uuid.UUID | None]:
        """Cancels one batch: (jobs changed, the last id taken, or None after the last batch)."""
        deps = self.deps
        now = deps.now()
        async with deps.db.session() as s:
            repo = BatchesRepository(s)
            rows = await repo.lock_next(stmt, after, BATCH)
            done: Cancelled = await repo.cancel(rows, f"cancelled: {r.reason or 'by request'} (batch)", r.reason, now)
        if done.holds:  # committed: only now the holds go, as for one cancel
            try:
                await outcomes.settle_billing(deps, outcomes.Settlement(releases=done.holds))
            except Exception as exc:
                log.warning("batch cancel: %d holds not released now (%s); they expire", len(done.holds),
                            type(exc).__name__)
        try:
            for queue, ids in done.removed.items():
                await deps.queue.remove(queue, ids)
            for notice in done.notices:
                await deps.signals.cancel_requested(notice)
            await deps.signals.jobs_changed(done.events)
        except Exception as exc:  # the cancels are committed; a lease skips a job that is not pending
            log.warning("batch cancel: Redis not updated (%s)", type(exc).__name__)
        return done.count, (rows[-1].id if len(rows) == BATCH else None)

    async def _retry_batch(self, stmt: Select[Any], after: uuid.UUID | None,
                           r: pb.BatchRetryJobsRequest) -> tuple[int, uuid.UUID | None]:
        """Retries one batch: new holds in one billing call under the rows' locks, then one update."""
        deps = self.deps
        now = deps.now()
        expire = now + HOLD_MARGIN
        reserved: list[str] = []
        try:
            async with deps.db.session() as s:
                repo = BatchesRepository(s)
                rows = await repo.lock_next(stmt, after, BATCH, retry=True)
                holds = {row.id: f"{row.id}:r{row.retry_count + 1}" for row in rows if row.estimated_cost_cents > 0}
                requests = [HoldRequest(holds[row.id], str(row.customer_id), row.estimated_cost_cents,
                                        row.currency_code, str(row.id), expire, str(row.project_id),
                                        str(row.job_type_id)) for row in rows if row.id in holds]
                refused: set[uuid.UUID] = set()
                if requests:
                    for item, err in zip(requests, await deps.billing.reserve(requests), strict=True):
                        if err is None:
                            reserved.append(item.hold_id)
                        else:  # stays failed; counted as skipped
                            refused.add(uuid.UUID(item.job_id))
                done: Retried = await repo.retry([row for row in rows if row.id not in refused], expire, now)
        except BaseException:
            if reserved:
                await self._release_unless_used(reserved)
            raise
        try:
            await requeue(deps, done.jobs)
            await deps.signals.jobs_changed(done.events)
        except Exception as exc:  # committed: recovery queues the pending jobs
            log.warning("batch retry: %d jobs committed but not queued (%s); recovery will queue them",
                        len(done.jobs), type(exc).__name__)
        return len(done.jobs), (rows[-1].id if len(rows) == BATCH else None)

    async def _release_unless_used(self, hold_ids: list[str]) -> None:
        """A batch's new holds after its transaction failed: released unless their jobs name them
        after all (a commit whose answer was lost); if that cannot be told, they are left to expire."""
        try:
            async with self.deps.db.session() as s:
                used = await BatchesRepository(s).holds_in_use(hold_ids)
            unused = [h for h in hold_ids if h not in used]
            if unused:
                await self.deps.billing.release(unused, "retry not stored")
        except Exception as exc:
            log.warning("%d holds of a failed batch retry not released (%s); they expire", len(hold_ids),
                        type(exc).__name__)

