"""The runners service's internal API: lease, complete, extend, release, get a lease, and the
reaper of expired leases.

Fencing: every write of an attempt's outcome is a conditional update of the job row locked with
its current `lease_id` and status Running. A result, heartbeat or release carrying another lease
id (expired and reaped, or the job re-leased since) changes nothing and answers STALE_LEASE, so
a slow runner or the reaper can never overwrite a job that another path already finished.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.rpc import status_pb2
from opentelemetry.trace import Span
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    to_status,
)
from innosystem.kit.protos import timestamp
from services.jobs import metrics, outcomes, tracing
from services.jobs.batcher import Coalescer
from services.jobs.convert import lease_pb, plain
from services.jobs.models import Job, JobAttempt, JobType
from services.jobs.queue import QueueItem
from services.jobs.runtime import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    Changes,
    Deps,
    priority_name,
    queue_name,
)
from services.jobs.signals import CLOSED

log = logging.getLogger(__name__)

DOMAIN = "jobs.innosystem"
MAX_LEASE_JOBS = 1000
MAX_WAIT_MS = 30_000
MAX_ITEMS = 1000
RECHECK_SECONDS = 5.0  # a long poll re-checks its queues this often even without a wake-up
TAGS_CACHE_SECONDS = 5.0
ENDED = frozenset({pb.ATTEMPT_OUTCOME_SUCCEEDED, pb.ATTEMPT_OUTCOME_FAILED, pb.ATTEMPT_OUTCOME_CANCELLED})


def _status(err: DomainError) -> status_pb2.Status:
    return to_status(err, DOMAIN)


def stale(job_id: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(f"lease of job {job_id} is not current: {why}", reason="STALE_LEASE",
                              metadata={"job_id": job_id})


def _labels(job: Job) -> dict[str, str]:
    return {"job_type": job.job_type_name, "priority": priority_name(job.priority)}


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Pop:
    """Job ids one LeaseJobs call popped from Redis, to mark Running for its runner."""

    ids: list[str]
    request: pb.LeaseJobsRequest


class Leases:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._tags: dict[str, tuple[float, list[tuple[str, ...]]]] = {}
        self._marker: Coalescer[Pop, list[pb.JobLease]] = Coalescer(self._mark_many, orphaned=self._undelivered)

    # which queues a runner serves ----------------------------------------------------------------
    async def queues_for(self, names: Sequence[str], tags: Sequence[str]) -> list[str]:
        """Queue names of the given type names whose required tags the runner's tags include."""
        now = time.monotonic()
        missing = [n for n in names if n not in self._tags or self._tags[n][0] < now]
        if missing:
            async with self.deps.db.session() as s:
                rows = (await s.execute(select(JobType.name, JobType.required_tags)
                                        .where(JobType.name.in_(missing)).distinct())).all()
            found: dict[str, set[tuple[str, ...]]] = {n: set() for n in missing}
            for name, req in rows:
                found[name].add(tuple(sorted(req or ())))
            for name, sets in found.items():
                self._tags[name] = (now + TAGS_CACHE_SECONDS, sorted(sets))
        have = set(tags)
        out: list[str] = []
        for name in dict.fromkeys(names):
            out += [queue_name(name, req) for req in self._tags[name][1] if set(req) <= have]
        return out

    async def _seen(self, queues: Sequence[str]) -> None:
        """Remember that a runner asked for these queues (the pending reason NO_COMPATIBLE_RUNNER)."""
        ttl = max(1, int(self.deps.config.runner_seen_seconds))
        pipe = self.deps.queue.client.pipeline(transaction=False)
        for q in queues:
            pipe.set(f"{self.deps.queue.prefix}seen:{q}", "1", ex=ttl)
        try:
            await pipe.execute()
        except Exception as exc:  # best effort: only the pending reason depends on it
            log.warning("cannot record runner presence: %s", exc)

    # LeaseJobs -----------------------------------------------------------------------------------
    async def lease(self, r: pb.LeaseJobsRequest) -> list[pb.JobLease]:
        if not r.runner_id:
            raise InvalidArgument("runner_id is required", field="runner_id", reason="MISSING_FIELD")
        if not 1 <= r.max_jobs <= MAX_LEASE_JOBS:
            raise InvalidArgument(f"max_jobs must be 1 to {MAX_LEASE_JOBS}", field="max_jobs",
                                  reason="INVALID_MAX_JOBS")
        if not 0 <= r.wait_ms <= MAX_WAIT_MS:
            raise InvalidArgument(f"wait_ms must be 0 to {MAX_WAIT_MS}", field="wait_ms", reason="INVALID_WAIT")
        if r.customer_id and _uuid(r.customer_id) is None:
            raise InvalidArgument("customer_id must be a UUID", field="customer_id", reason="INVALID_ID")
        deadline = time.monotonic() + r.wait_ms / 1000
        queues = await self.queues_for(list(r.job_type_names), list(r.tags))
        if queues:
            await self._seen(queues)
        while True:
            seen = self.deps.signals.versions(queues)
            leases: list[pb.JobLease] = []
            if queues:
                ids = await self.deps.queue.lease(queues, r.max_jobs, self.deps.clock(), r.customer_id or None)
                if ids:
                    leases = await self._mark_running(ids, r)
                    if leases:
                        return leases
                    continue  # only ghosts (jobs no longer pending): look again at once
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await self.deps.signals.wait(queues, seen, min(left, RECHECK_SECONDS))
            if not queues and time.monotonic() < deadline:  # a type may appear meanwhile
                queues = await self.queues_for(list(r.job_type_names), list(r.tags))

    async def _mark_running(self, ids: Sequence[str], r: pb.LeaseJobsRequest) -> list[pb.JobLease]:
        """Concurrent LeaseJobs calls (many runners woken by one submit) share one transaction."""
        return await self._marker.submit(Pop(list(ids), r))

    async def _mark_many(self, pops: Sequence[Pop]) -> list[list[pb.JobLease] | BaseException]:
        """The popped jobs still leasable become Running under a new lease each (an attempt, a status
        change); the others (ghosts: finished or re-leased since they were queued) are forgotten."""
        deps = self.deps
        now = deps.now()
        ttl = timedelta(seconds=deps.config.lease_ttl_seconds)
        changes = Changes()
        every = [i for pop in pops for i in pop.ids]
        try:
            async with deps.db.session() as s:
                rows = (await s.execute(select(Job).where(Job.id.in_([uuid.UUID(i) for i in every]))
                                        .order_by(Job.id).with_for_update())).scalars().all()
                by_id = {str(j.id): j for j in rows}
                leased: list[list[Job]] = []
                for pop in pops:
                    mine: list[Job] = []
                    for job_id in pop.ids:  # the queue's order
                        job = by_id.get(job_id)
                        if job is None or not _leasable(job, now):
                            continue
                        self._start_attempt(s, job, pop.request, now, ttl, changes)
                        mine.append(job)
                    leased.append(mine)
                out: list[list[pb.JobLease] | BaseException] = [[lease_pb(j) for j in mine] for mine in leased]
        except BaseException:
            await self._requeue_popped(every)
            raise
        started = {str(j.id) for mine in leased for j in mine}
        ghosts = [i for i in every if i not in started]
        for q, gids in _by_queue(ghosts, by_id).items():
            await deps.queue.finish(q, gids)
        tracing.record_waits([j for mine in leased for j in mine], now)
        for mine in leased:
            for j in mine:
                metrics.started.add(1, _labels(j))
                if j.queue_time is not None:
                    metrics.dispatch_latency.record(max(0.0, (now - j.queue_time).total_seconds()), _labels(j))
        await changes.publish(deps.signals)
        return out

    async def _undelivered(self, leases: list[pb.JobLease]) -> None:
        """The LeaseJobs caller went away while its jobs were being leased: they go back, unstarted."""
        if leases:
            await self.release(pb.ReleaseLeasesRequest(
                runner_id=leases[0].runner_id, reason=pb.LEASE_RELEASE_REASON_NOT_STARTED,
                leases=[pb.LeaseRef(job_id=x.job_id, lease_id=x.lease_id) for x in leases]))

    @staticmethod
    def _start_attempt(s: AsyncSession, job: Job, r: pb.LeaseJobsRequest, now: datetime, ttl: timedelta,
                       changes: Changes) -> None:
        job.attempt_count += 1
        job.lease_id = uuid.uuid4()
        job.runner_id = r.runner_id
        job.lease_session_id = r.session_id
        job.lease_start_time = now
        limit = now + timedelta(seconds=job.settings.get("timeout_seconds", 300))
        job.lease_expire_time = min(now + ttl, limit)
        job.start_time = job.start_time or now
        job.next_attempt_time = None
        job.progress = None
        s.add(JobAttempt(job_id=job.id, attempt=job.attempt_count, lease_id=job.lease_id, runner_id=r.runner_id,
                         outcome=pb.ATTEMPT_OUTCOME_RUNNING, start_time=now))
        changes.move(s, job, RUNNING, f"leased by runner {r.runner_id}", now)

    async def _requeue_popped(self, ids: Sequence[str]) -> None:
        """The lease's commit failed: the popped jobs go back to their queues (recovery would too)."""
        try:
            async with self.deps.db.session() as s:
                rows = (await s.execute(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids]),
                                                          Job.status == PENDING))).scalars().all()
            await requeue(self.deps, rows)
        except Exception as exc:
            log.warning("cannot requeue popped jobs (recovery will): %s", exc)

    # CompleteJobs --------------------------------------------------------------------------------
    async def complete(self, completions: Sequence[pb.JobCompletion]) -> list[pb.CompletionResult]:
        if not 1 <= len(completions) <= MAX_ITEMS:
            raise InvalidArgument(f"1 to {MAX_ITEMS} completions", field="completions", reason="INVALID_BATCH_SIZE")
        now = self.deps.now()
        results: list[pb.CompletionResult] = []
        changes, st = Changes(), outcomes.Settlement()
        finished: list[tuple[Job, Any, JobAttempt | None]] = []
        spans: list[Span] = []
        try:
            await self._complete(completions, now, results, changes, st, finished, spans)
        finally:
            for span in spans:
                span.end()
        for job, outcome, attempt in finished:
            _count_end(job, outcome, attempt, now)
        return results

    async def _complete(self, completions: Sequence[pb.JobCompletion], now: datetime,
                        results: list[pb.CompletionResult], changes: Changes, st: outcomes.Settlement,
                        finished: list[tuple[Job, Any, JobAttempt | None]], spans: list[Span]) -> None:
        deps = self.deps
        async with deps.db.session() as s:
            jobs, attempts = await _locked(s, [c.job_id for c in completions])
            done: set[str] = set()
            for c in completions:
                res = pb.CompletionResult(job_id=c.job_id, lease_id=c.lease_id)
                results.append(res)
                job = jobs.get(c.job_id)
                err = _check_lease(job, c.job_id, c.lease_id, c.runner_id, now, attempts, done)
                if err is None and c.result.outcome not in (pb.ATTEMPT_OUTCOME_SUCCEEDED, pb.ATTEMPT_OUTCOME_FAILED,
                                                            pb.ATTEMPT_OUTCOME_CANCELLED):
                    err = InvalidArgument("result.outcome must be SUCCEEDED, FAILED or CANCELLED",
                                          field="result.outcome", reason="INVALID_OUTCOME")
                if err is not None:
                    res.error.CopyFrom(_status(err))
                    continue
                assert job is not None
                done.add(c.job_id)
                span = tracing.job_span(job, "complete")
                spans.append(span)
                attempt = attempts.get((job.id, job.attempt_count))
                details = plain(c.result.details) if c.result.HasField("details") else None
                outcome = c.result.outcome
                if outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED:
                    cost = c.result.actual_cost_cents if c.result.HasField("actual_cost_cents") else None
                    output = await self._encrypted_result(job, plain(c.result.result))
                    outcomes.succeed(s, deps, job, attempt, output, cost, details, now, changes, st)
                elif outcome == pb.ATTEMPT_OUTCOME_CANCELLED:
                    outcomes.cancel_running(s, job, attempt, now, changes, st,
                                            f"cancelled: {job.cancel_reason or 'the runner stopped it'}")
                else:
                    e = c.result.error
                    error = {"message": e.message, "type": e.type, "non_retryable": e.non_retryable,
                             "details": plain(e.details) if e.HasField("details") else None}
                    outcomes.fail(s, deps, job, attempt, pb.ATTEMPT_OUTCOME_FAILED, error, details, now, changes, st)
                res.status = job.status  # type: ignore[assignment]
                span.set_attribute("innosystem.job.status", enums.JobStatus.Name(job.status))  # type: ignore[arg-type]
                if job.status == enums.JOB_STATUS_SCHEDULED and job.next_attempt_time is not None:
                    res.next_attempt_time.FromDatetime(job.next_attempt_time)
                finished.append((job, outcome, attempt))
            with tracing.within(spans):
                await outcomes.settle_billing(deps, st)
        await outcomes.settle_queue(deps, st)
        await changes.publish(deps.signals)

    async def _encrypted_result(self, job: Job, result: dict[str, Any]) -> dict[str, Any]:
        """A job encrypted at submit has its result encrypted the same way before it is stored."""
        enc = job.encryption
        if not enc or not result or self.deps.encryptor is None:
            return result
        out, paths = await self.deps.encryptor.encrypt(
            enc["key_id"], str(job.customer_id), str(job.project_id), str(job.id), "result", result,
            job.settings.get("sensitive_fields", []))
        job.encryption = {**enc, "encrypted_fields": [*enc.get("encrypted_fields", []), *paths]}
        return out

    # ExtendLeases --------------------------------------------------------------------------------
    async def extend(self, r: pb.ExtendLeasesRequest) -> list[pb.LeaseExtensionResult]:
        if len(r.leases) > MAX_ITEMS:
            raise InvalidArgument(f"at most {MAX_ITEMS} leases", field="leases", reason="INVALID_BATCH_SIZE")
        if r.extend_seconds < 0:
            raise InvalidArgument("extend_seconds must not be negative", field="extend_seconds",
                                  reason="INVALID_EXTEND")
        deps = self.deps
        now = deps.now()
        span = timedelta(seconds=r.extend_seconds or deps.config.lease_ttl_seconds)
        out: list[pb.LeaseExtensionResult] = []
        progressed: list[Job] = []
        async with deps.db.session() as s:
            jobs, attempts = await _locked(s, [e.job_id for e in r.leases])
            for e in r.leases:
                res = pb.LeaseExtensionResult(job_id=e.job_id, lease_id=e.lease_id)
                out.append(res)
                job = jobs.get(e.job_id)
                err = _check_lease(job, e.job_id, e.lease_id, r.runner_id, now, attempts, set())
                if err is not None:
                    res.error.CopyFrom(_status(err))
                    continue
                assert job is not None and job.lease_start_time is not None
                limit = job.lease_start_time + timedelta(seconds=job.settings.get("timeout_seconds", 300))
                job.lease_expire_time = max(job.lease_expire_time or now, min(now + span, limit))
                if e.HasField("progress"):
                    p = e.progress
                    job.progress = {"percent": max(0, min(100, p.percent)), "message": p.message[:2000],
                                    "details": plain(p.details) if p.HasField("details") else None,
                                    "update_time": now.isoformat()}
                    progressed.append(job)
                res.expire_time.FromDatetime(job.lease_expire_time)
                res.cancel_requested = job.cancel_requested
        await deps.signals.jobs_changed([(str(job.id), {"progress": job.progress}) for job in progressed])
        return out

    # ReleaseLeases -------------------------------------------------------------------------------
    async def release(self, r: pb.ReleaseLeasesRequest) -> list[pb.LeaseReleaseResult]:
        if r.reason not in (pb.LEASE_RELEASE_REASON_RUNNER_LOST, pb.LEASE_RELEASE_REASON_NOT_STARTED):
            raise InvalidArgument("reason must be RUNNER_LOST or NOT_STARTED", field="reason", reason="INVALID_REASON")
        if not r.runner_id:
            raise InvalidArgument("runner_id is required", field="runner_id", reason="MISSING_FIELD")
        deps = self.deps
        now = deps.now()
        refs = [(x.job_id, x.lease_id) for x in r.leases]
        changes, st = Changes(), outcomes.Settlement()
        out: list[pb.LeaseReleaseResult] = []
        back: list[Job] = []
        async with deps.db.session() as s:
            if not refs:  # every lease the runner holds
                held = (await s.execute(select(Job.id, Job.lease_id).where(Job.status == RUNNING,
                                                                           Job.runner_id == r.runner_id))).all()
                refs = [(str(i), str(lid)) for i, lid in held]
            jobs, attempts = await _locked(s, [j for j, _ in refs])
            for job_id, lease_id in refs:
                res = pb.LeaseReleaseResult(job_id=job_id, lease_id=lease_id)
                out.append(res)
                job = jobs.get(job_id)
                err = _check_lease(job, job_id, lease_id, r.runner_id, None, attempts, set())
                if err is not None:
                    res.error.CopyFrom(_status(err))
                    continue
                assert job is not None
                attempt = attempts.get((job.id, job.attempt_count))
                if job.cancel_requested:
                    outcomes.cancel_running(s, job, attempt, now, changes, st, "cancelled: runner released the job")
                elif r.reason == pb.LEASE_RELEASE_REASON_NOT_STARTED:
                    if attempt is not None:
                        await s.delete(attempt)
                    job.attempt_count -= 1
                    job.lease_id, job.lease_expire_time, job.progress = None, None, None
                    changes.move(s, job, PENDING, f"runner {r.runner_id} did not start it; back to the front", now)
                    back.append(job)
                else:
                    outcomes.fail(s, deps, job, attempt, pb.ATTEMPT_OUTCOME_RUNNER_LOST,
                                  {"message": f"runner {r.runner_id} lost", "type": "RUNNER_LOST"}, None, now,
                                  changes, st)
                res.status = job.status  # type: ignore[assignment]
            await outcomes.settle_billing(deps, st)
        await outcomes.settle_queue(deps, st)
        if back:
            await requeue(deps, back)
        await changes.publish(deps.signals)
        return out

    # GetLease ------------------------------------------------------------------------------------
    async def get(self, r: pb.GetLeaseRequest) -> pb.JobLease:
        async with self.deps.db.session() as s:
            jid = _uuid(r.job_id)
            job = await s.get(Job, jid) if jid is not None else None
            if job is None:
                raise NotFound(f"job {r.job_id} not found", reason="JOB_NOT_FOUND")
            if job.status != RUNNING or str(job.lease_id) != r.lease_id or \
                    (r.runner_id and job.runner_id != r.runner_id):
                raise stale(r.job_id, "not the job's current lease")
            return lease_pb(job)

    # WatchCancellations --------------------------------------------------------------------------
    async def cancellations(self) -> AsyncGenerator[pb.CancellationNotice, None]:
        async with self.deps.signals.subscribe(self.deps.signals.cancel_channel) as incoming:
            async with self.deps.db.session() as s:
                outstanding = (await s.execute(select(Job).where(Job.status == RUNNING,
                                                                 Job.cancel_requested.is_(True)))).scalars().all()
            for job in outstanding:
                yield pb.CancellationNotice(job_id=str(job.id), lease_id=str(job.lease_id), runner_id=job.runner_id,
                                            reason=job.cancel_reason, request_time=timestamp(job.cancel_time))
            while True:
                n = await incoming.get()
                if CLOSED in n:
                    raise Unavailable(f"cancellation feed lost: {n[CLOSED]}; subscribe again", reason="FEED_LOST")
                notice = pb.CancellationNotice(job_id=n["job_id"], lease_id=n["lease_id"], runner_id=n["runner_id"],
                                               reason=n.get("reason", ""))
                notice.request_time.FromJsonString(n["time"])
                yield notice

    # the reaper ----------------------------------------------------------------------------------
    async def reap_expired(self, limit: int = 500) -> int:
        """Expired leases end as a failed attempt (TIMED_OUT at the type's timeout, else RUNNER_LOST)
        and follow the retry rule. Rows are locked and re-checked, so a job completed meanwhile is
        skipped (SKIP LOCKED: a completion holding the row wins)."""
        deps = self.deps
        now = deps.now()
        changes, st = Changes(), outcomes.Settlement()
        async with deps.db.session() as s:
            rows = (await s.execute(select(Job).where(Job.status == RUNNING, Job.lease_expire_time < now)
                                    .order_by(Job.lease_expire_time).limit(limit)
                                    .with_for_update(skip_locked=True))).scalars().all()
            if not rows:
                return 0
            attempts = await _attempts(s, rows)
            for job in rows:
                attempt = attempts.get((job.id, job.attempt_count))
                limit_at = (job.lease_start_time or now) + timedelta(seconds=job.settings.get("timeout_seconds", 300))
                timed_out = job.lease_expire_time is not None and job.lease_expire_time >= limit_at
                outcome = pb.ATTEMPT_OUTCOME_TIMED_OUT if timed_out else pb.ATTEMPT_OUTCOME_RUNNER_LOST
                message = ("attempt timed out" if timed_out else f"lease expired: runner {job.runner_id} went silent")
                outcomes.fail(s, deps, job, attempt, outcome,
                              {"message": message, "type": "TIMED_OUT" if timed_out else "RUNNER_LOST"}, None, now,
                              changes, st)
            await outcomes.settle_billing(deps, st)
        await outcomes.settle_queue(deps, st)
        await changes.publish(deps.signals)
        return len(rows)


