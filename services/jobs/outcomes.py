"""How an attempt ends (result, lost runner, expired lease, cancel) — shared by CompleteJobs,
ReleaseLeases and the lease reaper. Everything here mutates rows inside the caller's transaction
and collects the billing and Redis work that goes with it; the caller does that work around its commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.billing.v1 import billing_pb2 as bpb
from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs import retry
from services.jobs.billing import CaptureRequest
from services.jobs.models import Job, JobAttempt
from services.jobs.queue import ScheduledItem
from services.jobs.runtime import CANCELLED, FAILED, SCHEDULED, SUCCEEDED, Changes, Deps, policy_of

log = logging.getLogger(__name__)

OVER_CAPTURE_CAP_AT_HOLD = bpb.OVER_CAPTURE_POLICY_CAP_AT_HOLD

KEEPS_DETAILS = frozenset({enums.PERSISTENCE_POLICY_FULL, enums.PERSISTENCE_POLICY_ARCHIVE})


@dataclass
class Settlement:
    """Billing and queue work of one transaction."""

    captures: list[CaptureRequest] = field(default_factory=list)
    charged: dict[str, Job] = field(default_factory=dict)  # hold id → its job (cost_cents follows billing)
    releases: list[str] = field(default_factory=list)
    finished: dict[str, list[str]] = field(default_factory=dict)  # queue → leased job ids to forget
    retries: list[ScheduledItem] = field(default_factory=list)

    def forget(self, job: Job) -> None:
        self.finished.setdefault(job.queue_name, []).append(str(job.id))


def cost_of(job: Job, reported: int | None) -> int:
    """The actual cost to capture: the runner's figure (else the estimate), capped by the type's
    maximum, and by the hold itself unless the type's over-capture policy lets billing charge more."""
    cap = job.settings.get("max_cost_cents") or job.estimated_cost_cents
    if job.settings.get("over_capture_policy", 0) != bpb.OVER_CAPTURE_POLICY_CHARGE_AVAILABLE:
        cap = min(cap, job.estimated_cost_cents)
    return max(0, min(job.estimated_cost_cents if reported is None else reported, cap))


def _end_attempt(attempt: JobAttempt | None, outcome: int, now: datetime, error: dict[str, Any] | None,
                 cost: int | None, details: dict[str, Any] | None, job: Job) -> None:
    if attempt is None:
        return
    attempt.outcome, attempt.end_time = outcome, now
    attempt.error, attempt.actual_cost_cents = error, cost
    if job.persistence_policy in KEEPS_DETAILS:
        attempt.details = details
    elif attempt.error and attempt.error.get("details") is not None:
        attempt.error = {k: v for k, v in attempt.error.items() if k != "details"}


def _clear_lease(job: Job) -> None:
    job.lease_id = None
    job.lease_expire_time = None
    job.progress = None


def succeed(s: AsyncSession, deps: Deps, job: Job, attempt: JobAttempt | None, result: dict[str, Any],
            reported_cost: int | None, details: dict[str, Any] | None, now: datetime, ch: Changes,
            st: Settlement) -> None:
    cost = cost_of(job, reported_cost)
    _end_attempt(attempt, pb.ATTEMPT_OUTCOME_SUCCEEDED, now, None, reported_cost, details, job)
    job.result = None if job.persistence_policy == enums.PERSISTENCE_POLICY_MINIMAL else result
    job.error, job.error_type = "", ""
    job.cost_cents = cost
    job.complete_time = now
    _clear_lease(job)
    if job.hold_id:
        st.captures.append(CaptureRequest(job.hold_id, cost, job.settings.get("over_capture_policy", 0),
                                          f"job {job.id} succeeded"))
        st.charged[job.hold_id] = job
    st.forget(job)
    ch.move(s, job, SUCCEEDED, f"succeeded on attempt {job.attempt_count}", now)


