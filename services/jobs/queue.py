"""The Redis queue engine: pure queue mechanics over job ids (no payloads, no PostgreSQL).

PostgreSQL is the source of truth; Redis only holds which job ids wait where. Every mutation is
one atomic Lua script in `services/jobs/lua/`, loaded through `innosystem.kit.redis.Scripts`.

Keys, all of one job type under one hash tag `{jt:<type>}` (so one cluster slot per type):

    <prefix>{jt:T}:job            hash   job id -> "Q|prio|customer" queued, "S|prio|customer" scheduled,
                                         "L|prio|customer|leased_at" leased (idempotency and cancel lookup)
    <prefix>{jt:T}:sched          zset   scheduled job id -> due time
    <prefix>{jt:T}:q:<p>:<cust>   zset   one customer's queue in class p: job id -> enqueue time (FIFO)
    <prefix>{jt:T}:all:<p>        zset   every queued job of class p -> enqueue time (depth, oldest, ahead_of)
    <prefix>{jt:T}:rr:<p>         list   customer rotation of class p (round robin: pop head, push tail)
    <prefix>{jt:T}:rrset:<p>      set    the customers in that rotation (each appears in it once)

Why one tag per job type: a job belongs to exactly one type, and a lease, an enqueue, a promotion
and a cancel each touch one type's keys only, so every script stays inside one slot and the types
spread over the cluster. The scripts derive key names from the base `<prefix>{jt:T}` passed in
ARGV; they are all in the declared keys' slot, which Redis Cluster accepts but a strict proxy that
routes by declared keys alone would not see.

Limits of that choice:
- A lease of one job type (the common case) is one script call: it walks the classes in strict
  priority order inside Lua, so it is atomic and an empty queue answers in one round trip.
- A lease across several job types is several scripts (one per run of non-empty classes of one
  type, called from Python in strict class order after one pipelined depth probe), so it is atomic
  per call, not across types: a job arriving between the probe and the pops waits for the next lease.
- Fair share between customers is per (type, class): a customer with jobs in two types a runner
  serves gets a turn in each rotation. Between types of the same class the lease fills from the
  types in the order given (the caller should rotate that order if it matters).
- One very hot type lives on one shard.
- Scheduled jobs are per type: the promoter calls `promote_due` for every type it knows from
  PostgreSQL (Redis keeps no global list of types).

Redis may be flushed at any time: every script treats missing keys as empty, so the engine answers
empty results, and the caller rebuilds from PostgreSQL with `rebuild` (enqueue and schedule are
idempotent per job id). A leased record lost in a flush is the lease path's business: its job is
Running in PostgreSQL and comes back through lease expiry.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from innosystem.kit.errors import InvalidArgument
from innosystem.kit.redis import ScriptErrors, Scripts

LOW, MEDIUM, HIGH, CRITICAL = 1, 2, 3, 4
CLASSES = (CRITICAL, HIGH, MEDIUM, LOW)  # lease order: strict priority, highest first
ALL_CLASSES = "".join(str(p) for p in CLASSES)  # lease.lua's class list for a whole type: "4321"
BATCH = 1000  # jobs per script call: bounds how long one script blocks Redis

ERRORS = ScriptErrors({"INVALID_ARGUMENT": InvalidArgument})


@dataclass(frozen=True)
class QueueItem:
    """A job ready to run; `enqueued_at` (epoch seconds) orders a customer's queue (FIFO)."""

    job_id: str
    job_type: str
    customer_id: str
    priority: int
    enqueued_at: float


@dataclass(frozen=True)
class ScheduledItem:
    """A job to run at `due` (epoch seconds): a future `run_at` or a retry in backoff."""

    job_id: str
    job_type: str
    customer_id: str
    priority: int
    due: float


@dataclass(frozen=True)
class ClassStats:
    job_type: str
    priority: int
    depth: int
    oldest_enqueued_at: float | None


@dataclass(frozen=True)
class TypeStats:
    job_type: str
    classes: tuple[ClassStats, ...]  # CRITICAL first
    scheduled: int
    next_due: float | None


@dataclass(frozen=True)
class Position:
    """Where a queued job waits: `higher_priority` jobs of its type in higher classes (exact), and an
    estimate of the jobs of its own class leased before it (its rank in its customer's queue times
    the customers in the rotation, capped by the class depth)."""

    state: str  # "queued", "scheduled", "leased" or "unknown"
    higher_priority: int
    ahead_in_class: int


def _check_name(kind: str, value: str) -> None:
    if not value or any(ch in value for ch in "{}|:"):
        raise InvalidArgument(f"{kind} must be non-empty without '{{', '}}', '|' or ':': {value!r}",
                              field=kind)


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or not LOW <= priority <= CRITICAL:
        raise InvalidArgument(f"priority must be 1..4, got {priority!r}", field="priority")


