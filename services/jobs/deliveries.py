"""Webhook deliveries: from jobs' final status changes to signed POSTs, at least once.

Nothing on the run path knows about webhooks. Two background loops read what it already writes:

- **fan-out** reads the append-only `job_status_changes` past a durable cursor (one row,
  `webhook_cursor`, locked SKIP LOCKED so one replica scans at a time), keeps the final ones of
  projects that have webhooks (an indexed range scan and two joins per pass) and writes one
  `webhook_deliveries` row per (endpoint, change, event type) in one multi-row INSERT … ON
  CONFLICT DO NOTHING. Change ids come from a sequence, so a transaction that commits late can
  land below ids already read: the cursor only passes changes older than `settle` seconds, and
  the newer ones are read again next pass (the unique index makes that a no-op). A change still
  uncommitted `settle` seconds after its time would be missed; the run path's transactions last
  milliseconds.
- **wallet fan-out** does the same for `wallet.low_balance` over billing's stored wallet events
  (ListWalletEventsAfter, in billing's seq order) with its own cursor row (`wallet`): one
  delivery per (endpoint of the event's customer that subscribed, event). Billing's Redis
  publish is best effort, so the stored events are the source; the same settle rule covers a
  billing transaction that commits late. While no endpoint subscribes, billing is not asked. The
  cursor row stays locked across billing's answers (bounded by the call's timeout), so one
  replica reads at a time, as for job changes.
- **sender** claims due deliveries, at most `per_endpoint` per endpoint and `concurrency` in all
  (a conditional UPDATE pushes `next_attempt_time` past the call's time limit: that is the claim,
  and a replica that dies mid-call leaves the delivery due again), POSTs each through the egress
  guard under its time limit, and records the outcome if the claim is still its own. A slow or
  failing endpoint holds only its own slots; other endpoints' deliveries are claimed as slots
  free up. Failures back off as Standard Webhooks suggests (5 s, 5 min, 30 min, 2 h, 5 h,
  10 h, 10 h …) until 24 h after the event; then the delivery is FAILED until redelivered.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert

from innosystem.billing.v1 import billing_pb2 as bpb
from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.kit import egress
from innosystem.kit.db import Database, new_id, utcnow
from innosystem.kit.sealing import Sealer
from innosystem.webhooks import headers as signed_headers
from services.jobs.billing import Billing
from services.jobs.config import JobsConfig
from services.jobs.models import WebhookDelivery

log = logging.getLogger(__name__)

CURSOR, WALLET_CURSOR = "deliveries", "wallet"
LOW_BALANCE = "wallet.low_balance"
PENDING, SUCCEEDED, FAILED = 1, 2, 3
RETRY_DELAYS = (5, 300, 1800, 7200, 18000, 36000)  # seconds after attempt 1, 2, …; the last repeats
# An endpoint's answer is read for its status only; a bigger one is not waited for.
ANSWER_BYTES = 64 * 1024
CLAIM_MARGIN_SECONDS = 30
SCAN_LIMIT = 1000
WALLET_PAGES = 10  # per pass: a first subscriber's catch-up over billing's history goes 10k events a tick
FINAL = (enums.JOB_STATUS_SUCCEEDED, enums.JOB_STATUS_FAILED, enums.JOB_STATUS_CANCELLED)
EVENT_OF = {enums.JOB_STATUS_SUCCEEDED: "job.succeeded", enums.JOB_STATUS_FAILED: "job.failed",
            enums.JOB_STATUS_CANCELLED: "job.cancelled"}

_SCAN = text("""
    SELECT id, time FROM jobs.job_status_changes
    WHERE id > :cursor AND status = ANY(:final) ORDER BY id LIMIT :limit
""")
_EVENTS = text("""
    SELECT c.id AS change_id, c.job_id, c.status, c.reason, c.attempt, c.time,
           j.project_id, j.customer_id, j.job_type_id, j.job_type_name, j.dead_lettered, j.error_type,
           w.id AS webhook_id, w.events
    FROM jobs.job_status_changes c
    JOIN jobs.jobs j ON j.id = c.job_id
    JOIN jobs.webhooks w ON w.project_id = j.project_id AND w.create_time <= c.time
    WHERE c.id = ANY(:ids)
""")
_WALLET_HOOKS = text("""
    SELECT id, customer_id, create_time FROM jobs.webhooks
    WHERE customer_id = ANY(CAST(:customers AS uuid[])) AND :event = ANY(events)
