"""The run path's statements: a whole batch of leases or attempt endings in one statement each.

The lease and completion paths handle hundreds of jobs per call under load. Each batch is one
round trip (`UPDATE … FROM unnest(…)` with its attempt rows and status history written by
data-modifying CTEs in the same statement), and rows come back as plain tuples: no ORM object,
no unit of work per job. Values travel as parallel arrays; JSON values as text, cast in SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.db import Conn, Writes, pipelined
from innosystem.kit.protos import json_dumps
from services.jobs.leasecopy import RUN_COLUMNS
from services.jobs.runtime import PENDING, RUNNING, SCHEDULED

# What a lease returns: the run first, with its row version (`xmin`, the lease's transaction), which
# the lease keeps for the attempt's end (`LeaseCopies`), then what it hands to its runner besides.
LEASED_COLUMNS = f"{RUN_COLUMNS}, xmin, job_type_id, payload"


_START = text(f"""
WITH input AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:runner_ids AS text[]), CAST(:session_ids AS text[]))
        AS t(id, runner_id, session_id)
    ORDER BY id
), started AS (
    UPDATE jobs.jobs AS j SET
        attempt_count = j.attempt_count + 1, lease_id = gen_random_uuid(), runner_id = i.runner_id,
        lease_session_id = i.session_id, lease_start_time = :now,
        lease_expire_time = :now + make_interval(secs => LEAST(
            :ttl, COALESCE((j.settings->>'timeout_seconds')::float8, 300))),
        start_time = COALESCE(j.start_time, :now), next_attempt_time = NULL, progress = NULL,
        status = {RUNNING}, update_time = :now
    FROM input AS i
    WHERE j.id = i.id AND (j.status = {PENDING} OR (j.status = {SCHEDULED} AND j.next_attempt_time <= :now))
    RETURNING j.{LEASED_COLUMNS.replace(", ", ", j.")}
), attempts AS (
    INSERT INTO jobs.job_attempts (job_id, attempt, lease_id, runner_id, outcome, start_time)
    SELECT id, attempt_count, lease_id, runner_id, {pb.ATTEMPT_OUTCOME_RUNNING}, :now FROM started
), history AS (
    INSERT INTO jobs.job_status_changes (job_id, status, time, reason, attempt)
    SELECT id, {RUNNING}, :now, 'leased by runner ' || runner_id, attempt_count FROM started
)
SELECT * FROM started
""")


@dataclass(frozen=True)
class Start:
    """One popped job to start under a new lease for a runner's session."""

    job_id: str
    runner_id: str
    session_id: str


async def start_attempts(s: Conn, starts: Sequence[Start], now: datetime, ttl_seconds: float
                         ) -> dict[str, Any]:
    """The popped jobs still leasable (Pending, or Scheduled and due: another replica's promoter may
    have moved one in Redis a moment before PostgreSQL) become Running under a new lease each, with
    their attempt and status change, committed with the statement in one round trip. Returns the
    started rows by job id; the others are ghosts."""
    if not starts:
        return {}
    rows = await pipelined(s, (_START, {  # each lease's id is PostgreSQL's gen_random_uuid()
        "ids": [uuid.UUID(x.job_id) for x in starts],
        "runner_ids": [x.runner_id for x in starts], "session_ids": [x.session_id for x in starts],
        "now": now, "ttl": float(ttl_seconds)}), commit=True)
    return {str(r.id): r for r in rows}


def dumps(value: Any) -> str | None:
    """A JSON value as the text its jsonb parameter takes (`kit.protos.json_dumps`: finite numbers only,
    as protobuf's Struct conversion leaves them)."""
    return None if value is None else json_dumps(value).decode()


_QUEUES = text("SELECT id, queue_name FROM jobs.jobs WHERE id = ANY(CAST(:ids AS uuid[]))")


async def queues_of(s: Conn, job_ids: Sequence[str]) -> dict[str, str]:
    """The queue of each job (ids of jobs that no longer exist are left out)."""
    rows = await pipelined(s, (_QUEUES, {"ids": [uuid.UUID(i) for i in job_ids]}))
    return {str(r.id): r.queue_name for r in rows}


_LOCK_RUNS = text(f"SELECT {RUN_COLUMNS} FROM jobs.jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE")
_UNOUTBOX = text("DELETE FROM jobs.billing_outbox WHERE hold_id = ANY(CAST(:holds AS text[]))")


