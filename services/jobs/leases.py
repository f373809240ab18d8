"""The runners service's internal API: lease, complete, extend, release, get a lease, and the
reaper of expired leases.

Fencing: every write of an attempt's outcome is a conditional update of the job row locked with
its current `lease_id` and status Running. A result, heartbeat or release carrying another lease
id (expired and reaped, or the job re-leased since) changes nothing and answers STALE_LEASE, so
a slow runner or the reaper can never overwrite a job that another path already finished.
"""

from __future__ import annotations

import asyncio
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
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.coalescing import Answer, Backlog, Coalescer
from innosystem.kit.db import Conn, Writes
from innosystem.kit.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    to_status,
)
from innosystem.kit.protos import json_dumps, timestamp
from services.jobs import metrics, outcomes, runsql, tracing
from services.jobs.billing import NotJoined
from services.jobs.convert import lease_pb, plain
from services.jobs.handoff import Idle
from services.jobs.models import Job, JobType
from services.jobs.queue import QueueItem
from services.jobs.runtime import (
    FAILED,
    FINAL,
    PENDING,
    RUNNING,
    SUCCEEDED,
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
# A pop that found a caller's queues empty is not repeated for this long while no job became
# ready in them here (`Signals.versions`): at light load each job handed to a long poll is
# followed by the runner's next lease, which would find the queue empty again. Bounded in time
# because another replica's wake-up (a publish) may be lost.
EMPTY_SECONDS = 1.0
MAX_EMPTY_KEYS = 10_000
TAGS_CACHE_SECONDS = 5.0
ENCRYPT_SECONDS = 5.0  # one result's encryption; a slow key manager fails its own attempt, not the batch
OUTBOX_GRACE_SECONDS = 10.0  # an ending settles its own billing first; the sweeper takes what is older
SETTLED_FLUSH_SECONDS = 1.0  # settled outbox rows no completion took along are deleted this soon
ENDED = frozenset({pb.ATTEMPT_OUTCOME_SUCCEEDED, pb.ATTEMPT_OUTCOME_FAILED, pb.ATTEMPT_OUTCOME_CANCELLED})


def _status(err: DomainError) -> status_pb2.Status:
    return to_status(err, DOMAIN)


def stale(job_id: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(f"lease of job {job_id} is not current: {why}", reason="STALE_LEASE",
                              metadata={"job_id": job_id})


@dataclass(frozen=True)
class Pop:
    """Job ids one LeaseJobs call popped from Redis, to mark Running for its runner."""

    ids: list[str]
    request: pb.LeaseJobsRequest


class Leases:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        deps.idle.undelivered = self._undelivered  # a handed job whose call went away goes back
        self._tags: dict[str, tuple[float, list[tuple[str, ...]]]] = {}
        self._seen_at: dict[str, float] = {}  # queue → when this process last marked a runner there
        # (queues, customer) → their versions when a pop found them empty, and when (EMPTY_SECONDS)
        self._empty: dict[tuple[tuple[str, ...], str], tuple[tuple[int, ...], float]] = {}
        self._settled: list[str] = []  # holds billing answered for, their outbox rows not yet deleted
        self._flusher: asyncio.Task[None] | None = None
        # Committed endings whose billing is not sent yet, with their spans (`_settle_soon`).
        self._settling: Backlog[tuple[outcomes.Settlement, list[Span]]] = Backlog(
            self._settle_together, "settling ended batches", deps.config.settle_window_seconds)
        # Two lease transactions may be under way at once: runners asking while one commits need not wait for it.
        self._marker: Coalescer[Pop, list[pb.JobLease]] = Coalescer(self._mark_many, orphaned=self._undelivered,
                                                                    concurrency=2)

    # which queues a runner serves ----------------------------------------------------------------
    async def queues_for(self, names: Sequence[str], tags: Sequence[str], customer_id: str = "") -> list[str]:
        """Queue names of the given type names whose required tags the runner's tags include: of
        catalog types for a shared runner, of its customer's own types for a customer's runner."""
        now = time.monotonic()
        missing = [n for n in names if n not in self._tags or self._tags[n][0] < now]
        if missing:
            async with self.deps.db.session() as s:
                rows = (await s.execute(select(JobType.name, JobType.required_tags, JobType.customer_id)
                                        .where(JobType.name.in_(missing)).distinct())).all()
            found: dict[str, set[tuple[str, ...]]] = {n: set() for n in missing}
            for name, req, owner in rows:  # owner "" = the catalog
                found[name].add((str(owner or ""), *sorted(req or ())))
            for name, sets in found.items():
                self._tags[name] = (now + TAGS_CACHE_SECONDS, sorted(sets))
        have = set(tags)
        out: list[str] = []
        for name in dict.fromkeys(names):
            out += [queue_name(name, req, owner or None) for owner, *req in self._tags[name][1]
                    if owner == customer_id and set(req) <= have]
        return out

    async def _seen(self, queues: Sequence[str]) -> None:
        """Remember that a runner asked for these queues (the pending reason NO_COMPATIBLE_RUNNER).
        The marker lives `runner_seen_seconds`; refreshing it a third of that often is enough, and
        spares a Redis round trip on almost every lease."""
        ttl = max(1, int(self.deps.config.runner_seen_seconds))
        now = time.monotonic()
        stale = [q for q in queues if self._seen_at.get(q, -ttl) < now - ttl / 3]
        if not stale:
            return
        for q in stale:
            self._seen_at[q] = now
        pipe = self.deps.queue.client.pipeline(transaction=False)
        for q in stale:
            pipe.set(f"{self.deps.queue.prefix}seen:{q}", "1", ex=ttl)
        try:
            await pipe.execute()
        except Exception as exc:  # best effort: only the pending reason depends on it
            log.warning("cannot record runner presence: %s", exc)
            for q in stale:
                self._seen_at.pop(q, None)

    # LeaseJobs -----------------------------------------------------------------------------------
    async def lease(self, r: pb.LeaseJobsRequest) -> list[pb.JobLease]:
        if not r.runner_id:
            raise InvalidArgument("runner_id is required", field="runner_id", reason="MISSING_FIELD")
        if not 1 <= r.max_jobs <= MAX_LEASE_JOBS:
            raise InvalidArgument(f"max_jobs must be 1 to {MAX_LEASE_JOBS}", field="max_jobs",
                                  reason="INVALID_MAX_JOBS")
        if not 0 <= r.wait_ms <= MAX_WAIT_MS:
            raise InvalidArgument(f"wait_ms must be 0 to {MAX_WAIT_MS}", field="wait_ms", reason="INVALID_WAIT")
        if r.customer_id and runsql.as_uuid(r.customer_id) is None:
            raise InvalidArgument("customer_id must be a UUID", field="customer_id", reason="INVALID_ID")
        deadline = time.monotonic() + r.wait_ms / 1000
        queues = await self.queues_for(list(r.job_type_names), list(r.tags), r.customer_id)
        if queues:
            await self._seen(queues)
        while True:
            await self.deps.queue.landed()  # a job answered is a job found: its wake-up counted too
            seen = self.deps.signals.versions(queues)
            leases: list[pb.JobLease] = []
            if queues and not self._still_empty(queues, r.customer_id, seen):
                ids = await self.deps.queue.lease(queues, r.max_jobs, self.deps.clock(), r.customer_id or None)
                self._popped(queues, r.customer_id, seen, bool(ids))
                if len(ids) >= r.max_jobs:  # all it asked for: more may wait, for the next long poll
                    self.deps.signals.more(queues)
                if ids:
                    leases = await self._mark_running(ids, r)
                    if leases:
                        return leases
                    continue  # only ghosts (jobs no longer pending): look again at once
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            # Idle: a submit of this replica may hand this call its jobs directly (`handoff`).
            idle = Idle(r, queues, asyncio.get_running_loop().create_future())
            self.deps.idle.add(idle)
            try:
                await self.deps.signals.wait(queues, seen, min(left, RECHECK_SECONDS), idle.wake)
                handed = await self.deps.idle.received(idle)
            except BaseException:  # the caller went away: what a submit hands it goes back
                self.deps.idle.abandon(idle)
                raise
            finally:
                self.deps.idle.discard(idle)
            if handed:
                return handed
            if not queues and time.monotonic() < deadline:  # a type may appear meanwhile
                queues = await self.queues_for(list(r.job_type_names), list(r.tags), r.customer_id)

    def _still_empty(self, queues: Sequence[str], customer_id: str, seen: tuple[int, ...]) -> bool:
        """Whether a pop found these queues empty (for this customer) less than EMPTY_SECONDS ago,
        and no job became ready in them since (as far as this replica knows)."""
        found = self._empty.get((tuple(queues), customer_id))
        return found is not None and found[0] == seen and time.monotonic() - found[1] < EMPTY_SECONDS

    def _popped(self, queues: Sequence[str], customer_id: str, seen: tuple[int, ...], any_found: bool) -> None:
        key = (tuple(queues), customer_id)
        if any_found:
            self._empty.pop(key, None)
            return
        if len(self._empty) >= MAX_EMPTY_KEYS:
            self._empty.clear()
        self._empty[key] = (seen, time.monotonic())

    async def _mark_running(self, ids: Sequence[str], r: pb.LeaseJobsRequest) -> list[pb.JobLease]:
        """Concurrent LeaseJobs calls (many runners woken by one submit) share one transaction."""
        return await self._marker.submit(Pop(list(ids), r))

    async def _mark_many(self, pops: Sequence[Pop]) -> Answer[list[pb.JobLease]]:
        """The popped jobs still leasable become Running under a new lease each (an attempt, a status
        change), all in one statement; the others (ghosts: finished or re-leased since they were
        queued) are forgotten. The leases go to their callers as soon as they are committed; the
        rest (Redis, the job events, the metrics) follows in `_leased`."""
        deps = self.deps
        now = deps.now()
        every = [i for pop in pops for i in pop.ids]
        starts = [runsql.Start(i, pop.request.runner_id, pop.request.session_id) for pop in pops for i in pop.ids]
        try:
            async with deps.db.transaction() as conn:
                started = await runsql.start_attempts(conn, starts, now, deps.config.lease_ttl_seconds)
                ghosts = [i for i in every if i not in started]
                queues = await runsql.queues_of(conn, ghosts) if ghosts else {}
        except BaseException:
            await self._requeue_popped(every)
            raise
        self.deps.copies.keep(started.values(), now)
        leased = [[started[i] for i in pop.ids if i in started] for pop in pops]  # each in the queue's order
        out: list[list[pb.JobLease] | BaseException] = [[lease_pb(j) for j in mine] for mine in leased]
        return Answer(out, self._leased(started, _by_queue(ghosts, queues), now))

    async def _leased(self, started: dict[str, Any], ghosts: dict[str, list[str]], now: datetime) -> None:
        """After a lease batch's callers have their leases: its ghosts leave Redis, its waits and
        starts are recorded, and its job events go out. A watcher reads the job on each event, so
        the event may follow the lease (even the job's end: the job is read as it is then)."""
        for q, gids in ghosts.items():
            await self.deps.queue.finish(q, gids)
        await record_started(self.deps, list(started.values()), now)

    async def _undelivered(self, leases: list[pb.JobLease]) -> None:
        """The LeaseJobs caller went away while its jobs were being leased: they go back, unstarted."""
        if leases:
            await self.release(pb.ReleaseLeasesRequest(
                runner_id=leases[0].runner_id, reason=pb.LEASE_RELEASE_REASON_NOT_STARTED,
                leases=[pb.LeaseRef(job_id=x.job_id, lease_id=x.lease_id) for x in leases]))

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
        """Each completion is decided on its own: a result that cannot be stored (too large, a NUL
        character, its project's key refused or unreachable) fails that attempt alone, with its
        reason, and a batch whose statement fails is split until the failing item stands alone."""
        if not 1 <= len(completions) <= MAX_ITEMS:
            raise InvalidArgument(f"1 to {MAX_ITEMS} completions", field="completions", reason="INVALID_BATCH_SIZE")
        items = [_Item.of(c, self.deps.config.max_result_bytes) for c in completions]
        return await self._complete_split(items)

    async def _complete_split(self, items: list[_Item]) -> list[pb.CompletionResult]:
        try:
            return await self._complete_batch(items)
        except DBAPIError as exc:
            if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
                raise  # the database itself is unwell: the caller retries the whole batch
            what = f"{type(exc.orig).__name__} {getattr(exc.orig, 'sqlstate', '')}".strip()
            if len(items) > 1:
                mid = len(items) // 2
                log.warning("a batch of %d completions failed (%s); splitting it", len(items), what)
                return await self._complete_split(items[:mid]) + await self._complete_split(items[mid:])
            item = items[0]
            if item.outcome == pb.ATTEMPT_OUTCOME_FAILED and item.unstorable:
                log.error("completion of job %s cannot be stored (%s)", item.c.job_id, what)
                res = pb.CompletionResult(job_id=item.c.job_id, lease_id=item.c.lease_id)
                res.error.CopyFrom(_status(DomainError("the result could not be stored", reason="RESULT_NOT_STORED")))
                return [res]
            log.warning("result of job %s cannot be stored (%s); failing the attempt", item.c.job_id, what)
            item.refuse("RESULT_NOT_STORED", f"the result could not be stored ({what})")
            return await self._complete_split([item])

    async def _complete_batch(self, items: list[_Item]) -> list[pb.CompletionResult]:
        now = self.deps.now()
        settled, self._settled = self._settled, []  # outbox rows billing answered for: gone with this commit
        try:
            results, ends, st = await self._complete_in(items, now, settled)
        except BaseException:
            self._settled = settled + self._settled
            raise
        await self._ended(ends, st, now, "complete")
        return results

    async def _complete_in(self, items: list[_Item], now: datetime, settled: list[str]
                           ) -> tuple[list[pb.CompletionResult], list[outcomes.End], outcomes.Settlement]:
        """Decided from the lease's copy of the jobs where this replica leased them all (one round
        trip, no locked read: `LeaseCopies`), else, or when a job changed since, from the jobs
        read under lock."""
        deps = self.deps
        refs = [(it.c.job_id, it.c.lease_id, it.c.runner_id) for it in items]
        copies = self.deps.copies.take(refs, now)
        if copies is not None:
            await self._encrypt_results([(it, copies[it.c.job_id]) for it in items if copies[it.c.job_id].encryption])
            results, ends, st = self._decide(items, copies, [None] * len(items), now)
            try:
                if not await self._end_joined(ends, st, now, settled):
                    async with deps.db.transaction() as s:
                        await runsql.end_attempts(s, ends, st.outbox(), now, unchanged=True, settled_holds=settled)
                return results, ends, st
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != runsql.CHANGED_SINCE_LEASE:
                    raise
        async with deps.db.transaction() as s:
            runs = await runsql.lock_runs(s, [it.c.job_id for it in items], settled)
            errors = await _lease_errors(s, refs, runs, now)
            await self._encrypt_results([(it, runs[it.c.job_id]) for it, err in zip(items, errors, strict=True)
                                         if err is None and runs[it.c.job_id].encryption])
            results, ends, st = self._decide(items, runs, errors, now)
            await runsql.end_attempts(s, ends, st.outbox(), now)
        return results, ends, st

    async def _end_joined(self, ends: list[outcomes.End], st: outcomes.Settlement, now: datetime,
                          settled: list[str]) -> bool:
        """The ends and their captures in one commit, where billing shares this process and its
        database (services/billing/joined.py) and the captures are one customer's: no outbox row
        for them, no capture call and no commit of billing's own. False, nothing written, where
        billing cannot take them there or one of its guards failed the commit: write the ends with
        the outbox. Raises as `end_attempts(unchanged=True)` does (CHANGED_SINCE_LEASE)."""
        deps = self.deps
        if not st.captures or len(st.customers) != 1:
            return False
        peer = deps.billing.joined(deps.db, len(st.captures))
        if peer is None:
            return False
        try:
            async with deps.db.transaction() as s:
                writes = Writes()
                captures = await deps.billing.capture_in(peer, s, writes, next(iter(st.customers)), st.captures,
                                                         st.held)
                await runsql.end_attempts(s, ends, st.outbox(captures=False), now, unchanged=True,
                                          settled_holds=settled, before=writes)
        except NotJoined:
            return False
        except DBAPIError as exc:
            if not peer.failed(exc):
                raise
            return False
        st.captures = []  # captured with the ends: Open-to-Buy follows with the rest of the billing
        st.joined.append(captures)
        return True

    def _decide(self, items: list[_Item], runs: dict[str, Any], errors: Sequence[DomainError | None], now: datetime
                ) -> tuple[list[pb.CompletionResult], list[outcomes.End], outcomes.Settlement]:
        """Each completion's answer, and the end of its attempt where its lease is current."""
        st = outcomes.Settlement()
        results: list[pb.CompletionResult] = []
        ends: list[outcomes.End] = []
        for it, err in zip(items, errors, strict=True):
            res = pb.CompletionResult(job_id=it.c.job_id, lease_id=it.c.lease_id)
            results.append(res)
            err = err or it.invalid
            if err is not None:
                res.error.CopyFrom(_status(err))
                continue
            run = runs[it.c.job_id]
            if it.outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED:
                end = outcomes.succeed(run, it.result or {}, it.cost, it.details, st, it.encryption, it.units, now)
                if end.result is not None and end.result is it.result:
                    end.result_text = it.text  # not encoded a second time
            elif it.outcome == pb.ATTEMPT_OUTCOME_CANCELLED:
                end = outcomes.cancel_running(run, st, f"cancelled: {run.cancel_reason or 'the runner stopped it'}")
            else:
                end = outcomes.fail(self.deps, run, pb.ATTEMPT_OUTCOME_FAILED, it.error or {}, it.details, now, st)
            ends.append(end)
            res.status = end.status  # type: ignore[assignment]
            if end.next_attempt_time is not None:
                res.next_attempt_time.FromDatetime(end.next_attempt_time)
        return results, ends, st

    async def _ended(self, ends: Sequence[outcomes.End], st: outcomes.Settlement, now: datetime, what: str) -> None:
        """After an ending's commit: its queues, events and metrics now, its billing (then out of
        the outbox) soon after; its spans end with the billing."""
        deps = self.deps
        spans = tracing.for_batch([e.run for e in ends], what, [e.status for e in ends])
        try:
            with tracing.within(spans):
                at = now.isoformat()
                await outcomes.settle_queue(deps, st, [outcomes.event(e, at) for e in ends])
            if st.retries:
                await deps.signals.schedule_changed()
            _count_ends(ends, now)
        finally:
            self._settle_soon(st, spans)

    def _settle_soon(self, st: outcomes.Settlement, spans: list[Span]) -> None:
        """Billing for committed endings, in the background: whoever ended them (a runner's
        results, above all) does not wait for billing's commit, and the endings that commit
        meanwhile go to billing together: one capture call and one billing commit where a quiet
        stream of results made one each. The outbox rows written with the endings keep the work
        for `settle_outbox_once` if this never runs (a crash)."""
        if not st.captures and not st.releases and not st.joined:
            for span in spans:
                span.end()
            return
        self._settling.add((st, spans))

    async def _settle_together(self, batch: list[tuple[outcomes.Settlement, list[Span]]]) -> None:
        spans = [span for _, mine in batch for span in mine]
        try:  # a failure leaves the work in the outbox: settle_outbox_once takes it
            with tracing.within(spans):
                await self._settle(outcomes.Settlement.merged([st for st, _ in batch]))
        finally:
            for span in spans:
                span.end()

    async def settle_pending(self) -> None:
        """Wait until the billing of every ending committed so far has been sent (tests, shutdown)."""
        await self._settling.drained()

    async def _settle(self, st: outcomes.Settlement) -> None:
        """After the commit: billing for the committed endings. Their outbox rows are deleted by the
        next completion's transaction (or within a second when none comes): no transaction of its
        own per batch. If billing cannot be reached the rows stay for `settle_outbox_once`; a hold
        billing refuses stays too, tried again later (backing off), never dropped."""
        for captures in st.joined:  # stored with their ends: Open-to-Buy lets go of the holds
            await captures.committed()
        if not st.captures and not st.releases:
            return
        try:
            done = await outcomes.settle_billing(self.deps, st)
        except Exception as exc:
            log.warning("billing unreachable (%s); %d holds wait in the outbox", type(exc).__name__,
                        len(st.captures) + len(st.releases))
            return
        holds = [h for h in [c.hold_id for c in st.captures] + st.releases if h not in done.refused]
        if done.lowered or done.refused:  # a cost to correct, or refusals to record: at once
            async with self.deps.db.session() as s:
                await runsql.settled(s, holds, done.lowered)
                await runsql.outbox_refused(s, done.refused, self.deps.now())
            return
        self._settled += holds
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_settled_later())

    async def _flush_settled_later(self) -> None:
        await asyncio.sleep(SETTLED_FLUSH_SECONDS)
        await self.flush_settled()

    async def flush_settled(self) -> None:
        """Delete the outbox rows billing has answered for (what no completion took along)."""
        holds, self._settled = self._settled, []
        if not holds:
            return
        try:
            async with self.deps.db.session() as s:
                await runsql.settled(s, holds, [])
        except Exception as exc:  # they stay in the outbox; the sweeper's repeat is idempotent
            log.warning("settled outbox rows not deleted yet (%s)", type(exc).__name__)
            self._settled = holds + self._settled

    async def _encrypt_results(self, todo: list[tuple[_Item, Any]]) -> None:
        """Results of jobs encrypted at submit are encrypted the same way before they are stored, each
        on its own and bounded in time: a refused or unreachable key fails that attempt alone. (The
        batch's rows stay locked meanwhile; they are this call's own jobs, no other tenant's work.)"""
        encryptor = self.deps.encryptor
        todo = [(it, run) for it, run in todo if it.outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED and it.plain]
        if not todo or encryptor is None:
            return

        async def one(it: _Item, run: Any) -> None:
            enc = run.encryption
            try:
                async with asyncio.timeout(ENCRYPT_SECONDS):
                    out, paths = await encryptor.encrypt(  # from the plaintext: a split batch encrypts again
                        enc["key_id"], str(run.customer_id), str(run.project_id), str(run.id), "result",
                        it.plain or {}, run.settings.get("sensitive_fields", []))
            except (DomainError, TimeoutError) as exc:
                why = exc.reason if isinstance(exc, DomainError) else "TIMEOUT"
                log.warning("result of job %s not encrypted (%s); failing the attempt", it.c.job_id, why)
                it.refuse("RESULT_NOT_STORED", f"the result could not be encrypted under the project's key ({why})")
                return
            it.result, it.text = out, None
            it.encryption = {**enc, "encrypted_fields": [*enc.get("encrypted_fields", []), *paths]}

        await asyncio.gather(*(one(it, run) for it, run in todo))

    # ExtendLeases --------------------------------------------------------------------------------
    async def extend(self, r: pb.ExtendLeasesRequest) -> list[pb.LeaseExtensionResult]:
        if len(r.leases) > MAX_ITEMS:
            raise InvalidArgument(f"at most {MAX_ITEMS} leases", field="leases", reason="INVALID_BATCH_SIZE")
        if r.extend_seconds < 0:
            raise InvalidArgument("extend_seconds must not be negative", field="extend_seconds",
                                  reason="INVALID_EXTEND")
        deps = self.deps
        now = deps.now()
        span = r.extend_seconds or deps.config.lease_ttl_seconds
        out: list[pb.LeaseExtensionResult] = []
        progress: dict[str, dict[str, Any]] = {}
        for e in r.leases:
            if e.HasField("progress"):
                p = e.progress
                progress[e.job_id] = {"percent": max(0, min(100, p.percent)), "message": _storable(p.message[:2000]),
                                      "details": _details(p.details) if p.HasField("details") else None,
                                      "update_time": now.isoformat()}
        async with deps.db.session() as s:
            refs = [(e.job_id, e.lease_id, r.runner_id) for e in r.leases]
            runs = await runsql.lock_runs(s, [e.job_id for e in r.leases])
            errors = await _lease_errors(s, refs, runs, now)
            fresh = [e.job_id for e, err in zip(r.leases, errors, strict=True) if err is None]
            self.deps.copies.drop(fresh)  # their rows change: their ends read them under lock
            extended = await runsql.extend_leases(s, fresh, {j: progress[j] for j in fresh if j in progress}, now, span)
        for e, err in zip(r.leases, errors, strict=True):
            res = pb.LeaseExtensionResult(job_id=e.job_id, lease_id=e.lease_id)
            out.append(res)
            if err is not None:
                res.error.CopyFrom(_status(err))
                continue
            expire, cancel = extended[e.job_id]
            res.expire_time.FromDatetime(expire)
            res.cancel_requested = cancel
        await deps.signals.jobs_changed([(j, {"progress": p}) for j, p in progress.items() if j in extended])
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
        st = outcomes.Settlement()
        out: list[pb.LeaseReleaseResult] = []
        ends: list[outcomes.End] = []
        back: list[Any] = []
        async with deps.db.session() as s:
            if not refs:  # every lease the runner holds
                refs = await runsql.running_in(s, r.runner_id)
            runs = await runsql.lock_runs(s, [j for j, _ in refs])
            self.deps.copies.drop(runs)
            errors = await _lease_errors(s, [(j, lid, r.runner_id) for j, lid in refs], runs, None)
            for (job_id, lease_id), err in zip(refs, errors, strict=True):
                res = pb.LeaseReleaseResult(job_id=job_id, lease_id=lease_id)
                out.append(res)
                if err is not None:
                    res.error.CopyFrom(_status(err))
                    continue
                run = runs[job_id]
                if run.cancel_requested:
                    end = outcomes.cancel_running(run, st, "cancelled: runner released the job")
                elif r.reason == pb.LEASE_RELEASE_REASON_NOT_STARTED:
                    back.append(run)
                    res.status = PENDING
                    continue
                else:
                    end = outcomes.fail(deps, run, pb.ATTEMPT_OUTCOME_RUNNER_LOST,
                                        {"message": f"runner {r.runner_id} lost", "type": "RUNNER_LOST"}, None, now, st)
                ends.append(end)
                res.status = end.status  # type: ignore[assignment]
            await runsql.unstart(s, back, [f"runner {r.runner_id} did not start it; back to the front"] * len(back),
                                 now)
            await runsql.end_attempts(s, ends, st.outbox(), now)  # the last step: it commits
        await self._ended(ends, st, now, "release")
        if back:
            await requeue(deps, back)
            await deps.signals.jobs_changed([(str(b.id), {"status": PENDING, "attempt": b.attempt_count - 1,
                                                          "reason": "back to the front", "time": now.isoformat()})
                                             for b in back])
        return out

    # GetLease ------------------------------------------------------------------------------------
    async def get(self, r: pb.GetLeaseRequest) -> pb.JobLease:
        async with self.deps.db.session() as s:
            jid = runsql.as_uuid(r.job_id)
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
        st = outcomes.Settlement()
        ends: list[outcomes.End] = []
        async with deps.db.session() as s:
            rows = await runsql.expired_runs(s, now, limit)
            if not rows:
                return 0
            self.deps.copies.drop(str(run.id) for run in rows)
            for run in rows:
                limit_at = (run.lease_start_time or now) + timedelta(seconds=run.settings.get("timeout_seconds", 300))
                timed_out = run.lease_expire_time is not None and run.lease_expire_time >= limit_at
                outcome = pb.ATTEMPT_OUTCOME_TIMED_OUT if timed_out else pb.ATTEMPT_OUTCOME_RUNNER_LOST
                message = ("attempt timed out" if timed_out else f"lease expired: runner {run.runner_id} went silent")
                ends.append(outcomes.fail(deps, run, outcome, {"message": message,
                                                               "type": "TIMED_OUT" if timed_out else "RUNNER_LOST"},
                                          None, now, st))
            await runsql.end_attempts(s, ends, st.outbox(), now)
        await self._ended(ends, st, now, "expire")
        return len(rows)


async def record_started(deps: Deps, jobs: Sequence[Any], now: datetime) -> None:
    """After jobs were leased (by a lease, or handed to a long poll by their submit): their
    waits and starts are recorded, and their job events go out."""
    tracing.record_waits(jobs, now)
    for labels, group in _by_labels(jobs):
        metrics.started.add(len(group), labels)
        for j in group:
            if j.queue_time is not None:
                metrics.dispatch_latency.record(max(0.0, (now - j.queue_time).total_seconds()), labels)
    at = now.isoformat()
    await deps.signals.jobs_changed([(str(j.id), {"status": RUNNING, "reason": f"leased by runner {j.runner_id}",
                                                  "attempt": j.attempt_count, "time": at})
                                     for j in jobs])


async def settle_outbox_once(deps: Deps, grace_seconds: float = OUTBOX_GRACE_SECONDS, limit: int = 500) -> int:
    """Billing left in the outbox by an ending whose process died, while billing was down, or
    refused by billing (tried again at its `next_try_time`)."""
    now = deps.now()
    async with deps.db.session() as s:
        rows = await runsql.outbox_due(s, now - timedelta(seconds=grace_seconds), now, limit)
        if not rows:
            return 0
        done = await outcomes.settle_billing(deps, outcomes.Settlement.of(rows))
        await runsql.settled(s, [r.hold_id for r in rows if r.hold_id not in done.refused], done.lowered)
        await runsql.outbox_refused(s, done.refused, now)
    log.info("settled %d holds left in the billing outbox (%d refused again)", len(rows) - len(done.refused),
             len(done.refused))
    return len(rows)


async def requeue(deps: Deps, jobs: Sequence[Any]) -> None:
    """Put Pending jobs back in their queues at their original place (their queue time)."""
    for q, ids in _by_queue([str(j.id) for j in jobs], {str(j.id): j.queue_name for j in jobs}).items():
        await deps.queue.finish(q, ids)
    items = [QueueItem(str(j.id), j.queue_name, str(j.customer_id), j.priority,
                       (j.queue_time or j.create_time).timestamp()) for j in jobs]
    if items:
        await deps.queue.enqueue(items)
        await deps.signals.jobs_ready({i.job_type for i in items})


@dataclass(slots=True)
class _Item:
    """One completion as received, with what can be stored of it."""

    c: pb.JobCompletion
    outcome: int
    result: dict[str, Any] | None = None  # as stored: encrypted where the job's project asks
    plain: dict[str, Any] | None = None  # as the runner sent it
    text: str | None = None  # `result` as JSON, measured once and stored as it is
    details: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cost: int | None = None
    units: int | None = None
    encryption: dict[str, Any] | None = None
    invalid: DomainError | None = None  # the completion itself is refused
    unstorable: bool = False  # its result was turned into a failure of the attempt

    @classmethod
    def of(cls, c: pb.JobCompletion, max_result_bytes: int) -> _Item:
        r = c.result
        it = cls(c, r.outcome, details=_details(r.details) if r.HasField("details") else None)
        if r.outcome not in ENDED:
            it.invalid = InvalidArgument("result.outcome must be SUCCEEDED, FAILED or CANCELLED",
                                         field="result.outcome", reason="INVALID_OUTCOME")
        elif r.outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED:
            it.cost = r.actual_cost_cents if r.HasField("actual_cost_cents") else None
            it.units = r.units if r.HasField("units") else None  # a PER_UNIT price's measure
            try:
                it.result = it.plain = plain(r.result)
            except ValueError:
                it.refuse("RESULT_INVALID", "the result holds a NaN or infinite number, which JSON cannot hold")
                return it
            stored = json_dumps(it.result)
            size, it.text = len(stored), stored.decode()  # measured as the UTF-8 it is stored as
            if size > max_result_bytes:
                it.refuse("RESULT_TOO_LARGE", f"the result is {size} bytes, over the limit of {max_result_bytes}")
            elif _has_nul(it.result):
                it.refuse("RESULT_INVALID", "the result holds a NUL character (\\u0000), which cannot be stored")
        elif r.outcome == pb.ATTEMPT_OUTCOME_FAILED:
            e = r.error
            it.error = {"message": _storable(e.message[:10_000]), "type": _storable(e.type[:200]),
                        "non_retryable": e.non_retryable,
                        "details": _details(e.details) if e.HasField("details") else None}
        return it

    def refuse(self, kind: str, message: str) -> None:
        """The result cannot be stored: the attempt fails with this reason (and follows the retry policy)."""
        self.outcome, self.result, self.plain, self.text, self.encryption, self.cost, self.unstorable = (
            pb.ATTEMPT_OUTCOME_FAILED, None, None, None, None, None, True)
        self.error = {"message": message, "type": kind, "non_retryable": False, "details": None}


def _has_nul(value: Any) -> bool:
    """PostgreSQL cannot store U+0000 in text or JSONB, anywhere in a document (keys included)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def _storable_or_none(value: dict[str, Any]) -> dict[str, Any] | None:
    """Details that cannot be stored are left out rather than failing the attempt's record."""
    return None if _has_nul(value) else value


def _details(value: Any) -> dict[str, Any] | None:
    """Details as stored: left out when they hold what cannot be (a NUL, a NaN or infinite number)."""
    try:
        return _storable_or_none(plain(value))
    except ValueError:
        return None


def _by_queue(ids: Sequence[str], queues: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in ids:
        if i in queues:
            out.setdefault(queues[i], []).append(i)
    return out


def _by_labels(rows: Sequence[Any]) -> list[tuple[dict[str, str], list[Any]]]:
    """Rows grouped by their metric labels, so a batch records one counter add per group."""
    out: dict[tuple[str, int], list[Any]] = {}
    for r in rows:
        out.setdefault((r.job_type_name, r.priority), []).append(r)
    return [({"job_type": name, "priority": priority_name(p)}, group) for (name, p), group in out.items()]


async def _lease_errors(s: Conn, refs: Sequence[tuple[str, str, str]], runs: dict[str, Any],
                        now: datetime | None) -> list[DomainError | None]:
    """Fencing, per (job id, lease id, runner id): None where the lease is the job's current one
    (and, with `now`, not expired); a second item for the same job in one call is refused."""
    errors: list[DomainError | None] = []
    seen: set[str] = set()
    stale_runs: list[Any] = []
    for job_id, lease_id, runner_id in refs:
        run = runs.get(job_id)
        if run is None:
            errors.append(NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND"))
        elif job_id in seen:
            errors.append(FailedPrecondition(f"job {job_id} already has a result in this call",
                                             reason="ALREADY_COMPLETED"))
        elif run.status != RUNNING or str(run.lease_id) != lease_id:
            errors.append(None)  # decided below, with the job's last attempt
            stale_runs.append(run)
        elif runner_id and run.runner_id != runner_id:
            errors.append(stale(job_id, f"held by another runner, not {runner_id}"))
        elif now is not None and run.lease_expire_time is not None and run.lease_expire_time < now:
            errors.append(stale(job_id, "expired"))
        else:
            errors.append(None)
        seen.add(job_id)
    if stale_runs:
        last = await runsql.last_attempts(s, [(r.id, r.attempt_count) for r in stale_runs])
        for k, (job_id, lease_id, _) in enumerate(refs):
            run = runs.get(job_id)
            if errors[k] is not None or run is None or (run.status == RUNNING and str(run.lease_id) == lease_id):
                continue
            a = last.get((run.id, run.attempt_count))  # a repeat of the result that finished the job
            if a is not None and str(a.lease_id) == lease_id and a.outcome in ENDED and run.status in FINAL:
                errors[k] = FailedPrecondition(f"job {job_id} already completed this attempt",
                                               reason="ALREADY_COMPLETED")
            else:
                errors[k] = stale(job_id, "expired, released, or the job was leased again")
    return errors


def _count_ends(ends: Sequence[outcomes.End], now: datetime) -> None:
    """Metrics of a batch of endings: one counter add per (type, priority, outcome), a duration per
    attempt (the labels made once per group)."""
    groups: dict[tuple[str, int, int], list[outcomes.End]] = {}
    for e in ends:
        groups.setdefault((e.run.job_type_name, e.run.priority, e.outcome), []).append(e)
    for (name, priority, outcome), mine in groups.items():
        labels = {"job_type": name, "priority": priority_name(priority)}
        if n := sum(1 for e in mine if e.status == SUCCEEDED):
            metrics.succeeded.add(n, labels)
        if n := sum(1 for e in mine if e.status == FAILED):
            metrics.failed.add(n, labels)
        timed = {**labels, "outcome": pb.AttemptOutcome.Name(outcome)}  # type: ignore[arg-type]
        for e in mine:
            if e.run.lease_start_time is not None:
                metrics.attempt_duration.record(max(0.0, (now - e.run.lease_start_time).total_seconds()), timed)