""")
# Per endpoint (LATERAL, on the partial index (webhook_id, next_attempt_time)), at most `room`
# of its due deliveries; then the oldest `limit` of those. The UPDATE's own WHERE re-checks each
# row under its lock, so two replicas never claim one delivery for the same attempt.
_CLAIM = text("""
    UPDATE jobs.webhook_deliveries d
    SET attempts = d.attempts + 1, next_attempt_time = :claim_until, last_attempt_time = :now
    FROM (
        SELECT p.id, w.url, w.sealed_secret
        FROM jobs.webhooks w
        LEFT JOIN unnest(CAST(:busy_ids AS uuid[]), CAST(:busy_counts AS int[])) AS b(id, n) ON b.id = w.id
        CROSS JOIN LATERAL (
            SELECT x.id, x.next_attempt_time FROM jobs.webhook_deliveries x
            WHERE x.webhook_id = w.id AND x.state = 1 AND x.next_attempt_time <= :now
            ORDER BY x.next_attempt_time LIMIT greatest(0, :per_endpoint - coalesce(b.n, 0))
        ) p
        ORDER BY p.next_attempt_time LIMIT :limit
    ) pick
    WHERE d.id = pick.id AND d.state = 1 AND d.next_attempt_time <= :now
    RETURNING d.id, d.webhook_id, d.customer_id, d.attempts, d.payload, d.expire_time, pick.url, pick.sealed_secret
""")


def retry_delay(attempts: int, scale: float = 1.0) -> float:
    return RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1] * scale


def event_body(delivery_id: uuid.UUID, event_type: str, row: Any) -> str:
    """The POSTed JSON, fixed when the delivery is written (a retry sends the same bytes)."""
    data = {"jobId": str(row.job_id), "projectId": str(row.project_id), "customerId": str(row.customer_id),
            "jobTypeId": str(row.job_type_id), "jobTypeName": row.job_type_name,
            "status": enums.JobStatus.Name(row.status), "reason": row.reason, "attempt": row.attempt}
    if row.error_type:
        data["errorType"] = row.error_type
    return json.dumps({"id": str(delivery_id), "type": event_type, "timestamp": row.time.isoformat(),
                       "data": data}, separators=(",", ":"), ensure_ascii=False)


def wallet_body(delivery_id: uuid.UUID, e: bpb.WalletEvent, at: datetime) -> str:
    """billing's event as the data of a delivery (the field names of its REST WalletEvent)."""
    data = {"eventId": e.id, "customerId": e.customer_id, "walletId": e.wallet_id, "currencyCode": e.currency_code,
            "availableCents": e.available_cents, "balanceCents": e.balance_cents, "heldCents": e.held_cents,
            "thresholdCents": e.threshold_cents}
    return json.dumps({"id": str(delivery_id), "type": e.type, "timestamp": at.isoformat(), "data": data},
                      separators=(",", ":"), ensure_ascii=False)


def events_of(row: Any) -> list[str]:
    found = [EVENT_OF[row.status]]
    if row.status == enums.JOB_STATUS_FAILED and row.dead_lettered:
        found.append("job.dead_lettered")
    return [e for e in found if e in row.events]


@dataclass(frozen=True)
class _Claim:
    id: uuid.UUID
    webhook_id: uuid.UUID
    customer_id: uuid.UUID
    attempts: int
    body: bytes
    expire_time: datetime
    url: str
    secret: str = field(repr=False)