async def lock_runs(s: Conn, job_ids: Sequence[str], settled_holds: Sequence[str] = ()) -> dict[str, Any]:
    """The jobs, locked in id order (concurrent batches do not deadlock); malformed ids are absent.
    The holds billing settled since (`settled_holds`) leave the outbox in the same round trip."""
    ids = sorted({u for u in (as_uuid(j) for j in job_ids) if u is not None})
    steps = [(_UNOUTBOX, {"holds": list(settled_holds)})] if settled_holds else []
    if not ids:
        await settled(s, settled_holds, [])
        return {}
    rows = await pipelined(s, *steps, (_LOCK_RUNS, {"ids": ids}))
    return {str(r.id): r for r in rows}


async def running_in(s: AsyncSession, runner_id: str) -> list[tuple[str, str]]:
    """(job id, lease id) of every job a runner holds."""
    rows = (await s.execute(text(f"SELECT id, lease_id FROM jobs.jobs WHERE status = {RUNNING} AND runner_id = :r"),
                            {"r": runner_id})).all()
    return [(str(i), str(lid)) for i, lid in rows]


async def expired_runs(s: AsyncSession, now: datetime, limit: int) -> list[Row[Any]]:
    """Running jobs whose lease expired, locked (SKIP LOCKED: a completion holding one wins)."""
    return list((await s.execute(text(
        f"SELECT {RUN_COLUMNS} FROM jobs.jobs WHERE status = {RUNNING} AND lease_expire_time < :now "
        "ORDER BY lease_expire_time LIMIT :limit FOR UPDATE SKIP LOCKED"), {"now": now, "limit": limit})).all())


_LAST_ATTEMPTS = text(
    "SELECT a.job_id, a.attempt, a.lease_id, a.outcome FROM jobs.job_attempts a "
    "JOIN unnest(CAST(:ids AS uuid[]), CAST(:ns AS int[])) AS k(job_id, attempt) "
    "ON a.job_id = k.job_id AND a.attempt = k.attempt")


async def last_attempts(s: Conn, keys: Sequence[tuple[uuid.UUID, int]]) -> dict[tuple[uuid.UUID, int], Any]:
    """(job, attempt) → its lease id and outcome: a stale result may repeat one that finished its job."""
    if not keys:
        return {}
    rows = await pipelined(s, (_LAST_ATTEMPTS, {"ids": [k[0] for k in keys], "ns": [k[1] for k in keys]}))
    return {(r.job_id, r.attempt): r for r in rows}


_END = """
WITH input AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:statuses AS smallint[]),
                         CAST(:reasons AS text[]), CAST(:outcomes AS smallint[]), CAST(:attempt_errors AS text[]),
                         CAST(:attempt_costs AS bigint[]), CAST(:details AS text[]), CAST(:errors AS text[]),
                         CAST(:error_types AS text[]), CAST(:set_results AS bool[]), CAST(:results AS text[]),
                         CAST(:costs AS bigint[]), CAST(:next_times AS timestamptz[]), CAST(:finals AS bool[]),
                         CAST(:deads AS bool[]), CAST(:encryptions AS text[]){xmins})
        AS t(id, attempt, status, reason, outcome, attempt_error, attempt_cost, details, error, error_type,
             set_result, result, cost, next_time, final, dead, encryption{xmin})
), ended AS (
    UPDATE jobs.jobs AS j SET
        status = i.status, update_time = :now, lease_id = NULL, lease_expire_time = NULL, progress = NULL,
        error = COALESCE(i.error, j.error), error_type = COALESCE(i.error_type, j.error_type),
        result = CASE WHEN i.set_result THEN CAST(i.result AS jsonb) ELSE j.result END,
        cost_cents = COALESCE(i.cost, j.cost_cents), next_attempt_time = i.next_time,
        complete_time = CASE WHEN i.final THEN :now ELSE j.complete_time END,
        dead_lettered = j.dead_lettered OR i.dead,
        dead_letter_time = CASE WHEN i.dead THEN :now ELSE j.dead_letter_time END,
        encryption = COALESCE(CAST(i.encryption AS jsonb), j.encryption)
    FROM input AS i WHERE j.id = i.id{unchanged}
    RETURNING j.id
), attempts AS (
    UPDATE jobs.job_attempts AS a SET
        outcome = i.outcome, end_time = :now, error = CAST(i.attempt_error AS jsonb),
        actual_cost_cents = i.attempt_cost, details = CAST(i.details AS jsonb)
    FROM input AS i WHERE a.job_id = i.id AND a.attempt = i.attempt
), history AS (
    INSERT INTO jobs.job_status_changes (job_id, status, time, reason, attempt)
    SELECT id, status, :now, reason, attempt FROM input
), outbox AS (
    INSERT INTO jobs.billing_outbox (hold_id, job_id, amount_cents, held_cents, over_capture_policy, description,
                                     create_time)
    SELECT hold_id, job_id, amount, held, policy, description, :now
    FROM unnest(CAST(:o_holds AS text[]), CAST(:o_jobs AS uuid[]), CAST(:o_amounts AS bigint[]),
                CAST(:o_held AS bigint[]), CAST(:o_policies AS smallint[]), CAST(:o_descriptions AS text[]))
        AS o(hold_id, job_id, amount, held, policy, description)
    ON CONFLICT (hold_id) DO NOTHING
)
SELECT {count} FROM ended
"""
_END_LOCKED = text(_END.format(xmins="", xmin="", unchanged="", count="count(*)"))
# Ends decided from the lease's copy of their jobs (`LeaseCopies`), not from rows read under lock:
# written only if every job is still the row version the lease wrote, else none is (the function
# raises CHANGED_SINCE_LEASE; migration 0009) and the caller reads them under lock.
_END_UNCHANGED = text(_END.format(xmins=", CAST(:xmins AS xid[])", xmin=", xmin", unchanged=" AND j.xmin = i.xmin",
                                  count="jobs.unchanged_since_lease(CAST(:n AS bigint), count(*))"))
