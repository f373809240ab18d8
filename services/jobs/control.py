"""A customer's control over its jobs: CancelJob, RetryJob, DeleteJob, and WatchJob's stream.

Money follows the commit: a cancel releases its hold only once the cancel is committed (a release
before a commit that then fails would leave a live job unpaid for), and a retry reserves its new
hold while it holds the job's row lock, so of two concurrent retries exactly one reserves and wins.
Redis work after a commit (queue removal, requeue, events) cannot undo it: an error there is
logged, the answer stands, and recovery repairs Redis from PostgreSQL.

A watch holds one of its job's customer's watch slots (`watchers.py`) from before its first event
until it ends, so the customer's limit is refused as an error (429 at the gateway), not as a
stream that opens and then fails.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import idempotency
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, Unavailable
from innosystem.kit.protos import timestamp
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs import outcomes
from services.jobs.billing import HoldRequest, insufficient_funds
from services.jobs.leases import requeue
from services.jobs.models import IdempotencyKey, Job, JobAttempt, JobStatusChange
from services.jobs.queries import Queries
from services.jobs.runtime import CANCELLED, FAILED, FINAL, PENDING, SCHEDULED, Changes, Deps, status_name
from services.jobs.signals import CLOSED
from services.jobs.submission import HOLD_MARGIN
from services.jobs.watchers import Watchers

log = logging.getLogger(__name__)

MAX_REASON = 1000
WATCH_RECHECK_SECONDS = 15.0  # a watch re-reads the job this often even without an event


class Control:
    def __init__(self, deps: Deps, queries: Queries) -> None:
        self.deps = deps
        self.queries = queries
        self.watchers = Watchers(deps.queue.client, deps.queue.prefix, deps.config.max_watchers_per_customer)

    async def _locked(self, s: AsyncSession, caller: Principal, job_id: str) -> Job:
        """The caller's job, locked for this transaction (NOT_FOUND if it cannot see it)."""
        job = await self.queries.visible_job(caller, job_id)
        return (await s.execute(select(Job).where(Job.id == job.id).with_for_update())).scalar_one()

    async def cancel(self, caller: Principal, job_id: str, reason: str) -> Job:
        if len(reason) > MAX_REASON:
            raise InvalidArgument(f"reason: at most {MAX_REASON} characters", field="reason", reason="INVALID_REASON")
        deps = self.deps
        now = deps.now()
        why = f"cancelled: {reason or 'by request'}"
        changes, st = Changes(), outcomes.Settlement()
        notice = None
        async with deps.db.session() as s:
            job = await self._locked(s, caller, job_id)
            if job.status in FINAL:
                raise FailedPrecondition(f"job {job_id} is already {_name(job.status)}", field="job_id",
                                         reason="JOB_ALREADY_FINISHED")
            if job.status in (PENDING, SCHEDULED):
                job.complete_time = now
                job.next_attempt_time = None
                if job.hold_id:
                    st.releases.append(job.hold_id)
                changes.move(s, job, CANCELLED, why, now)
                removed = True
            else:  # running: the runner is told; Cancelled when it stops or the lease expires
                removed = False
                if not job.cancel_requested:
                    job.cancel_requested, job.cancel_reason, job.cancel_time = True, reason, now
                    job.update_time = now
                    notice = {"job_id": str(job.id), "lease_id": str(job.lease_id), "runner_id": job.runner_id,
                              "reason": reason, "time": now.isoformat().replace("+00:00", "Z")}
        # Committed. Only now the hold goes: if billing cannot be reached, the cancel stands and the
        # hold runs out at its expiry (logged), which never charges the customer.
        try:
            await outcomes.settle_billing(deps, st)
        except Exception as exc:
            log.warning("cancelled job %s: its hold %s is not released now (%s); it expires", job.id,
                        job.hold_id, type(exc).__name__)
        try:
            if removed:
                await deps.queue.remove(job.queue_name, [str(job.id)])
            if notice is not None:
                await deps.signals.cancel_requested(notice)
                await deps.signals.jobs_changed([(str(job.id), {"cancel_requested": True})])
            await changes.publish(deps.signals)
        except Exception as exc:  # the cancel is committed; a lease skips a job that is not pending
            log.warning("cancelled job %s: Redis not updated (%s)", job.id, type(exc).__name__)
        return job

    async def retry(self, caller: Principal, job_id: str, request_id: str, request_hash: bytes) -> Job:
        """A failed job goes back to the queue: a fresh attempt budget and a new hold.

        The job's row is locked first and the hold reserved under the lock: a concurrent retry
        waits, then finds the job no longer failed (FAILED_PRECONDITION) having reserved nothing,
        so it cannot release the winner's hold (both would name it `<job id>:r<n>`)."""
        deps = self.deps
        now = deps.now()
        job = await self.queries.visible_job(caller, job_id)
        scope = f"RetryJob:{job.id}"
        changes = Changes()
        reserved = ""
        try:
            async with deps.db.session() as s:
                row = await self._locked(s, caller, job_id)
                if await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash) is not None:
                    return row
                if row.status != FAILED:
                    raise FailedPrecondition(f"job {job_id} is {_name(row.status)}; only a failed job can be retried",
                                             field="job_id", reason="JOB_NOT_FAILED")
                hold_id = f"{row.id}:r{row.retry_count + 1}" if row.estimated_cost_cents > 0 else ""
                if hold_id:
                    (err,) = await deps.billing.reserve([HoldRequest(
                        hold_id, str(row.customer_id), row.estimated_cost_cents, row.currency_code, str(row.id),
                        now + HOLD_MARGIN, str(row.project_id), str(row.job_type_id))])
                    if err is not None:
                        if err.reason in ("INSUFFICIENT_FUNDS", "CREDIT_LIMIT_EXCEEDED"):
                            raise insufficient_funds(err, "job_id")
                        raise err
                    reserved = hold_id
                row.retry_count += 1
                row.hold_id = hold_id
                row.hold_expire_time = now + HOLD_MARGIN if hold_id else None
                row.attempt_count = 0
                row.dead_lettered, row.dead_letter_time = False, None
                row.complete_time, row.error, row.error_type = None, "", ""
                row.cost_cents = 0
                row.queue_time = now
                row.cancel_requested = False
                await s.execute(delete(JobAttempt).where(JobAttempt.job_id == row.id))
                changes.move(s, row, PENDING, f"retried by request (retry {row.retry_count})", now)
                await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, row.id)
                job = row
        except BaseException:
            if reserved:
                await self._release_unless_used(job.id, reserved)
            raise
        try:
            await requeue(deps, [job])
            await changes.publish(deps.signals)
        except Exception as exc:  # committed: recovery queues the pending job
            log.warning("retried job %s committed but not queued (%s); recovery will queue it", job.id,
                        type(exc).__name__)
        return job

    async def _release_unless_used(self, job_id: uuid.UUID, hold_id: str) -> None:
        """A retry's hold after its transaction failed: released unless the job names it after all
        (a commit whose answer was lost); if that cannot be told, the hold is left to expire."""
        try:
            async with self.deps.db.session() as s:
                used = (await s.execute(select(Job.hold_id).where(Job.id == job_id))).scalar_one_or_none()
            if used != hold_id:
                await self.deps.billing.release([hold_id], "retry not stored")
        except Exception as exc:
            log.warning("hold %s of a failed retry of job %s not released (%s); it expires", hold_id, job_id,
                        type(exc).__name__)

    async def delete(self, caller: Principal, job_id: str) -> None:
        async with self.deps.db.session() as s:
            job = await self._locked(s, caller, job_id)
            if job.status not in FINAL:
                raise FailedPrecondition(f"job {job_id} is {_name(job.status)}; cancel it first", field="job_id",
                                         reason="JOB_NOT_FINISHED")
            await s.execute(delete(JobAttempt).where(JobAttempt.job_id == job.id))
            await s.execute(delete(JobStatusChange).where(JobStatusChange.job_id == job.id))
            await s.delete(job)

    async def watch(self, caller: Principal, job_id: str) -> AsyncGenerator[pb.JobEvent, None]:
        """A snapshot, then an event per change, until the job is final."""
        job = await self.queries.visible_job(caller, job_id)
        signals = self.deps.signals
        channel = signals.job_prefix + str(job.id)
        # the marker first: a publisher that finds no job watched asks no further (Signals.jobs_changed)
        async with self.watchers.slot(str(job.customer_id)) as slot, signals.subscribe(signals.watched_channel), \
                signals.subscribe(channel) as incoming:
            # read after subscribing, and before the first yield (the caller may resume us much later)
            last_change = await self._last_change_id(job.id)
            job = await self.queries.visible_job(caller, job_id)
            snapshot = await self.queries.job_message(job, full=False)
            yield pb.JobEvent(type=pb.JOB_EVENT_TYPE_SNAPSHOT, event_time=timestamp(self.deps.now()), job=snapshot)
            while job.status not in FINAL:
                try:
                    event = await asyncio.wait_for(incoming.get(), WATCH_RECHECK_SECONDS)
                except TimeoutError:
                    event = {}
                if CLOSED in event:
                    raise Unavailable(f"event feed lost: {event[CLOSED]}; watch again", reason="FEED_LOST")
                await slot.keep()
                job = await self.queries.visible_job(caller, job_id)
                message = await self.queries.job_message(job, full=False)
                async with self.deps.db.session() as s:
                    new = (await s.execute(select(JobStatusChange).where(JobStatusChange.job_id == job.id,
                                                                         JobStatusChange.id > last_change)
                                           .order_by(JobStatusChange.id))).scalars().all()
                for change in new:
                    last_change = change.id
                    yield pb.JobEvent(type=pb.JOB_EVENT_TYPE_STATUS_CHANGED, event_time=timestamp(change.time),
                                      job=message, status_change=pb.JobStatusChange(
                                          status=change.status, time=timestamp(change.time),  # type: ignore[arg-type]
                                          reason=change.reason, attempt=change.attempt))
                if not new and "progress" in event:
                    yield pb.JobEvent(type=pb.JOB_EVENT_TYPE_PROGRESS, event_time=timestamp(self.deps.now()),
                                      job=message)
                elif not new and event.get("cancel_requested"):
                    yield pb.JobEvent(type=pb.JOB_EVENT_TYPE_CANCEL_REQUESTED, event_time=timestamp(self.deps.now()),
                                      job=message)

    async def _last_change_id(self, job_id: uuid.UUID) -> int:
        async with self.deps.db.session() as s:
            last = (await s.execute(select(JobStatusChange.id).where(JobStatusChange.job_id == job_id)
                                    .order_by(JobStatusChange.id.desc()).limit(1))).scalar_one_or_none()
        return last or 0


def _name(status: int) -> str:
    return status_name(status)
