"""How an attempt ends (result, lost runner, expired lease, cancel) — shared by CompleteJobs,
ReleaseLeases and the lease reaper.

Each rule reads the job (a plain row of `RUN_COLUMNS`, no ORM object) and returns an `End`:
the values its job row, its attempt and its status history take. `runsql.end_attempts` writes a
whole batch of ends in one statement, together with the batch's billing outbox. The billing work
(capture or release of the hold) is recorded in that outbox in the same transaction and done after
the commit (`settle_billing`), so a hold is settled only for an ending that committed; what a crash
or a billing outage leaves in the outbox is settled by `settle_outbox_once` later. Where billing
shares the process and the database, one customer's captures are instead written by the ending's
own transaction (`Leases._end_joined`, services/billing/joined.py): no outbox row for them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import NoScriptError
from sqlalchemy import Row

from innosystem.billing.v1 import billing_pb2 as bpb
from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs import pricing, retry
from services.jobs.billing import CaptureRequest
from services.jobs.queue import ScheduledItem
from services.jobs.runsql import Outboxed
from services.jobs.runtime import CANCELLED, FAILED, SCHEDULED, SUCCEEDED, Deps, policy_of

log = logging.getLogger(__name__)

OVER_CAPTURE_CAP_AT_HOLD = bpb.OVER_CAPTURE_POLICY_CAP_AT_HOLD

KEEPS_DETAILS = frozenset({enums.PERSISTENCE_POLICY_FULL, enums.PERSISTENCE_POLICY_ARCHIVE})

Run = Row[Any]  # a job's run columns (leasecopy.RUN_COLUMNS): read under lock, or the lease's copy


@dataclass(slots=True)
class End:
    """What one attempt's end writes: the job row, its attempt, its status change."""

    run: Run
    status: int
    reason: str
    outcome: int  # the attempt's
    attempt_error: dict[str, Any] | None = None
    attempt_cost: int | None = None
    details: dict[str, Any] | None = None
    error: str | None = None  # None: unchanged
    error_type: str | None = None
    result: dict[str, Any] | None = None
    result_text: str | None = None  # `result` as JSON when the caller has it already
    set_result: bool = False
    cost_cents: int | None = None  # None: unchanged
    next_attempt_time: datetime | None = None
    final: bool = False
    dead_lettered: bool = False
    encryption: dict[str, Any] | None = None  # None: unchanged


@dataclass
class Settlement:
    """Billing and queue work of one transaction: billing in the outbox (written with the ends),
    queue work after the commit."""

    captures: list[CaptureRequest] = field(default_factory=list)
    charged: dict[str, uuid.UUID] = field(default_factory=dict)  # hold id → its job (cost follows billing)
    held: dict[str, int] = field(default_factory=dict)  # hold id → the amount it holds
    customers: set[uuid.UUID] = field(default_factory=set)  # whose holds the captures are
    # Captures stored with the ends themselves (`Leases._end_joined`), for billing's follow-up.
    joined: list[Any] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    released: dict[str, uuid.UUID] = field(default_factory=dict)  # hold id → its job
    finished: dict[str, list[str]] = field(default_factory=dict)  # queue → leased job ids to forget
    retries: list[ScheduledItem] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Sequence[Outboxed]) -> Settlement:
        """The billing work of outbox rows."""
        st = cls()
        for r in rows:
            if r.amount_cents is None:
                st.releases.append(r.hold_id)
            else:
                st.captures.append(CaptureRequest(r.hold_id, r.amount_cents, r.over_capture_policy, r.description))
                st.charged[r.hold_id], st.held[r.hold_id] = r.job_id, r.held_cents
        return st

    @classmethod
    def merged(cls, settlements: Sequence[Settlement]) -> Settlement:
        """The billing work of several settlements as one (their queue work is done already)."""
        if len(settlements) == 1:
            return settlements[0]
        out = cls()
        for st in settlements:
            out.captures += st.captures
            out.charged.update(st.charged)
            out.held.update(st.held)
            out.customers |= st.customers
            out.joined += st.joined
            out.releases += st.releases
            out.released.update(st.released)
        return out

    def outbox(self, captures: bool = True) -> list[Outboxed]:
        """This settlement's billing work as outbox rows (written with the endings); without its
        captures where the endings' transaction stores those itself (`Leases._end_joined`)."""
        out = [Outboxed(c.hold_id, self.charged[c.hold_id], c.amount_cents, self.held[c.hold_id],
                        c.over_capture_policy, c.description) for c in self.captures] if captures else []
        out += [Outboxed(h, self.released.get(h, uuid.UUID(int=0)), None, 0, 0, "job not charged")
                for h in self.releases]
        return out

    def release(self, run: Run) -> None:
        self.releases.append(run.hold_id)
        self.released[run.hold_id] = run.id

    def forget(self, run: Run) -> None:
        self.finished.setdefault(run.queue_name, []).append(str(run.id))

    def capture(self, run: Run, amount: int, policy: int, description: str) -> None:
        self.captures.append(CaptureRequest(run.hold_id, amount, policy, description))
        self.charged[run.hold_id] = run.id
        self.held[run.hold_id] = run.estimated_cost_cents
        self.customers.add(run.customer_id)


