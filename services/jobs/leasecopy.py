"""The lease's copy of each job it started, kept for the attempt's end.

An attempt's end is decided from its job's row (its settings, hold, retry policy, cancel request)
and written under a fence (the lease). Read under lock, that row costs the ending a round trip of
its own and PostgreSQL a locked read per job. The lease's own statement returns the same columns
(`runsql.LEASED_COLUMNS`), with the row version it wrote (`xmin`); kept here, they decide the end,
and the ending's one statement writes its jobs only if each is still that row version
(`runsql.end_attempts(unchanged=True)`). Anything that wrote a job meanwhile (a cancel request,
a lease extension, the reaper, another replica) gave it a new version: the statement then writes
nothing and the ending reads its jobs under lock, as without a copy.

A copy is used once and dropped; copies of leases that never end here (their runner lost, the
job ended elsewhere) leave after their lease's expiry or when `MAX_COPIES` newer ones came.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

# What the end of an attempt reads of its job (outcomes.Run): a row locked by `runsql.lock_runs`,
# or a copy kept here.
RUN_COLUMNS = ("id, status, lease_id, runner_id, lease_start_time, lease_expire_time, attempt_count, settings, "
               "estimated_cost_cents, hold_id, persistence_policy, cancel_requested, cancel_reason, queue_name, "
               "customer_id, project_id, priority, job_type_name, encryption, retry_max_attempts, "
               "retry_initial_interval_seconds, retry_backoff_multiplier, retry_max_interval_seconds, "
               "non_retryable_error_types, trace_context, queue_time, create_time")
_WIDTH = RUN_COLUMNS.count(",") + 1
MAX_COPIES = 20_000  # running jobs per replica beyond which the oldest copies go (their ends read under lock)

Copy: Any = namedtuple("Copy", [*RUN_COLUMNS.split(", "), "xmin"])  # type: ignore[misc]
_FIELDS: tuple[str, ...] = Copy._fields[:-1]


class LeaseCopies:
    def __init__(self, limit: int = MAX_COPIES) -> None:
        self._limit = limit
        self._copies: dict[str, Any] = {}  # job id → its Copy, in lease order

    def keep(self, rows: Iterable[Any], now: datetime) -> None:
        """Rows a lease returned (`runsql.LEASED_COLUMNS`)."""
        for row in rows:
            self._copies[str(row.id)] = Copy._make(row[:_WIDTH + 1])
        self._trim(now)

    def keep_handed(self, jobs: Iterable[Any], xid: int, now: datetime) -> None:
        """Jobs a submit stored leased to a long poll (`handoff`), as it stored them (attributes
        named after the columns), and the transaction that wrote them (`pg_current_xact_id()`)."""
        xmin = str(xid & 0xFFFF_FFFF)  # a row's xmin is the 32-bit transaction id
        for job in jobs:
            self._copies[str(job.id)] = Copy._make([*(getattr(job, name) for name in _FIELDS), xmin])
        self._trim(now)

    def _trim(self, now: datetime) -> None:
        copies = self._copies
        while copies:  # the oldest first: their leases expire first
            first = next(iter(copies))
            if len(copies) <= self._limit and copies[first].lease_expire_time >= now:
                break
            del copies[first]

    def take(self, refs: Sequence[tuple[str, str, str]], now: datetime) -> dict[str, Any] | None:
        """The copies of these (job id, lease id, runner id), every one current (its lease, its
        runner, not expired) and no job twice; else None, to read the jobs under lock. Either
        way the copies are used up."""
        copies = self._copies
        out: dict[str, Any] = {}
        for job_id, lease_id, runner_id in refs:
            copy = copies.pop(job_id, None)
            if copy is None or str(copy.lease_id) != lease_id or \
                    (runner_id and copy.runner_id != runner_id) or copy.lease_expire_time < now:
                for other, _, _ in refs:
                    copies.pop(other, None)
                return None
            out[job_id] = copy
        return out

    def drop(self, job_ids: Iterable[str]) -> None:
        """Jobs changed here by another path (an extension, a release, the reaper)."""
        for job_id in job_ids:
            self._copies.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._copies)