def cancel_running(s: AsyncSession, job: Job, attempt: JobAttempt | None, now: datetime, ch: Changes,
                   st: Settlement, why: str) -> None:
    _end_attempt(attempt, pb.ATTEMPT_OUTCOME_CANCELLED, now, None, None, None, job)
    job.complete_time = now
    _clear_lease(job)
    _release(job, st)
    st.forget(job)
    ch.move(s, job, CANCELLED, why, now)


def _release(job: Job, st: Settlement) -> None:
    if job.hold_id:
        st.releases.append(job.hold_id)


def fail(s: AsyncSession, deps: Deps, job: Job, attempt: JobAttempt | None, outcome: int, error: dict[str, Any],
         details: dict[str, Any] | None, now: datetime, ch: Changes, st: Settlement) -> None:
    """A failed attempt: retried after its backoff if the policy allows, else Failed and dead-lettered."""
    if job.cancel_requested:
        cancel_running(s, job, attempt, now, ch, st, f"cancelled: {job.cancel_reason or 'cancel requested'}")
        return
    _end_attempt(attempt, outcome, now, error, None, details, job)
    job.error, job.error_type = error.get("message", ""), error.get("type", "")
    _clear_lease(job)
    policy = policy_of(job)
    final = retry.why_final(policy, job.attempt_count, job.error_type, bool(error.get("non_retryable")))
    if final is None:
        delay = retry.backoff_seconds(policy, job.attempt_count, deps.rng)
        due = now + timedelta(seconds=delay)
        job.next_attempt_time = due
        st.retries.append(ScheduledItem(str(job.id), job.queue_name, str(job.customer_id), job.priority,
                                        due.timestamp()))
        ch.scheduled = True
        ch.move(s, job, SCHEDULED, f"{error.get('message') or 'attempt failed'}; retry in {delay:.1f} s", now)
        return
    job.complete_time = now
    job.dead_lettered, job.dead_letter_time = True, now
    job.next_attempt_time = None
    if job.hold_id and job.settings.get("charge_on_failure"):
        job.cost_cents = job.estimated_cost_cents
        st.captures.append(CaptureRequest(job.hold_id, job.cost_cents, 0, f"job {job.id} failed (charged)"))
    else:
        _release(job, st)
    st.forget(job)
    ch.move(s, job, FAILED, f"{error.get('message') or 'attempt failed'}; {final}; dead-lettered", now)


async def settle_billing(deps: Deps, st: Settlement) -> None:
    """Capture and release (idempotent per hold). Called before the commit: a crash after it leaves
    the job as it was, and repeating the same capture does not charge twice."""
    if st.captures:
        fallback = []
        for item, err in zip(st.captures, await deps.billing.capture(st.captures), strict=True):
            if err is not None and err.reason != "HOLD_NOT_FOUND":
                log.warning("capture of hold %s failed (%s); capturing at most the hold", item.hold_id, err)
                job = st.charged.get(item.hold_id)
                held = job.estimated_cost_cents if job is not None else 0
                fallback.append(CaptureRequest(item.hold_id, min(item.amount_cents, held), OVER_CAPTURE_CAP_AT_HOLD,
                                               item.description))
                if job is not None:
                    job.cost_cents = min(item.amount_cents, held)
        if fallback:
            for item, err in zip(fallback, await deps.billing.capture(fallback), strict=True):
                if err is not None and err.reason != "HOLD_NOT_FOUND":
                    log.error("capture of hold %s failed again: %s", item.hold_id, err)
    if st.releases:
        for hold, err in zip(st.releases, await deps.billing.release(st.releases, "job not charged"), strict=True):
            if err is not None and err.reason != "HOLD_NOT_FOUND":
                log.warning("release of hold %s failed: %s", hold, err)


async def settle_queue(deps: Deps, st: Settlement) -> None:
    """After the commit: forget finished leases, schedule retries (a crash here is repaired by recovery)."""
    for queue, ids in st.finished.items():
        await deps.queue.finish(queue, ids)
    if st.retries:
        await deps.queue.schedule(st.retries)