class Deliveries:
    def __init__(self, db: Database, config: JobsConfig, sealer: Sealer, billing: Billing) -> None:
        self.db, self.config, self.sealer, self.billing = db, config, sealer, billing
        self._http = egress.Client(config.egress_policy)
        self._written = asyncio.Event()  # the fan-out wrote deliveries: the sender looks at once
        self._inflight: Counter[uuid.UUID] = Counter()

    async def close(self) -> None:
        await self._http.close()

    # fan-out -------------------------------------------------------------------------------------

    async def fan_out_once(self) -> int:
        """One pass; how many deliveries it wrote."""
        now = utcnow()
        settled = now - timedelta(seconds=self.config.webhook_settle_seconds)
        written = 0
        async with self.db.session() as s:
            cursor = (await s.execute(text("SELECT change_id FROM jobs.webhook_cursor WHERE name = :n "
                                           "FOR UPDATE SKIP LOCKED"), {"n": CURSOR})).scalar_one_or_none()
            if cursor is None:  # another replica is in its pass
                return 0
            if not (await s.execute(text("SELECT EXISTS (SELECT 1 FROM jobs.webhooks)"))).scalar():
                # Nothing to send: skip to the present (a webhook made later sends only later events).
                top = (await s.execute(text("SELECT max(id) FROM jobs.job_status_changes"))).scalar()
                new_cursor = max(cursor, int(top or 0))
            else:
                scanned = (await s.execute(_SCAN, {"cursor": cursor, "final": list(FINAL),
                                                   "limit": SCAN_LIMIT})).all()
                new_cursor = cursor
                for change_id, time in scanned:  # past the settled prefix only (module docstring)
                    if time > settled:
                        break
                    new_cursor = change_id
                if scanned:
                    rows = (await s.execute(_EVENTS, {"ids": [r[0] for r in scanned]})).all()
                    values = []
                    expire = now + timedelta(hours=self.config.webhook_retry_hours)
                    for row in rows:
                        for event_type in events_of(row):
                            did = new_id()
                            values.append({"id": did, "webhook_id": row.webhook_id, "customer_id": row.customer_id,
                                           "change_id": row.change_id, "event_type": event_type,
                                           "job_id": row.job_id, "payload": event_body(did, event_type, row),
                                           "state": PENDING, "attempts": 0, "last_status_code": 0,
                                           "last_error": "", "next_attempt_time": now, "expire_time": expire,
                                           "create_time": now})
                    if values:
                        done = await s.execute(insert(WebhookDelivery).values(values).on_conflict_do_nothing()
                                               .returning(WebhookDelivery.id))
                        written = len(done.all())
            if new_cursor != cursor:
                await s.execute(text("UPDATE jobs.webhook_cursor SET change_id = :c WHERE name = :n"),
                                {"c": new_cursor, "n": CURSOR})
        if written:
            self._written.set()
        return written

    async def wallet_fan_out_once(self) -> int:
        """One pass over billing's wallet events; how many deliveries it wrote."""
        now = utcnow()
        settled = now - timedelta(seconds=self.config.webhook_settle_seconds)
        expire = now + timedelta(hours=self.config.webhook_retry_hours)
        values: list[dict[str, Any]] = []
        async with self.db.session() as s:
            cursor = (await s.execute(text("SELECT change_id FROM jobs.webhook_cursor WHERE name = :n "
                                           "FOR UPDATE SKIP LOCKED"), {"n": WALLET_CURSOR})).scalar_one_or_none()
            if cursor is None:
                return 0
            # Billing is asked only while an endpoint listens; the cursor waits meanwhile, and the
            # events it then catches up on are older than every endpoint, so none is sent.
            if not (await s.execute(text("SELECT EXISTS (SELECT 1 FROM jobs.webhooks WHERE :e = ANY(events))"),
                                    {"e": LOW_BALANCE})).scalar():
                return 0
            new_cursor, after, unsettled = cursor, cursor, False
            for _ in range(WALLET_PAGES):
                reply = await self.billing.wallet_events_after(after, SCAN_LIMIT)
                items = [(i.seq, i.event, i.event.create_time.ToDatetime(UTC)) for i in reply.items]
                for seq, _, at in items:  # past the settled prefix only, as for job changes
                    unsettled = unsettled or at > settled
                    if not unsettled:
                        new_cursor = seq
                values += await self._wallet_deliveries(s, items, now, expire)
                if unsettled or len(items) < SCAN_LIMIT:
                    break
                after = items[-1][0]
            written = 0
            if values:
                done = await s.execute(insert(WebhookDelivery).values(values).on_conflict_do_nothing()
                                       .returning(WebhookDelivery.id))
                written = len(done.all())
            if new_cursor != cursor:
                await s.execute(text("UPDATE jobs.webhook_cursor SET change_id = :c WHERE name = :n"),
                                {"c": new_cursor, "n": WALLET_CURSOR})
        if written:
            self._written.set()
        return written

    @staticmethod
    async def _wallet_deliveries(s: Any, items: list[tuple[int, bpb.WalletEvent, datetime]], now: datetime,
                                 expire: datetime) -> list[dict[str, Any]]:
        """One delivery per (event, endpoint of the event's customer that subscribed before it)."""
        if not items:
            return []
        hooks: defaultdict[str, list[Any]] = defaultdict(list)
        customers = sorted({e.customer_id for _, e, _ in items})
        for h in (await s.execute(_WALLET_HOOKS, {"customers": customers, "event": LOW_BALANCE})).all():
            hooks[str(h.customer_id)].append(h)
        values = []
        for seq, e, at in items:
            for h in hooks[e.customer_id] if e.type == LOW_BALANCE else ():
                if h.create_time <= at:
                    did = new_id()
                    values.append({"id": did, "webhook_id": h.id, "customer_id": h.customer_id, "change_id": seq,
                                   "event_type": LOW_BALANCE, "job_id": None, "payload": wallet_body(did, e, at),
                                   "state": PENDING, "attempts": 0, "last_status_code": 0, "last_error": "",
                                   "next_attempt_time": now, "expire_time": expire, "create_time": now})
        return values

    async def fan_out_forever(self) -> None:
        while True:
            # Each source on its own: billing being down holds back only the wallet events.
            for name, fan_out in (("job", self.fan_out_once), ("wallet", self.wallet_fan_out_once)):
                try:
                    await fan_out()
                except Exception:  # a failed pass is retried on the next tick; the cursor did not move
                    log.exception("webhook %s fan-out pass failed", name)
            await asyncio.sleep(self.config.webhook_scan_seconds)

    # sender --------------------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[_Claim]:
        busy = [(w, n) for w, n in self._inflight.items() if n > 0]
        now = utcnow()
        lease = timedelta(seconds=self.config.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
        async with self.db.session() as s:
            rows = (await s.execute(_CLAIM, {
                "now": now, "claim_until": now + lease, "limit": limit,
                "per_endpoint": self.config.webhook_per_endpoint,
                "busy_ids": [w for w, _ in busy], "busy_counts": [n for _, n in busy]})).all()
        claims = []
        for r in rows:
            try:
                secret = self.sealer.open(str(r.webhook_id), r.sealed_secret)
            except Exception:  # one endpoint's unreadable secret fails its deliveries alone
                log.exception("webhook %s: signing secret does not open", r.webhook_id)
                continue
            claims.append(_Claim(r.id, r.webhook_id, r.customer_id, r.attempts, r.payload.encode(), r.expire_time,
                                 r.url, secret))
        return claims

    async def send(self, c: _Claim) -> None:
        status, error = 0, ""
        try:
            answer = await self._http.request(
                "POST", c.url, data=c.body, time_limit=self.config.webhook_timeout_seconds,
                max_response_bytes=ANSWER_BYTES,
                headers={"content-type": "application/json", "user-agent": "InnoSystem-Webhooks/1",
                         **signed_headers(c.secret, str(c.id), c.body)})
            status = answer.status
            if not 200 <= status < 300:
                error = f"HTTP {status}"  # the status only: the answer's body is not shown
        except egress.EgressError as exc:
            error = f"{exc.reason}: {exc.message}"
        await self.record(c, status, error)

    async def record(self, c: _Claim, status: int, error: str) -> None:
        now = utcnow()
        values: dict[str, Any] = {"last_status_code": status, "last_error": error}
        if not error:
            values["state"] = SUCCEEDED
        elif now >= c.expire_time:
            values["state"] = FAILED
            log.warning("webhook %s: delivery %s failed after %d attempts: %s", c.webhook_id, c.id, c.attempts,
                        error, extra={"customer_id": str(c.customer_id)})
        else:
            values["next_attempt_time"] = min(
                now + timedelta(seconds=retry_delay(c.attempts, self.config.webhook_retry_scale)), c.expire_time)
        d = WebhookDelivery
        async with self.db.session() as s:
            # Only if the claim is still ours: a redelivery or another replica's later claim wins.
            await s.execute(update(d)
                            .where(d.id == c.id, d.attempts == c.attempts, d.state == PENDING).values(**values))

    async def send_forever(self) -> None:
        tasks: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None], webhook_id: uuid.UUID) -> None:
            tasks.discard(task)
            self._inflight[webhook_id] -= 1
            if self._inflight[webhook_id] <= 0:
                del self._inflight[webhook_id]
            if not task.cancelled() and task.exception() is not None:
                log.error("webhook delivery failed", exc_info=task.exception())
            self._written.set()  # a slot is free

        try:
            while True:
                self._written.clear()
                room = self.config.webhook_concurrency - len(tasks)
                if room > 0:
                    try:
                        claims = await self.claim(room)
                    except Exception:
                        log.exception("webhook claim failed")
                        claims = []
                    for c in claims:
                        self._inflight[c.webhook_id] += 1
                        task = asyncio.create_task(self.send(c))
                        tasks.add(task)
                        task.add_done_callback(functools.partial(finished, webhook_id=c.webhook_id))
                # Wake when the fan-out wrote, a slot freed, or retries may have come due.
                try:
                    await asyncio.wait_for(self._written.wait(), self.config.webhook_scan_seconds)
                except TimeoutError:
                    pass
        finally:
            for task in tasks:
                task.cancel()