def cost_of(run: Run, reported: int | None, units: int | None = None, now: datetime | None = None) -> int:
    """The actual cost to capture. A job priced at submit (`settings["price"]`, pricing.py): its
    price's charge for the attempt's run time as the platform measured it (lease start to `now`)
    or the units its processor reported, never above the hold. Before prices: the runner's figure
    (else the estimate), capped by the type's maximum, and by the hold itself unless the type's
    over-capture policy lets billing charge more."""
    if (terms := run.settings.get("price")) is not None:
        start = run.lease_start_time
        run_ms = int((now - start).total_seconds() * 1000) if now is not None and start is not None else 0
        return min(pricing.charge(terms, run_ms, units), int(run.estimated_cost_cents))
    cap = run.settings.get("max_cost_cents") or run.estimated_cost_cents
    if run.settings.get("over_capture_policy", 0) != bpb.OVER_CAPTURE_POLICY_CHARGE_AVAILABLE:
        cap = min(cap, run.estimated_cost_cents)
    return int(max(0, min(run.estimated_cost_cents if reported is None else reported, cap)))


def _kept(run: Run, error: dict[str, Any] | None, details: dict[str, Any] | None
          ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What the attempt keeps of its error and details under the job's persistence policy."""
    if run.persistence_policy in KEEPS_DETAILS:
        return error, details
    if error and error.get("details") is not None:
        error = {k: v for k, v in error.items() if k != "details"}
    return error, None


def succeed(run: Run, result: dict[str, Any], reported_cost: int | None, details: dict[str, Any] | None,
            st: Settlement, encryption: dict[str, Any] | None = None, units: int | None = None,
            now: datetime | None = None) -> End:
    cost = cost_of(run, reported_cost, units, now)
    _, kept = _kept(run, None, details)
    if run.hold_id:
        st.capture(run, cost, run.settings.get("over_capture_policy", 0), f"job {run.id} succeeded")
    st.forget(run)
    return End(run, SUCCEEDED, f"succeeded on attempt {run.attempt_count}", pb.ATTEMPT_OUTCOME_SUCCEEDED,
               attempt_cost=reported_cost, details=kept, error="", error_type="",
               result=None if run.persistence_policy == enums.PERSISTENCE_POLICY_MINIMAL else result,
               set_result=True, cost_cents=cost, final=True, encryption=encryption)


def cancel_running(run: Run, st: Settlement, why: str) -> End:
    if run.hold_id:
        st.release(run)
    st.forget(run)
    return End(run, CANCELLED, why, pb.ATTEMPT_OUTCOME_CANCELLED, final=True)


def fail(deps: Deps, run: Run, outcome: int, error: dict[str, Any], details: dict[str, Any] | None, now: datetime,
         st: Settlement) -> End:
    """A failed attempt: retried after its backoff if the policy allows, else Failed and dead-lettered."""
    if run.cancel_requested:
        return cancel_running(run, st, f"cancelled: {run.cancel_reason or 'cancel requested'}")
    kept_error, kept_details = _kept(run, error, details)
    message, kind = error.get("message", ""), error.get("type", "")
    common = {"attempt_error": kept_error, "details": kept_details, "error": message, "error_type": kind}
    policy = policy_of(run)
    final = retry.why_final(policy, run.attempt_count, kind, bool(error.get("non_retryable")))
    if final is None:
        delay = retry.backoff_seconds(policy, run.attempt_count, deps.rng)
        due = now + timedelta(seconds=delay)
        st.retries.append(ScheduledItem(str(run.id), run.queue_name, str(run.customer_id), run.priority,
                                        due.timestamp()))
        return End(run, SCHEDULED, f"{message or 'attempt failed'}; retry in {delay:.1f} s", outcome,
                   next_attempt_time=due, **common)
    cost = None
    if run.hold_id and run.settings.get("charge_on_failure"):
        cost = cost_of(run, None, None, now) if run.settings.get("price") is not None else int(run.estimated_cost_cents)
        st.capture(run, cost, 0, f"job {run.id} failed (charged)")
    elif run.hold_id:
        st.release(run)
    st.forget(run)
    return End(run, FAILED, f"{message or 'attempt failed'}; {final}; dead-lettered", outcome, cost_cents=cost,
               final=True, dead_lettered=True, **common)


def event(end: End, at: str) -> tuple[str, dict[str, Any]]:
    """The job event a watcher sees for this end; `at`: the end's time as ISO text (a batch's one)."""
    return str(end.run.id), {"status": end.status, "reason": end.reason, "attempt": end.run.attempt_count,
                             "time": at}


@dataclass
class Settled:
    """What billing answered for a settlement: costs it capped, and holds it refused (kept in the
    outbox and tried again later, backing off)."""

    lowered: list[tuple[uuid.UUID, int]] = field(default_factory=list)  # (job, the cost billing captured)
    refused: dict[str, str] = field(default_factory=dict)  # hold id → billing's reason


async def settle_billing(deps: Deps, st: Settlement) -> Settled:
    """Capture and release (idempotent per hold). A capture refused beyond its hold is retried
    capped at the hold; a refusal that remains is reported in `refused`, never dropped. Raises if
    billing cannot be reached: the outbox keeps the work for `settle_outbox_once`."""
    out = Settled()
    if st.captures:
        fallback = []
        for item, err in zip(st.captures, await deps.billing.capture(st.captures), strict=True):
            if err is not None and err.reason != "HOLD_NOT_FOUND":
                log.warning("capture of hold %s failed (%s); capturing at most the hold", item.hold_id, err.reason)
                held = st.held.get(item.hold_id, 0)
                fallback.append(CaptureRequest(item.hold_id, min(item.amount_cents, held), OVER_CAPTURE_CAP_AT_HOLD,
                                               item.description))
        if fallback:
            for item, err in zip(fallback, await deps.billing.capture(fallback), strict=True):
                if err is not None and err.reason != "HOLD_NOT_FOUND":
                    log.error("capture of hold %s refused (%s); kept in the billing outbox", item.hold_id, err.reason)
                    out.refused[item.hold_id] = err.reason
                elif item.hold_id in st.charged:
                    out.lowered.append((st.charged[item.hold_id], item.amount_cents))
    if st.releases:
        for hold, err in zip(st.releases, await deps.billing.release(st.releases, "job not charged"), strict=True):
            if err is not None and err.reason != "HOLD_NOT_FOUND":
                log.warning("release of hold %s refused (%s); kept in the billing outbox", hold, err.reason)
                out.refused[hold] = err.reason
    return out


async def settle_queue(deps: Deps, st: Settlement, events: list[tuple[str, dict[str, Any]]]) -> None:
    """After the commit: forget finished leases, schedule retries and publish the watched jobs'
    events (a crash here is repaired by recovery). The leases' scripts and the question which jobs
    are watched go in one round trip."""
    finishing = [(queue, ids) for queue, ids in st.finished.items() if ids]
    if finishing and events:
        async with deps.queue.client.pipeline(transaction=False) as pipe:
            for queue, ids in finishing:
                deps.queue.finish_in(pipe, queue, ids)
            deps.signals.ask_watched(pipe, events)
            *finished, watched = await pipe.execute(raise_on_error=False)
        for (queue, ids), reply in zip(finishing, finished, strict=True):
            if isinstance(reply, NoScriptError):  # Redis lost the script: this call loads it again
                await deps.queue.finish(queue, ids)
            elif isinstance(reply, Exception):
                raise reply
    else:
        for queue, ids in finishing:
            await deps.queue.finish(queue, ids)
        watched = None
    if st.retries:
        await deps.queue.schedule(st.retries)
    if watched is not None:
        await deps.signals.publish_watched(events, watched)
    else:
        await deps.signals.jobs_changed(events)