async def requeue(deps: Deps, jobs: Sequence[Job]) -> None:
    """Put Pending jobs back in their queues at their original place (their queue time)."""
    for q, ids in _by_queue([str(j.id) for j in jobs], {str(j.id): j for j in jobs}).items():
        await deps.queue.finish(q, ids)
    items = [QueueItem(str(j.id), j.queue_name, str(j.customer_id), j.priority,
                       (j.queue_time or j.create_time).timestamp()) for j in jobs]
    if items:
        await deps.queue.enqueue(items)
        await deps.signals.jobs_ready({i.job_type for i in items})


def _leasable(job: Job, now: datetime) -> bool:
    """Pending, or Scheduled and due (another replica's promoter moved it in Redis a moment before
    updating PostgreSQL)."""
    return job.status == PENDING or (job.status == SCHEDULED and job.next_attempt_time is not None
                                     and job.next_attempt_time <= now)


def _by_queue(ids: Sequence[str], jobs: dict[str, Job]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in ids:
        if i in jobs:
            out.setdefault(jobs[i].queue_name, []).append(i)
    return out


Attempts = dict[tuple[uuid.UUID, int], JobAttempt]


async def _locked(s: AsyncSession, job_ids: Sequence[str]) -> tuple[dict[str, Job], Attempts]:
    """The jobs (locked, in id order so concurrent batches do not deadlock) and their attempts."""
    ids = sorted({u for u in (_uuid(j) for j in job_ids) if u is not None})
    rows = (await s.execute(select(Job).where(Job.id.in_(ids)).order_by(Job.id).with_for_update())).scalars().all()
    return {str(j.id): j for j in rows}, await _attempts(s, rows)


async def _attempts(s: AsyncSession, jobs: Sequence[Job]) -> Attempts:
    if not jobs:
        return {}
    rows = (await s.execute(select(JobAttempt).where(JobAttempt.job_id.in_([j.id for j in jobs])))).scalars().all()
    return {(a.job_id, a.attempt): a for a in rows}


def _check_lease(job: Job | None, job_id: str, lease_id: str, runner_id: str, now: datetime | None,
                 attempts: Attempts, done: set[str]) -> DomainError | None:
    if job is None:
        return NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")
    if job_id in done:
        return FailedPrecondition(f"job {job_id} already has a result in this call", reason="ALREADY_COMPLETED")
    if job.status != RUNNING or str(job.lease_id) != lease_id:
        last = attempts.get((job.id, job.attempt_count))  # a repeat of the result that finished the job
        if last is not None and str(last.lease_id) == lease_id and last.outcome in ENDED and \
                job.status in (SUCCEEDED, FAILED, CANCELLED):
            return FailedPrecondition(f"job {job_id} already completed this attempt", reason="ALREADY_COMPLETED")
        return stale(job_id, "expired, released, or the job was leased again")
    if runner_id and job.runner_id != runner_id:
        return stale(job_id, f"held by another runner, not {runner_id}")
    if now is not None and job.lease_expire_time is not None and job.lease_expire_time < now:
        return stale(job_id, "expired")
    return None


def _count_end(job: Job, outcome: int, attempt: JobAttempt | None, now: datetime) -> None:
    labels = _labels(job)
    if job.status == SUCCEEDED:
        metrics.succeeded.add(1, labels)
    elif job.status == FAILED:
        metrics.failed.add(1, labels)
    if attempt is not None:
        metrics.attempt_duration.record(max(0.0, (now - attempt.start_time).total_seconds()),
                                        {**labels, "outcome": pb.AttemptOutcome.Name(outcome)})  # type: ignore[arg-type]