def _chunks(items: Sequence[Any], size: int = BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobQueue:
    def __init__(self, client: aioredis.Redis, prefix: str = "jobs:") -> None:
        self.client = client
        self.prefix = prefix
        self.scripts = Scripts(client, Path(__file__).parent / "lua", ERRORS)
        self._landing: set[asyncio.Future[None]] = set()  # enqueues whose submits were answered first

    def landing(self, enqueue: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """An enqueue run after its submit was answered: until it lands, this replica's reads of
        the queues (a lease, a removal, the depths, a position) wait for it, so a job answered is a
        job they find. Another replica may find it a round trip later."""
        task = asyncio.ensure_future(enqueue)
        self._landing.add(task)
        task.add_done_callback(self._landing.discard)
        return task

    async def landed(self) -> None:
        if self._landing:
            await asyncio.wait(set(self._landing))

    # keys ---------------------------------------------------------------------------------------
    def base(self, job_type: str) -> str:
        _check_name("job_type", job_type)
        return f"{self.prefix}{{jt:{job_type}}}"

    def _keys(self, job_type: str) -> list[str]:
        base = self.base(job_type)
        return [f"{base}:job", f"{base}:sched"]

    # writes -------------------------------------------------------------------------------------
    async def enqueue(self, items: Sequence[QueueItem]) -> int:
        """Queue many jobs: one script call per job type (and per BATCH), all concurrently.
        Idempotent per job id. Returns how many were queued now."""
        return await self._per_type(self.scripts.enqueue, [(it, it.enqueued_at) for it in items])

    async def schedule(self, items: Sequence[ScheduledItem]) -> int:
        """Put jobs in their type's scheduled set by due time. An unknown or leased job (retry) is
        scheduled; a queued or already scheduled one is left alone. Returns how many now."""
        return await self._per_type(self.scripts.schedule, [(it, it.due) for it in items])

    async def _per_type(self, script: Any, timed: list[tuple[QueueItem | ScheduledItem, float]]) -> int:
        """Run `script` once per job type and chunk, concurrently, with (id, priority, customer, time) per job."""
        by_type: dict[str, list[tuple[QueueItem | ScheduledItem, float]]] = defaultdict(list)
        for item, at in timed:
            _check_name("customer_id", item.customer_id)
            _check_priority(item.priority)
            by_type[item.job_type].append((item, at))
        calls = []
        for job_type, group in by_type.items():
            for chunk in _chunks(group):
                args: list[Any] = [self.base(job_type)]
                for it, at in chunk:
                    args += [it.job_id, it.priority, it.customer_id, repr(float(at))]
                calls.append(script(keys=self._keys(job_type), args=args))
        return sum(int(n) for n in await asyncio.gather(*calls))

    async def rebuild(self, queued: Sequence[QueueItem], scheduled: Sequence[ScheduledItem] = ()) -> int:
        """Reload from PostgreSQL after Redis lost its data (or to repair drift): idempotent."""
        return await self.enqueue(queued) + await self.schedule(scheduled)

    async def promote_due(self, job_types: Sequence[str], now: float, limit: int = 1000) -> tuple[int, float | None]:
        """Move the due scheduled jobs (at most `limit` per type) into their queues. Returns the count
        promoted and the earliest next due time over these types (None: nothing scheduled), so the
        caller sleeps exactly until then; a next due <= now means the limit was hit: call again."""
        results = await asyncio.gather(*(
            self.scripts.promote(keys=self._keys(jt), args=[self.base(jt), repr(float(now)), int(limit)])
            for jt in job_types
        ))
        promoted, next_due = 0, None
        for count, nxt in results:
            promoted += int(count)
            if nxt is not None:
                due = float(_text(nxt))
                next_due = due if next_due is None else min(next_due, due)
        return promoted, next_due

    async def lease(self, job_types: Sequence[str], max_jobs: int, now: float,
                    customer_id: str | None = None) -> list[str]:
        """Pop up to `max_jobs` job ids: strict priority classes across `job_types`, round robin between
        customers inside a class (per type), FIFO per customer. `customer_id` scopes the lease to that
        customer's jobs (a customer-scoped runner). The jobs are marked leased. One type: one script
        call, atomic. Several types: a depth probe, then one call per run of non-empty classes."""
        if max_jobs <= 0 or not job_types:
            return []
        await self.landed()
        if customer_id is not None:
            _check_name("customer_id", customer_id)
        types = list(dict.fromkeys(job_types))
        if len(types) == 1:  # the common case: every class of the type in one script, no probe
            return await self._pop(types[0], ALL_CLASSES, max_jobs, customer_id, now)
        # Several types live in several slots, so no one script sees them all: probe the depths,
        # then pop in strict class order, one script per run of non-empty classes of one type.
        probe = self.client.pipeline(transaction=False)
        for jt in types:
            base = self.base(jt)
            for p in CLASSES:
                probe.zcard(f"{base}:q:{p}:{customer_id}" if customer_id is not None else f"{base}:all:{p}")
        counts = iter(await probe.execute())
        waiting = {(jt, p): int(next(counts)) for jt in types for p in CLASSES}
        runs: list[tuple[str, str]] = []  # (type, classes highest first)
        for p in CLASSES:
            for jt in types:
                if waiting[(jt, p)] > 0:
                    if runs and runs[-1][0] == jt:
                        runs[-1] = (jt, runs[-1][1] + str(p))
                    else:
                        runs.append((jt, str(p)))
        leased: list[str] = []
        for jt, classes in runs:
            if len(leased) >= max_jobs:
                break
            leased += await self._pop(jt, classes, max_jobs - len(leased), customer_id, now)
        return leased

    async def _pop(self, job_type: str, classes: str, max_jobs: int, customer_id: str | None,
                   now: float) -> list[str]:
        """One lease.lua call: up to `max_jobs` of one type from `classes` ("4321"), in that order."""
        base = self.base(job_type)
        ids = await self.scripts.lease(keys=[f"{base}:job"],
                                       args=[base, classes, max_jobs, customer_id or "", repr(float(now))])
        return [_text(i) for i in ids]

    async def remove(self, job_type: str, job_ids: Sequence[str]) -> list[str]:
        """Cancel queued or scheduled jobs, O(log n) each; leased jobs are left alone. Returns the ids removed."""
        if not job_ids:
            return []
        await self.landed()
        removed = await self.scripts.remove(keys=self._keys(job_type), args=[self.base(job_type), *job_ids])
        return [_text(i) for i in removed]

    async def finish(self, job_type: str, job_ids: Sequence[str]) -> int:
        """Forget leased jobs (finished, or about to be re-enqueued after their lease expired)."""
        if not job_ids:
            return 0
        return int(await self.scripts.finish(keys=self._keys(job_type)[:1], args=list(job_ids)))

    def finish_in(self, pipe: Any, job_type: str, job_ids: Sequence[str]) -> None:
        """`finish`, queued in a pipeline (its reply NoScriptError if Redis lost the script)."""
        self.scripts.finish.queue(pipe, keys=self._keys(job_type)[:1], args=list(job_ids))

    # reads --------------------------------------------------------------------------------------
    async def stats(self, job_types: Sequence[str]) -> list[TypeStats]:
        """Depth per type and class, oldest waiting enqueue time, scheduled count and next due: one pipeline."""
        await self.landed()
        pipe = self.client.pipeline(transaction=False)
        for jt in job_types:
            base = self.base(jt)
            for p in CLASSES:
                pipe.zcard(f"{base}:all:{p}")
                pipe.zrange(f"{base}:all:{p}", 0, 0, withscores=True)
            pipe.zcard(f"{base}:sched")
            pipe.zrange(f"{base}:sched", 0, 0, withscores=True)
        replies = iter(await pipe.execute())
        out = []
        for jt in job_types:
            classes = []
            for p in CLASSES:
                depth, oldest = int(next(replies)), next(replies)
                classes.append(ClassStats(jt, p, depth, float(oldest[0][1]) if oldest else None))
            scheduled, first = int(next(replies)), next(replies)
            out.append(TypeStats(jt, tuple(classes), scheduled, float(first[0][1]) if first else None))
        return out

    async def depth(self, job_type: str) -> dict[int, int]:
        """Queued jobs of one type per priority class."""
        (stats,) = await self.stats([job_type])
        return {c.priority: c.depth for c in stats.classes}

    async def ahead_of(self, job_type: str, job_id: str) -> Position:
        """Why a job waits: its state, the jobs of higher classes ahead of it, an estimate in its class."""
        base = self.base(job_type)
        await self.landed()
        record = await self.client.hget(f"{base}:job", job_id)
        if record is None:
            return Position("unknown", 0, 0)
        state, prio, customer = _text(record).split("|")[:3]
        if state != "Q":
            return Position("scheduled" if state == "S" else "leased", 0, 0)
        p = int(prio)
        pipe = self.client.pipeline(transaction=False)
        for higher in range(p + 1, CRITICAL + 1):
            pipe.zcard(f"{base}:all:{higher}")
        pipe.zrank(f"{base}:q:{p}:{customer}", job_id)
        pipe.llen(f"{base}:rr:{p}")
        pipe.zcard(f"{base}:all:{p}")
        *higher_counts, rank, customers, class_depth = await pipe.execute()
        if rank is None:  # leased or removed in between
            return Position("unknown", 0, 0)
        ahead = min(int(rank) * max(int(customers), 1), max(int(class_depth) - 1, 0))
        return Position("queued", sum(int(c) for c in higher_counts), ahead)