CHANGED_SINCE_LEASE = "IJ001"


async def end_attempts(s: Conn, ends: Sequence[Any], outbox: Sequence[Outboxed], now: datetime, *,
                       unchanged: bool = False, settled_holds: Sequence[str] = (), before: Writes | None = None
                       ) -> int:
    """Write a batch of `outcomes.End`s and their billing outbox in one statement, committed with
    it in one round trip (the batch's last step). `unchanged`: the ends were decided from the
    lease's copy of their jobs (`LeaseCopies`), written only if no job changed since (else nothing
    is, and the error's SQLSTATE is CHANGED_SINCE_LEASE). `settled_holds` leave the outbox with them;
    `before`: billing's writes for the same commit (its captures), sent first in that round trip."""
    if not ends and not outbox:
        assert before is None, "billing's writes go with ends"
        await settled(s, settled_holds, [])
        return 0
    extra: dict[str, Any] = {"xmins": [e.run.xmin for e in ends], "n": len(ends)} if unchanged else {}
    steps = [(_UNOUTBOX, {"holds": list(settled_holds)})] if settled_holds else []
    rows = await pipelined(s, *steps, (_END_UNCHANGED if unchanged else _END_LOCKED, {**extra,
        "ids": [e.run.id for e in ends], "attempts": [e.run.attempt_count for e in ends],
        "statuses": [e.status for e in ends], "reasons": [e.reason for e in ends],
        "outcomes": [e.outcome for e in ends], "attempt_errors": [dumps(e.attempt_error) for e in ends],
        "attempt_costs": [e.attempt_cost for e in ends], "details": [dumps(e.details) for e in ends],
        "errors": [e.error for e in ends], "error_types": [e.error_type for e in ends],
        "set_results": [e.set_result for e in ends],
        "results": [e.result_text if e.result_text is not None else dumps(e.result) for e in ends],
        "costs": [e.cost_cents for e in ends], "next_times": [e.next_attempt_time for e in ends],
        "finals": [e.final for e in ends], "deads": [e.dead_lettered for e in ends],
        "encryptions": [dumps(e.encryption) for e in ends],
        "o_holds": [o.hold_id for o in outbox], "o_jobs": [o.job_id for o in outbox],
        "o_amounts": [o.amount_cents for o in outbox], "o_held": [o.held_cents for o in outbox],
        "o_policies": [o.over_capture_policy for o in outbox], "o_descriptions": [o.description for o in outbox],
        "now": now}), commit=True, before=before)
    return int(rows[0][0])


_UNSTART = text(f"""
WITH input AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:reasons AS text[]))
        AS t(id, attempt, reason)
), back AS (
    UPDATE jobs.jobs AS j SET status = {PENDING}, attempt_count = j.attempt_count - 1, lease_id = NULL,
        lease_expire_time = NULL, progress = NULL, update_time = :now
    FROM input AS i WHERE j.id = i.id
    RETURNING j.id
), attempts AS (
    DELETE FROM jobs.job_attempts AS a USING input AS i WHERE a.job_id = i.id AND a.attempt = i.attempt
), history AS (
    INSERT INTO jobs.job_status_changes (job_id, status, time, reason, attempt)
    SELECT id, {PENDING}, :now, reason, attempt - 1 FROM input
)
SELECT count(*) FROM back
""")


async def unstart(s: AsyncSession, runs: Sequence[Row[Any]], reasons: Sequence[str], now: datetime) -> None:
    """Jobs a runner never started go back to Pending as if never leased (the attempt is forgotten)."""
    if runs:
        await s.execute(_UNSTART, {"ids": [r.id for r in runs], "attempts": [r.attempt_count for r in runs],
                                   "reasons": list(reasons), "now": now})


