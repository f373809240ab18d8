"""The jobs service's background loops: promote due jobs, reap expired leases, recover Redis
from PostgreSQL, and retention. Each `*_once` does one pass (tests call them with their clock)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import Table, Text, delete, insert, select, tuple_, update
from sqlalchemy import cast as cast_

from innosystem.jobs.v1 import job_types_pb2 as enums
from services.jobs import metrics
from services.jobs.leases import Leases, settle_outbox_once
from services.jobs.models import BillingOutbox, IdempotencyKey, Job, JobAttempt, JobStatusChange
from services.jobs.queue import QueueItem, ScheduledItem
from services.jobs.runtime import FINAL, PENDING, RUNNING, SCHEDULED, Deps, priority_name
from services.jobs.submission import HOLD_MARGIN

log = logging.getLogger(__name__)

_JOBS = cast(Table, Job.__table__)

PROMOTE_MAX_SLEEP = 5.0  # the promoter re-reads the scheduled queues at least this often
RECOVERY_GRACE = timedelta(seconds=2)  # jobs committed this recently may still be on their way to Redis
LOST_LEASE_GRACE = 30.0  # seconds a lease may take from its pop in Redis to its commit
CHUNK = 2000
RETENTION_INTERVAL = 3600.0
FULL_EVERY = 30  # recovery passes: one full pass in this many (and whenever Redis lost its data)
RENEW_EVERY = 60  # recovery passes: hold renewal in this many (10 min by default)
RENEW_AHEAD = timedelta(days=2)  # a hold is renewed when it would lapse within this long
RENEW_BATCH = 500
HOLD_SWEEP_OVERLAP = timedelta(seconds=5)  # a billing batch's holds may land this long after their stamp
RETENTION_BATCH = 1000  # jobs per retention transaction

# What a recovery pass reads of every waiting job: its id as text (PostgreSQL writes it; no UUID made
# per row here), its status and queue; the rest of its row only where Redis lacks it (`_WHOLE`).
_WAITING = select(cast_(_JOBS.c.id, Text).label("id"), _JOBS.c.status, _JOBS.c.queue_name).where(
    _JOBS.c.status.in_([PENDING, SCHEDULED]))
_WHOLE = select(_JOBS.c.id, _JOBS.c.status, _JOBS.c.queue_name, _JOBS.c.customer_id, _JOBS.c.priority,
                _JOBS.c.queue_time, _JOBS.c.create_time, _JOBS.c.next_attempt_time).where(
    _JOBS.c.status.in_([PENDING, SCHEDULED]))


class Loops:
    def __init__(self, deps: Deps, leases: Leases) -> None:
        self.deps = deps
        self.leases = leases
        self._depth: dict[tuple[str, int], tuple[int, float | None]] = {}
        # Pending jobs a pass found popped by a lease too recent to call lost: the next passes
        # read them again, whatever their age (a partial pass reads only recent changes).
        self._suspects: set[uuid.UUID] = set()
        metrics.meter.create_observable_gauge("jobs.queue.depth", [self._observe_depth],
                                              description="jobs waiting in a queue, by queue and priority")
        metrics.meter.create_observable_gauge("jobs.queue.oldest_age", [self._observe_age], unit="s",
                                              description="age of the oldest waiting job, by queue and priority")
        self.unsettled: tuple[int, float] = (0, 0.0)  # finished jobs whose charge billing refused; oldest's age
        metrics.meter.create_observable_gauge(
            "jobs.billing.unsettled", [lambda _: [Observation(self.unsettled[0])]],
            description="finished jobs whose capture or release billing refused (kept in the outbox, retried)")
        metrics.meter.create_observable_gauge(
            "jobs.billing.unsettled_oldest_age", [lambda _: [Observation(self.unsettled[1])]], unit="s",
            description="age of the oldest refused capture or release still in the outbox")

    # promotion -----------------------------------------------------------------------------------
    async def promote_once(self) -> tuple[int, float | None]:
        """Due scheduled jobs become Pending (PostgreSQL first, then their queues). Returns the count
        and the next due time (epoch seconds) or None."""
        deps = self.deps
        now = deps.now()
        async with deps.db.session() as s:
            due = (await s.execute(update(Job).where(Job.status == SCHEDULED, Job.next_attempt_time <= now)
                                   .values(status=PENDING, queue_time=Job.next_attempt_time, update_time=now)
                                   .returning(Job.id, Job.attempt_count, Job.queue_name))).all()
            if due:
                await s.execute(insert(JobStatusChange), [
                    {"job_id": i, "status": PENDING, "time": now, "attempt": a,
                     "reason": "backoff over, queued" if a else "start time reached, queued"} for i, a, _ in due])
            names = (await s.execute(select(Job.queue_name).where(Job.status == SCHEDULED).distinct())).scalars().all()
        queues = sorted(set(names) | {q for _, _, q in due})
        promoted, next_due = await deps.queue.promote_due(queues, now.timestamp()) if queues else (0, None)
        if due or promoted:
            await deps.signals.jobs_ready(queues)
        await deps.signals.jobs_changed([(str(job_id), {"status": PENDING}) for job_id, _, _ in due])
        return len(due), next_due

    async def promote_forever(self) -> None:
        while True:
            self.deps.signals.scheduled.clear()
            _, next_due = await self.promote_once()
            sleep = PROMOTE_MAX_SLEEP if next_due is None else max(0.0, next_due - self.deps.clock())
            try:
                await asyncio.wait_for(self.deps.signals.scheduled.wait(), min(sleep, PROMOTE_MAX_SLEEP))
            except TimeoutError:
                pass

    # lease expiry --------------------------------------------------------------------------------
    async def reap_forever(self) -> None:
        while True:
            while await self.leases.reap_expired() >= 500:
                pass
            await asyncio.sleep(self.deps.config.reaper_interval_seconds)

    # recovery ------------------------------------------------------------------------------------
    async def recover_once(self, full: bool = True) -> tuple[int, int]:
        """Redis rebuilt from PostgreSQL: every committed Pending job in its queue (at its original
        place) and every Scheduled one in its set; idempotent, so it also repairs a partial loss.
        Holds of submits that died before their commit are released. Returns (queued, released).

        A full pass reads every waiting job. The loop's passes in between (`full=False`) read only
        the jobs that started waiting since the previous pass (a submit or retry that died between
        its commit and its enqueue), through a partial index, so their cost follows the churn and not
        the backlog; a Redis that lost its data has lost the pass's mark too, and gets a full pass."""
        deps = self.deps
        now = deps.now()
        try:
            released = await self._release_orphan_holds()
        except Exception as exc:  # billing unreachable: the queues are rebuilt all the same
            log.warning("orphan holds not swept this pass: %s", exc)
            released = 0
        mark_key = f"{deps.queue.prefix}recovery:mark"
        since = None
        if not full:
            mark = await deps.queue.client.get(mark_key)
            since = datetime.fromisoformat(_text(mark)) - RECOVERY_GRACE if mark else None
        queued = 0
        after = uuid.UUID(int=0)
        suspects, self._suspects = sorted(self._suspects), set()
        j = _JOBS.c
        while True:
            stmt = _WAITING.where(j.update_time < now - RECOVERY_GRACE, j.id > after).order_by(j.id).limit(CHUNK)
            if since is not None:
                stmt = stmt.where(j.update_time >= since)
            rows = await self._waiting(stmt)
            if not rows:
                break
            after = uuid.UUID(rows[-1][0])
            queued += await self._requeue(rows, now)
        for start in range(0, len(suspects), CHUNK):  # whatever their age, and read once more if still young
            ids = suspects[start:start + CHUNK]
            queued += await self._requeue(await self._waiting(_WAITING.where(j.id.in_(ids))), now)
        await deps.queue.client.set(mark_key, (now - RECOVERY_GRACE).isoformat())
        await self._refresh_depth(from_database=since is None)
        if queued or released:
            log.info("recovery: %d jobs back in Redis, %d orphan holds released", queued, released)
        return queued, released

    async def _waiting(self, stmt: Any) -> list[Any]:
        async with self.deps.db.session() as s:  # Core rows: every new job passes here once
            return list((await (await s.connection()).execute(stmt)).all())

    async def _requeue(self, rows: list[Any], now: datetime) -> int:
        """Waiting jobs (`_WAITING`'s rows) back in their queue or schedule (where Redis lost them);
        how many went back. A pass over a busy burst reads every one of its jobs once, nearly all in
        Redis: a job Redis knows is left alone by the enqueue script anyway, so only the others (and
        the scheduled, which the schedule script leaves alone if known) are read whole and sent."""
        deps = self.deps
        # rows unpacked, not read by name: a Row's attribute costs a microsecond or two, per row of a burst
        known = await self._known([(queue, i) for i, status, queue in rows if status == PENDING],
                                  now.timestamp() - LOST_LEASE_GRACE)
        wanted = [uuid.UUID(i) for i, status, _ in rows if status == SCHEDULED or i not in known]
        if not wanted:
            return 0
        whole = await self._waiting(_WHOLE.where(_JOBS.c.id.in_(wanted)))  # still waiting now
        pending = [QueueItem(str(r.id), r.queue_name, str(r.customer_id), r.priority,
                             (r.queue_time or r.create_time).timestamp()) for r in whole if r.status == PENDING]
        later = [ScheduledItem(str(r.id), r.queue_name, str(r.customer_id), r.priority,
                               (r.next_attempt_time or now).timestamp()) for r in whole if r.status == SCHEDULED]
        n = await deps.queue.rebuild(pending, later)
        if n:
            await deps.signals.jobs_ready({i.job_type for i in pending})
            await deps.signals.schedule_changed()
        return n

    async def _known(self, pending: list[tuple[str, str]], before: float) -> set[str]:
        """Of `pending` (queue, job id), the ids Redis holds a record of (queued, or leased by a lease in flight).
        A Pending job whose record says leased since before `before` was popped by a lease that
        never committed (its process died): its record is forgotten so the job can be queued again.
        Younger records belong to leases in flight and are left alone, and read again next pass:
        if their lease never commits, nothing else would bring the job back before a full pass."""
        queue = self.deps.queue
        by_queue: dict[str, list[str]] = {}
        for q, job_id in pending:
            by_queue.setdefault(q, []).append(job_id)
        known: set[str] = set()
        for q, ids in by_queue.items():
            records = await queue.client.hmget(f"{queue.base(q)}:job", ids)
            lost = [i for i, rec in zip(ids, records, strict=True)
                    if rec is not None and _leased_before(rec, before)]
            self._suspects.update(uuid.UUID(i) for i, rec in zip(ids, records, strict=True)
                                  if rec is not None and _leased(rec) and i not in lost)
            if lost:
                await queue.finish(q, lost)
            gone = set(lost)
            known.update(i for i, rec in zip(ids, records, strict=True) if rec is not None and i not in gone)
        return known

    async def _release_orphan_holds(self) -> int:
        """Holds of submits that died between billing's reserve and the job's commit: an active
        hold older than the grace whose job does not exist is released. A pass reads the holds
        created since the last one the previous pass read (less an overlap, for billing commits
        slow to land), so its cost follows the submits and not the backlog; a Redis that lost the
        mark gets a pass over every active hold. The mark is billing's own creation time, so a
        skew between this clock and billing's cannot skip holds. A submit that could not commit
        within half the grace gives its holds back itself (`Submission`): none in flight is swept."""
        deps = self.deps
        mark_key = f"{deps.queue.prefix}recovery:holds-mark"
        mark = await deps.queue.client.get(mark_key)
        start = datetime.fromisoformat(_text(mark)) - HOLD_SWEEP_OVERLAP if mark else None
        before = deps.now() - timedelta(seconds=deps.config.orphan_hold_grace_seconds)
        released, last = 0, None
        async for page in deps.billing.active_holds(start, before):
            by_job: dict[uuid.UUID, str] = {}
            for hold_id, job_id, created in page:
                last = created
                try:
                    by_job[uuid.UUID(job_id)] = hold_id
                except ValueError:
                    continue  # not a job's hold
            async with deps.db.session() as s:
                existing = set((await s.execute(select(Job.id).where(Job.id.in_(list(by_job))))).scalars())
            orphans = [h for j, h in by_job.items() if j not in existing]
            if orphans:
                outcomes = await deps.billing.release(orphans, "submit did not complete")
                for hold, err in zip(orphans, outcomes, strict=True):
                    if err is not None and err.reason != "HOLD_NOT_FOUND":
                        log.warning("cannot release orphan hold %s: %s", hold, err)
                released += len(orphans)
        if last is not None or mark is None:
            await deps.queue.client.set(mark_key, (last or before).isoformat())
        return released

    async def recover_forever(self) -> None:
        """One replica per interval does the pass (a Redis lock that expires with the interval);
        every replica refreshes its queue gauges."""
        interval = self.deps.config.recovery_interval_seconds
        queue = self.deps.queue
        passes = 0
        while True:
            if await queue.client.set(f"{queue.prefix}recovery", "1", nx=True, px=max(1, int(interval * 900))):
                await self.recover_once(full=passes % FULL_EVERY == 0)  # a full pass at start, then now and then
                if passes % RENEW_EVERY == 0:
                    try:
                        while await self.renew_holds_once() >= RENEW_BATCH:
                            pass
                    except Exception as exc:  # billing down: the next pass tries again, well before a lapse
                        log.warning("holds not renewed: %s", exc)
                passes += 1
                try:
                    while await settle_outbox_once(self.deps) >= 500:
                        pass
                except Exception as exc:  # billing down: the outbox keeps the work for the next pass
                    log.warning("billing outbox not settled: %s", exc)
                await self.report_unsettled()
            else:
                await self._refresh_depth(from_database=False)
            await asyncio.sleep(interval)

    async def report_unsettled(self) -> list[uuid.UUID]:
        """Finished jobs whose cost billing has refused to post (still in the outbox, tried again):
        counted in `jobs.billing.unsettled`, logged as an error, and returned (oldest first)."""
        async with self.deps.db.session() as s:
            rows = (await s.execute(select(BillingOutbox.job_id, BillingOutbox.create_time, BillingOutbox.last_error)
                                    .where(BillingOutbox.attempts > 0).order_by(BillingOutbox.create_time)
                                    .limit(CHUNK))).all()
        oldest = (self.deps.now() - rows[0].create_time).total_seconds() if rows else 0.0
        self.unsettled = (len(rows), max(0.0, oldest))
        if rows:
            log.error("%d finished jobs' charges are refused by billing and kept in the outbox (oldest %.0f s, "
                      "job %s: %s)", len(rows), oldest, rows[0].job_id, rows[0].last_error)
        return [r.job_id for r in rows]

    # hold renewal --------------------------------------------------------------------------------
    async def renew_holds_once(self, limit: int = RENEW_BATCH) -> int:
        """Holds of unfinished jobs that lapse within RENEW_AHEAD get another HOLD_MARGIN: a job that
        waits for a runner, is scheduled far ahead or retries longer than its hold was made for
        keeps its money held, and its capture possible. Returns how many were renewed."""
        deps = self.deps
        now = deps.now()
        async with deps.db.session() as s:
            rows = (await s.execute(
                select(Job.id, Job.hold_id).where(Job.status.in_([PENDING, RUNNING, SCHEDULED]), Job.hold_id != "",
                                                  Job.hold_expire_time < now + RENEW_AHEAD)
                .order_by(Job.hold_expire_time).limit(limit))).all()
        if not rows:
            return 0
        until = now + HOLD_MARGIN
        outcomes = await deps.billing.extend([(r.hold_id, until) for r in rows])
        renewed = [(r.id, r.hold_id) for r, err in zip(rows, outcomes, strict=True) if err is None]
        for r, err in zip(rows, outcomes, strict=True):
            if err is not None:  # lapsed already (the loop was down for a day): the capture will say so
                log.error("hold %s of job %s not renewed: %s", r.hold_id, r.id, err.reason)
        if renewed:
            async with deps.db.session() as s:  # the same hold still (a manual retry makes a new one)
                await s.execute(update(Job).where(tuple_(Job.id, Job.hold_id).in_(renewed))
                                .values(hold_expire_time=until))
        return len(rows)

    # queue gauges --------------------------------------------------------------------------------
    async def _refresh_depth(self, from_database: bool = True) -> None:
        """Queues with waiting jobs, those seen before and those runners wait on (reported as 0 when
        empty, so an idle queue is a series at 0 rather than no series). Reading the waiting jobs'
        queues from PostgreSQL costs a scan of the backlog: full recovery passes only."""
        names: Sequence[str] = ()
        if from_database:
            async with self.deps.db.session() as s:
                names = (await s.execute(select(Job.queue_name).where(Job.status == PENDING)
                                         .distinct())).scalars().all()
        queues = sorted(set(names) | {q for q, _ in self._depth} | self.deps.signals.known_queues())
        stats = await self.deps.queue.stats(queues) if queues else []
        now = self.deps.clock()
        self._depth = {(t.job_type, c.priority): (c.depth, None if c.oldest_enqueued_at is None
                                                  else max(0.0, now - c.oldest_enqueued_at))
                       for t in stats for c in t.classes}

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(d, {"queue": q, "priority": priority_name(p)})
                for (q, p), (d, _) in self._depth.items()]

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        # an empty queue's oldest job is 0 s old, like its depth: a series at 0, not a gap
        return [Observation(a or 0.0, {"queue": q, "priority": priority_name(p)})
                for (q, p), (_, a) in self._depth.items()]

    # retention -----------------------------------------------------------------------------------
    async def retain_once(self) -> tuple[int, int]:
        """Purge payloads and results of jobs finished longer than the retention age, and delete jobs
        finished longer than the deletion age with their history (Archive: never). Returns (purged, deleted).

        In batches of RETENTION_BATCH jobs, one short transaction each, until none is left: one
        statement over every eligible id would outgrow PostgreSQL's 65,535 parameters (and then fail
        every hour after), and one transaction over all of them would hold its locks for minutes."""
        deps, config = self.deps, self.deps.config
        now = deps.now()
        archive = enums.PERSISTENCE_POLICY_ARCHIVE
        finished = (Job.status.in_(FINAL), Job.persistence_policy != archive)
        purged = 0
        while True:
            async with deps.db.session() as s:
                batch = (select(Job.id).where(*finished, Job.purged.is_(False),
                                              Job.complete_time < now - timedelta(days=config.retention_days))
                         .limit(RETENTION_BATCH).with_for_update(skip_locked=True))
                ids = (await s.execute(update(Job).where(Job.id.in_(batch.scalar_subquery()))
                                       .values(payload=None, result=None, purged=True)
                                       .returning(Job.id))).scalars().all()
                if ids:
                    await s.execute(update(JobAttempt).where(JobAttempt.job_id.in_(ids)).values(details=None))
            purged += len(ids)
            if len(ids) < RETENTION_BATCH:
                break
        deleted = 0
        if config.delete_after_days > 0:
            old = now - timedelta(days=config.delete_after_days)
            while True:
                async with deps.db.session() as s:
                    ids = (await s.execute(select(Job.id).where(*finished, Job.complete_time < old)
                                           .limit(RETENTION_BATCH).with_for_update(skip_locked=True))).scalars().all()
                    if ids:
                        await s.execute(delete(JobAttempt).where(JobAttempt.job_id.in_(ids)))
                        await s.execute(delete(JobStatusChange).where(JobStatusChange.job_id.in_(ids)))
                        await s.execute(delete(Job).where(Job.id.in_(ids)))
                deleted += len(ids)
                if len(ids) < RETENTION_BATCH:
                    break
            while True:
                async with deps.db.session() as s:
                    keys = (select(IdempotencyKey.scope, IdempotencyKey.request_id)
                            .where(IdempotencyKey.create_time < old).limit(RETENTION_BATCH)
                            .with_for_update(skip_locked=True))
                    gone = (await s.execute(delete(IdempotencyKey).where(
                        tuple_(IdempotencyKey.scope, IdempotencyKey.request_id).in_(keys))
                        .returning(IdempotencyKey.scope))).all()
                if len(gone) < RETENTION_BATCH:
                    break
        return purged, deleted

    async def retain_forever(self) -> None:
        while True:
            await self.retain_once()
            await asyncio.sleep(RETENTION_INTERVAL)


def _leased_before(record: bytes | str, before: float) -> bool:
    text = record.decode() if isinstance(record, bytes) else record
    parts = text.split("|")
    return parts[0] == "L" and len(parts) > 3 and float(parts[3]) < before


def _leased(record: bytes | str) -> bool:
    return (record.decode() if isinstance(record, bytes) else record).startswith("L|")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
