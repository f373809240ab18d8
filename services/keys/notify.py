"""Notification channels: webhooks told about matching access log records (and, for
NOTIFICATION_TRIGGER_WALLET_LOW_BALANCE, billing's wallet events), signed, delivered from an
outbox (written with the record, or by the wallet-event feed, services/keys/walletfeed.py) by a
background loop with retries and backoff.

    x-innosystem-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from google.protobuf import json_format
from sqlalchemy import func, select, update

from innosystem.keymanager.signing import fingerprint
from innosystem.keys.v1 import access_logs_pb2 as pb
from innosystem.kit import egress, idempotency, quota
from innosystem.kit.db import utcnow
from innosystem.kit.errors import InvalidArgument, NotFound
from innosystem.kit.pagination import Page, after_keyset, decode_keyset, keyset_page, page_size
from innosystem.kit.protos import timestamp
from innosystem.kit.validation import id_or_not_found, parse_uuid
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys.accesslog import record_pb
from services.keys.deps import Deps
from services.keys.models import AccessRecord, Delivery, IdempotencyKey, NotificationChannel
from services.keys.registry import check_endpoint

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "x-innosystem-signature"
# A webhook's answer is not read for anything but its status; a bigger one is not waited for.
WEBHOOK_ANSWER_BYTES = 64 * 1024
# A claimed delivery is retried by another pass this long after the POST's own time limit.
CLAIM_MARGIN_SECONDS = 30
MAX_CHANNELS_SETTING = "INNOSYSTEM_KEYS_MAX_CHANNELS_PER_CUSTOMER"


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    t = str(int(time.time() if now is None else now))
    mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def channel_pb(row: NotificationChannel) -> pb.NotificationChannel:
    return pb.NotificationChannel(
        id=str(row.id), customer_id=str(row.customer_id), display_name=row.display_name,
        type=row.type, webhook_url=row.webhook_url, triggers=row.triggers,  # type: ignore[arg-type]
        signing_secret_fingerprint=row.secret_fingerprint, last_delivery_time=timestamp(row.last_delivery_time),
        last_delivery_error=row.last_delivery_error, create_time=timestamp(row.create_time))


class Notifications:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        # Webhook URLs are the customer's: every delivery goes through the egress guard.
        self._http = egress.Client(deps.config.egress_policy)
        # Set by whoever wrote deliveries outside a record's transaction (the wallet-event feed):
        # the delivery loop sends them now rather than at its next tick.
        self.written = asyncio.Event()

    async def close(self) -> None:
        await self._http.close()

    async def create(self, p: Principal, customer_id: str, ch: pb.NotificationChannel, request_id: str,
                     request_hash: bytes) -> tuple[NotificationChannel, str]:
        cid = parse_uuid(customer_id, "customer_id")
        await self.deps.ensure_visible(p, cid, "customer")
        url = ch.webhook_url
        await check_endpoint(url, "notification_channel.webhook_url", self.deps.config.egress_policy,
                             ("https", "http"))
        triggers = sorted({int(t) for t in ch.triggers})
        if not triggers or any(t not in pb.NotificationTrigger.values() or t == 0 for t in triggers):
            raise InvalidArgument("notification_channel.triggers: one or more known triggers",
                                  field="notification_channel.triggers", reason="INVALID_TRIGGERS")
        if ch.type not in (0, pb.NotificationChannelType.NOTIFICATION_CHANNEL_TYPE_WEBHOOK):
            raise InvalidArgument("notification_channel.type: only WEBHOOK", field="notification_channel.type",
                                  reason="INVALID_CHANNEL_TYPE")
        scope = f"channel:{cid}"
        async with self.deps.db.session() as s:
            earlier = await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)
            if earlier is not None:
                row = await s.get(NotificationChannel, earlier)
                assert row is not None
                return row, ""
            await quota.serialize(s, "notification_channels", cid)
            count = await s.scalar(select(func.count()).select_from(NotificationChannel)
                                   .where(NotificationChannel.customer_id == cid))
            quota.check("notification channels", int(count or 0), self.deps.config.max_channels_per_customer,
                        MAX_CHANNELS_SETTING)
            channel_id = uuid.uuid4()
            secret = "whsec_" + secrets.token_urlsafe(32)
            row = NotificationChannel(id=channel_id, customer_id=cid, display_name=ch.display_name[:200],
                                      type=pb.NotificationChannelType.NOTIFICATION_CHANNEL_TYPE_WEBHOOK,
                                      webhook_url=url, triggers=triggers,
                                      sealed_secret=self.deps.sealer.seal(str(channel_id), [secret]),
                                      secret_fingerprint=fingerprint(secret.encode()), create_time=utcnow())
            s.add(row)
            await s.flush()
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, channel_id)
        return row, secret

    async def _visible(self, p: Principal, channel_id: str) -> NotificationChannel:
        cid = id_or_not_found(channel_id, "notification_channel_id", "notification_channel")
        async with self.deps.db.session() as s:
            row = await s.get(NotificationChannel, cid)
        if row is None:
            raise NotFound("notification channel not found", reason="NOTIFICATION_CHANNEL_NOT_FOUND")
        await self.deps.ensure_visible(p, row.customer_id, "notification_channel")
        return row

    async def get(self, p: Principal, channel_id: str) -> NotificationChannel:
        return await self._visible(p, channel_id)

    async def list(self, p: Principal, customer_id: str, size: int, token: str) -> Page:
        cid = parse_uuid(customer_id, "customer_id")
        await self.deps.ensure_visible(p, cid, "customer")
        n = page_size(size)
        stmt = after_keyset(select(NotificationChannel).where(NotificationChannel.customer_id == cid),
                            NotificationChannel, decode_keyset(token)).limit(n + 1)
        async with self.deps.db.session() as s:
            return keyset_page(list((await s.execute(stmt)).scalars().all()), n)

    async def delete(self, p: Principal, channel_id: str) -> None:
        row = await self._visible(p, channel_id)
        async with self.deps.db.session() as s:
            target = await s.get(NotificationChannel, row.id)
            if target is not None:
                await s.delete(target)

    async def deliver_once(self, limit: int = 100) -> int:
        """Send due deliveries. Three steps, so that no database transaction is open while a
        customer's webhook is called (a slow one would hold locks and a connection):

        1. claim: in one short transaction, take due deliveries (FOR UPDATE SKIP LOCKED, so
           replicas split them), count the attempt and push `next_attempt_time` past the call's
           time limit, which is the claim: a replica that dies mid-call leaves the delivery to be
           retried when it passes (at-least-once; receivers dedupe on the event id);
        2. send: outside any transaction, through the per-tenant gate (customers side by side,
           a bounded number per customer, each POST under its time limit);
        3. record each outcome in its own short transaction, if the claim is still ours."""
        cfg = self.deps.config
        claimed: list[_Claim] = []
        async with self.deps.db.session() as s:
            due = (await s.execute(select(Delivery).where(Delivery.done.is_(False), Delivery.next_attempt_time
                                                          <= utcnow()).order_by(Delivery.next_attempt_time)
                                   .limit(limit).with_for_update(skip_locked=True))).scalars().all()
            lease = timedelta(seconds=cfg.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
            for d in due:
                ch = await s.get(NotificationChannel, d.channel_id)
                event = pb.NotificationEvent(id=str(d.id), notification_channel_id=str(d.channel_id),
                                             trigger=d.trigger, create_time=timestamp(d.create_time))  # type: ignore[arg-type]
                if d.wallet_event is not None:
                    event.wallet_event.ParseFromString(d.wallet_event)
                elif (record := await s.get(AccessRecord, d.record_id)) is not None:
                    event.record.CopyFrom(record_pb(record))
                if ch is None or not (event.HasField("record") or event.HasField("wallet_event")):
                    d.done = True  # the channel was deleted meanwhile
                    continue
                event.customer_id = str(ch.customer_id)
                d.attempts += 1
                d.next_attempt_time = utcnow() + lease
                claimed.append(_Claim(d.id, d.attempts, str(ch.customer_id), ch.id, ch.webhook_url,
                                      json_format.MessageToJson(event, indent=None).encode(),
                                      self.deps.sealer.open(str(ch.id), ch.sealed_secret)[0]))
        results: dict[uuid.UUID, str] = {}
        started: set[uuid.UUID] = set()

        async def send(c: _Claim) -> None:
            started.add(c.delivery_id)
            results[c.delivery_id] = await self._post(c)

        await self.deps.gate.run("webhook delivery", [
            (c.customer_id, cfg.webhook_timeout_seconds + 1, functools.partial(send, c))
            for c in claimed], cfg.background_budget_seconds)
        sent = 0
        for c in claimed:
            if c.delivery_id not in started:
                # Not sent (its customer's turn did not come within the pass's budget): give the
                # claim back, uncounted, for the next pass.
                await self._unclaim(c)
                continue
            error = results.get(c.delivery_id, f"{egress.TIMEOUT}: no answer in time")  # cut off by the gate
            if await self._record(c, error):
                sent += 1
        return sent

    async def _unclaim(self, c: _Claim) -> None:
        async with self.deps.db.session() as s:
            await s.execute(update(Delivery).where(Delivery.id == c.delivery_id, Delivery.attempts == c.attempts,
                                                   Delivery.done.is_(False))
                            .values(attempts=c.attempts - 1, next_attempt_time=utcnow()))

    async def _post(self, c: _Claim) -> str:
        """"" if the webhook took the event, else what failed (our words, never its answer)."""
        try:
            answer = await self._http.request("POST", c.url, data=c.body, headers={
                "content-type": "application/json", SIGNATURE_HEADER: sign(c.secret, c.body)},
                time_limit=self.deps.config.webhook_timeout_seconds, max_response_bytes=WEBHOOK_ANSWER_BYTES)
        except egress.EgressError as exc:
            return f"{exc.reason}: {exc.message}"
        if not 200 <= answer.status < 300:
            return f"HTTP {answer.status}"  # the status only: the answer's body is not shown
        return ""

    async def _record(self, c: _Claim, error: str) -> bool:
        cfg = self.deps.config
        async with self.deps.db.session() as s:
            d = (await s.execute(select(Delivery).where(Delivery.id == c.delivery_id).with_for_update())
                 ).scalar_one_or_none()
            if d is None or d.done or d.attempts != c.attempts:
                return False  # the claim ran out and another pass took it
            ch = await s.get(NotificationChannel, c.channel_id)
            now = utcnow()
            if not error:
                d.done = True
                if ch is not None:
                    ch.last_delivery_time, ch.last_delivery_error = now, ""
                return True
            d.last_error = error
            if d.attempts >= cfg.webhook_attempts:
                d.done = True
                if ch is not None:
                    ch.last_delivery_error = f"{error} (after {d.attempts} attempts)"
                log.warning("webhook %s gave up after %d attempts: %s", c.channel_id, d.attempts, error,
                            extra={"customer_id": c.customer_id})
            else:
                d.next_attempt_time = now + timedelta(seconds=min(300, 2 ** d.attempts))
        return False


@dataclass(frozen=True)
class _Claim:
    """A delivery taken by this pass: everything the POST needs, so it runs without a session."""

    delivery_id: uuid.UUID
    attempts: int
    customer_id: str
    channel_id: uuid.UUID
    url: str
    body: bytes
    secret: str = field(repr=False)