@dataclass(frozen=True)
class Outboxed:
    """One row of the billing outbox: capture `amount_cents` (None: release) of a hold."""

    hold_id: str
    job_id: uuid.UUID
    amount_cents: int | None
    held_cents: int
    over_capture_policy: int
    description: str


_LOWERED = text("UPDATE jobs.jobs AS j SET cost_cents = v.cost FROM unnest(CAST(:ids AS uuid[]), "
                "CAST(:costs AS bigint[])) AS v(id, cost) WHERE j.id = v.id")


async def settled(s: Conn, hold_ids: Sequence[str], lowered: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Billing answered for these holds: out of the outbox; jobs whose capture billing capped get that cost."""
    steps: list[tuple[TextClause, dict[str, Any]]] = [(_UNOUTBOX, {"holds": list(hold_ids)})] if hold_ids else []
    if lowered:
        steps.append((_LOWERED, {"ids": [i for i, _ in lowered], "costs": [c for _, c in lowered]}))
    if steps:
        await pipelined(s, *steps, rows=False)


async def outbox_due(s: AsyncSession, before: datetime, now: datetime, limit: int) -> list[Outboxed]:
    """Outbox rows older than `before` (a live ending settles its own first) and due for a try,
    locked for one sweeper."""
    rows = (await s.execute(text(
        "SELECT hold_id, job_id, amount_cents, held_cents, over_capture_policy, description FROM jobs.billing_outbox "
        "WHERE create_time <= :before AND (next_try_time IS NULL OR next_try_time <= :now) "
        "ORDER BY create_time LIMIT :limit FOR UPDATE SKIP LOCKED"),
        {"before": before, "now": now, "limit": limit})).all()
    return [Outboxed(*r) for r in rows]


async def outbox_refused(s: AsyncSession, refused: dict[str, str], now: datetime) -> None:
    """Holds billing refused: kept, with the reason, tried again after 1, 2, 4 … minutes (at most an hour)."""
    if not refused:
        return
    holds = sorted(refused)
    await s.execute(text(
        "UPDATE jobs.billing_outbox AS o SET attempts = o.attempts + 1, last_error = v.reason, "
        "next_try_time = CAST(:now AS timestamptz) + LEAST(interval '1 minute' * power(2, o.attempts), "
        "interval '1 hour') FROM unnest(CAST(:holds AS text[]), CAST(:reasons AS text[])) AS v(hold_id, reason) "
        "WHERE o.hold_id = v.hold_id"), {"holds": holds, "reasons": [refused[h] for h in holds], "now": now})


async def outbox_pending(s: AsyncSession, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Of these jobs, those whose billing still waits in the outbox."""
    if not job_ids:
        return set()
    rows = (await s.execute(text("SELECT DISTINCT job_id FROM jobs.billing_outbox "
                                 "WHERE job_id = ANY(CAST(:ids AS uuid[]))"), {"ids": list(job_ids)})).scalars().all()
    return set(rows)


def as_uuid(value: str) -> uuid.UUID | None:
    """An id from a request, or None when it is not one (such a job simply does not exist)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


_EXTEND = text(f"""
UPDATE jobs.jobs AS j SET
    lease_expire_time = GREATEST(COALESCE(j.lease_expire_time, :now), LEAST(
        :now + make_interval(secs => :span),
        j.lease_start_time + make_interval(secs => COALESCE((j.settings->>'timeout_seconds')::float8, 300)))),
    progress = COALESCE(CAST(i.progress AS jsonb), j.progress)
FROM unnest(CAST(:ids AS uuid[]), CAST(:progress AS text[])) AS i(id, progress)
WHERE j.id = i.id AND j.status = {RUNNING}
RETURNING j.id, j.lease_expire_time, j.cancel_requested
""")


async def extend_leases(s: AsyncSession, job_ids: Sequence[str], progress: dict[str, dict[str, Any]], now: datetime,
                        span_seconds: float) -> dict[str, tuple[datetime, bool]]:
    """Push the leases (already checked as current) up to `span_seconds` ahead, never past the
    attempt's timeout; record progress. Returns each job's expiry and whether a cancel is requested."""
    if not job_ids:
        return {}
    rows = (await s.execute(_EXTEND, {"ids": [uuid.UUID(j) for j in job_ids],
                                      "progress": [dumps(progress.get(j)) for j in job_ids],
                                      "now": now, "span": float(span_seconds)})).all()
    return {str(r.id): (r.lease_expire_time, r.cancel_requested) for r in rows}
