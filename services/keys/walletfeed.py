"""The wallet-event feed: billing's `wallet.low_balance` events to the notification channels that
chose NOTIFICATION_TRIGGER_WALLET_LOW_BALANCE.

Billing stores every event (`billing.wallet_events`, numbered by `seq`) and publishes it, after
its commit and best effort, on its Redis channel `billing:wallet-events`. The stored events are the
source; the publish only wakes the feed early (and a slow timer wakes it anyway, in case one was
lost). A pass, in one transaction:

1. locks the cursor row (`wallet_event_cursor`, FOR UPDATE SKIP LOCKED: one replica reads at a
   time, the others skip the pass);
2. reads billing's events past it in `seq` order (ListWalletEventsAfter, pages of 1000);
3. writes one delivery per (event, channel of the event's customer that chose the trigger and
   existed at the event's time) into the outbox that `notify.Notifications` sends from. The
   delivery's id is derived from (channel, event), and the insert skips ids already there;
4. moves the cursor past the events read, and commits the deliveries and the cursor together.

A crash before the commit leaves both as they were (the next pass reads the same events again); a
crash after it has both: nothing lost, nothing written twice. `seq` is assigned at billing's insert,
so an event whose transaction commits late can appear below one already read: the cursor passes
only events older than `wallet_feed_settle_seconds`; younger ones get their deliveries at once and
are read again (a no-op, by the derived ids) until they settle. While no channel chose the trigger,
billing is not asked and the cursor waits: the events it later catches up on are older than every
channel, so none is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.billing.v1 import billing_pb2 as bpb
from innosystem.keys.v1 import access_logs_pb2 as pb
from innosystem.kit.db import utcnow
from innosystem.kit.pubsub import CLOSED, Subscriptions
from services.keys.deps import Deps
from services.keys.models import Delivery, WalletEventCursor

log = logging.getLogger(__name__)

CHANNEL = "billing:wallet-events"  # billing's publish (services/billing/alerts.py)
LOW_BALANCE = "wallet.low_balance"
TRIGGER = pb.NotificationTrigger.NOTIFICATION_TRIGGER_WALLET_LOW_BALANCE
CURSOR = "billing"
PAGE = 1000  # billing's maximum
PAGES = 10  # per pass: a first subscriber's catch-up over billing's history goes 10k events a pass

_SUBSCRIBED = text("SELECT EXISTS (SELECT 1 FROM keys.notification_channels WHERE triggers @> CAST(:t AS jsonb))")
_CHANNELS = text("""
    SELECT id, customer_id, create_time FROM keys.notification_channels
    WHERE customer_id = ANY(CAST(:customers AS uuid[])) AND triggers @> CAST(:t AS jsonb)
""")


def delivery_id(channel_id: uuid.UUID, event_id: str) -> uuid.UUID:
    """One delivery per (channel, event), whichever pass or replica writes it."""
    return uuid.uuid5(channel_id, event_id)


@dataclass(frozen=True)
class Pass:
    written: int = 0
    # Seconds until the youngest event read but not passed settles (the next pass is due then).
    settle_in: float | None = None


class WalletFeed:
    def __init__(self, deps: Deps, subscriptions: Subscriptions, wake: asyncio.Event) -> None:
        self.deps, self.subscriptions = deps, subscriptions
        self._wake = wake  # set when deliveries were written: the sender looks at once

    async def follow_once(self) -> Pass:
        cfg = self.deps.config
        now = utcnow()
        settled = now - timedelta(seconds=cfg.wallet_feed_settle_seconds)
        pending: datetime | None = None
        written = 0
        async with self.deps.db.session() as s:
            cursor = (await s.execute(select(WalletEventCursor.seq).where(WalletEventCursor.name == CURSOR)
                                      .with_for_update(skip_locked=True))).scalar_one_or_none()
            if cursor is None:  # another replica is in its pass
                return Pass()
            if not (await s.execute(_SUBSCRIBED, {"t": json.dumps([TRIGGER])})).scalar():
                return Pass()
            new_cursor, after, values = cursor, cursor, []
            for _ in range(PAGES):
                reply = await self.deps.billing.wallet_events_after(after, PAGE)
                items = [(i.seq, i.event, i.event.create_time.ToDatetime(UTC)) for i in reply.items]
                for seq, _, at in items:  # past the settled prefix only (module docstring)
                    if pending is None and at > settled:
                        pending = at
                    if pending is None:
                        new_cursor = seq
                values += await self._deliveries(s, [(e, at) for _, e, at in items], now)
                if pending is not None or len(items) < PAGE:
                    break
                after = items[-1][0]
            if values:
                done = await s.execute(insert(Delivery).values(values).on_conflict_do_nothing()
                                       .returning(Delivery.id))
                written = len(done.all())
            if new_cursor != cursor:
                await s.execute(update(WalletEventCursor).where(WalletEventCursor.name == CURSOR)
                                .values(seq=new_cursor))
        if written:
            self._wake.set()
        return Pass(written, None if pending is None else max(0.0, (pending - settled).total_seconds()))

    @staticmethod
    async def _deliveries(s: AsyncSession, events: list[tuple[bpb.WalletEvent, datetime]],
                          now: datetime) -> list[dict[str, Any]]:
        """The outbox rows for these events: one per channel of the event's customer that chose the
        trigger before the event (one statement for the page's customers)."""
        customers = sorted({e.customer_id for e, _ in events if e.type == LOW_BALANCE})
        if not customers:
            return []
        channels: defaultdict[str, list[Any]] = defaultdict(list)
        for ch in (await s.execute(_CHANNELS, {"customers": customers, "t": json.dumps([TRIGGER])})).all():
            channels[str(ch.customer_id)].append(ch)
        return [{"id": delivery_id(ch.id, e.id), "channel_id": ch.id, "record_id": None, "trigger": TRIGGER,
                 "wallet_event": e.SerializeToString(), "attempts": 0, "done": False, "last_error": "",
                 "next_attempt_time": now, "create_time": now}
                for e, at in events if e.type == LOW_BALANCE
                for ch in channels[e.customer_id] if ch.create_time <= at]

    async def follow_forever(self) -> None:
        """Subscribe, then pass; wait for billing's publish, the next settle time or the fallback
        timer, whichever is first. Subscribing before the pass means no publish falls between."""
        cfg = self.deps.config
        while True:
            try:
                async with self.subscriptions.subscribe(CHANNEL) as published:
                    while True:
                        wait = cfg.wallet_feed_fallback_seconds
                        try:
                            done = await self.follow_once()
                            if done.settle_in is not None:
                                wait = min(wait, done.settle_in + 0.05)
                        except Exception:  # billing down, say: the cursor did not move; try again later
                            log.exception("wallet event feed pass failed")
                        try:
                            message = await asyncio.wait_for(published.get(), wait)
                        except TimeoutError:
                            continue
                        if CLOSED in message:
                            break  # the subscription's connection failed: subscribe again
                        while not published.empty():  # one pass serves every publish so far
                            published.get_nowait()
            except Exception:  # Redis down: keep to the timer until it is back
                log.exception("wallet event feed: subscribing to %s failed", CHANNEL)
                await self._fallback_pass()

    async def _fallback_pass(self) -> None:
        await asyncio.sleep(self.deps.config.wallet_feed_fallback_seconds)
        try:
            await self.follow_once()
        except Exception:
            log.exception("wallet event feed pass failed")
