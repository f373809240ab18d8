"""The customer's access log: append (chained, serialized per customer), list, verify, watch,
and the notification outbox rows written with each record.

An append locks the customer's chain head row (`SELECT … FOR UPDATE`), so concurrent appends of
one customer queue up while other customers proceed; the record and the new head commit in the
caller's transaction, so a record exists exactly when the change it describes does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import and_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.keys.v1 import access_logs_pb2 as pb
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import InvalidArgument
from innosystem.kit.pagination import decode_token, encode_token, page_size
from innosystem.kit.protos import timestamp, to_datetime
from innosystem.kit.pubsub import CLOSED, Subscriptions
from services.keys import chain
from services.keys.models import AccessRecord, ChainHead, Delivery, NotificationChannel

log = logging.getLogger(__name__)
T = pb.AccessRecordType
OUT = pb.AccessOutcome
TR = pb.NotificationTrigger
CUSTOMER_JOB = 1  # PurposeCode.PURPOSE_CODE_CUSTOMER_INITIATED_JOB
KEY_TYPES = {T.ACCESS_RECORD_TYPE_KEY_REGISTERED, T.ACCESS_RECORD_TYPE_KEY_UPDATED, T.ACCESS_RECORD_TYPE_KEY_ROTATED,
             T.ACCESS_RECORD_TYPE_KEY_DISABLED, T.ACCESS_RECORD_TYPE_PROJECT_KEY_CHANGED}
ACCESS_TYPES = {T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED, T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED,
                T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED}
MAX_LIST = 1000
# Records read per page while verifying a chain: what one verification holds in memory at most.
VERIFY_CHUNK = 1000


@dataclass(frozen=True)
class LogFilter:
    """Which records a reader wants (every field optional)."""

    project_id: str = ""
    job_type_id: str = ""
    job_id: str = ""
    processor_id: str = ""
    purpose: int = 0
    outcome: int = 0
    type: int = 0
    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def of(cls, r: pb.ListAccessLogsRequest | pb.WatchAccessLogsRequest) -> LogFilter:
        common = cls(r.project_id, r.job_type_id, r.job_id, r.processor_id, r.purpose, r.outcome)
        if not isinstance(r, pb.ListAccessLogsRequest):
            return common
        return dataclasses.replace(common, type=r.type,
                                   start=to_datetime(r.start_time) if r.HasField("start_time") else None,
                                   end=to_datetime(r.end_time) if r.HasField("end_time") else None)

    def where(self, stmt: Any) -> Any:
        conditions = [getattr(AccessRecord, n) == getattr(self, n)
                      for n in ("project_id", "job_type_id", "job_id", "processor_id", "purpose", "outcome", "type")
                      if getattr(self, n)]
        if self.start is not None:
            conditions.append(AccessRecord.create_time >= self.start)
        if self.end is not None:
            conditions.append(AccessRecord.create_time < self.end)
        return stmt.where(and_(*conditions)) if conditions else stmt

    def matches(self, row: AccessRecord) -> bool:
        return all(not getattr(self, n) or getattr(row, n) == getattr(self, n)
                   for n in ("project_id", "job_type_id", "job_id", "processor_id", "purpose", "outcome", "type"))


def channel_name(customer_id: uuid.UUID | str) -> str:
    return f"keys:accesslog:{{{customer_id}}}"


@dataclass
class Entry:
    """What a use case says about one record; the log adds sequence, time and hashes."""

    type: int
    access_id: str = ""
    project_id: str = ""
    job_type_id: str = ""
    job_id: str = ""
    processor_id: str = ""
    processor_kind: int = 0
    processor_name: str = ""
    purpose: int = 0
    requested_fields: list[str] = field(default_factory=list)
    returned_fields: list[str] = field(default_factory=list)
    client_reference: str = ""
    outcome: int = 0
    reason: str = ""
    message: str = ""
    key_id: str = ""
    client_key_version: int = 0
    project_key_version: int = 0
    processing_succeeded: bool = False
    duration_ms: int = 0
    output_summary: str = ""
    platform_request_id: str = ""


def record_pb(row: AccessRecord) -> pb.AccessRecord:
    return pb.AccessRecord(
        id=str(row.id), customer_id=str(row.customer_id), sequence=row.sequence,
        type=row.type, access_id=row.access_id, project_id=row.project_id,  # type: ignore[arg-type]
        job_type_id=row.job_type_id, job_id=row.job_id, processor_id=row.processor_id,
        processor_kind=row.processor_kind, processor_name=row.processor_name,  # type: ignore[arg-type]
        purpose=row.purpose, requested_fields=list(row.requested_fields or []),  # type: ignore[arg-type]
        returned_fields=list(row.returned_fields or []), client_reference=row.client_reference,
        outcome=row.outcome, reason=row.reason, message=row.message, key_id=row.key_id,  # type: ignore[arg-type]
        client_key_version=row.client_key_version, project_key_version=row.project_key_version,
        processing_succeeded=row.processing_succeeded, duration_ms=row.duration_ms,
        output_summary=row.output_summary, platform_request_id=row.platform_request_id,
        create_time=timestamp(row.create_time), prev_hash=row.prev_hash, hash=row.hash)


def triggers_matching(record: pb.AccessRecord, triggers: Sequence[int]) -> list[int]:
    matched = []
    for t in triggers:
        if t == TR.NOTIFICATION_TRIGGER_ANY_ACCESS and record.type in ACCESS_TYPES:
            matched.append(t)
        elif t == TR.NOTIFICATION_TRIGGER_NON_JOB_PURPOSE and record.type in ACCESS_TYPES \
                and record.purpose not in (0, CUSTOMER_JOB):
            matched.append(t)
        elif t == TR.NOTIFICATION_TRIGGER_ACCESS_DENIED and record.outcome == OUT.ACCESS_OUTCOME_DENIED:
            matched.append(t)
        elif t == TR.NOTIFICATION_TRIGGER_ACCESS_ERROR and record.outcome == OUT.ACCESS_OUTCOME_ERROR:
            matched.append(t)
        elif t == TR.NOTIFICATION_TRIGGER_ACCESS_ABANDONED and record.type == T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED:
            matched.append(t)
        elif t == TR.NOTIFICATION_TRIGGER_KEY_CHANGE and record.type in KEY_TYPES:
            matched.append(t)
    return matched


class AccessLog:
    def __init__(self, db: Database, redis: aioredis.Redis) -> None:
        self.db, self.redis = db, redis
        self.subscriptions = Subscriptions(redis)
        self.verify_chunk = VERIFY_CHUNK

    async def append(self, session: AsyncSession, customer_id: uuid.UUID, entry: Entry) -> AccessRecord:
        """Chain one record onto the customer's log inside the caller's transaction."""
        await session.execute(insert(ChainHead).values(customer_id=customer_id, sequence=0, hash=chain.GENESIS)
                              .on_conflict_do_nothing())
        head = (await session.execute(select(ChainHead).where(ChainHead.customer_id == customer_id)
                                      .with_for_update())).scalar_one()
        row = AccessRecord(id=uuid.uuid4(), customer_id=customer_id, sequence=head.sequence + 1,
                           create_time=utcnow(), prev_hash=head.hash, hash="", **entry.__dict__)
        row.hash = chain.record_hash(record_pb(row))
        head.sequence, head.hash = row.sequence, row.hash
        session.add(row)
        channels = (await session.execute(select(NotificationChannel).where(
            NotificationChannel.customer_id == customer_id))).scalars().all()
        if channels:
            as_pb = record_pb(row)
            for ch in channels:
                matched = triggers_matching(as_pb, ch.triggers)
                if matched:
                    session.add(Delivery(channel_id=ch.id, record_id=row.id, trigger=matched[0]))
        await session.flush()
        return row

    async def publish(self, customer_id: uuid.UUID, sequence: int) -> None:
        """Tell watchers (any replica) a record committed: ids only, never record content."""
        try:
            await self.redis.publish(channel_name(customer_id), str(sequence))
        except Exception as exc:  # watchers also poll; a lost notice only delays them
            log.warning("access log notice not published: %s", exc)

    async def page(self, customer_id: uuid.UUID, f: LogFilter, size: int, token: str,
                   oldest_first: bool) -> tuple[list[AccessRecord], str]:
        """Keyset pages on the sequence, newest first unless `oldest_first`."""
        size = page_size(size, 100, MAX_LIST)
        key = decode_token(token, 1)
        stmt = f.where(select(AccessRecord).where(AccessRecord.customer_id == customer_id))
        if key is not None:
            if not isinstance(key[0], int):
                raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN")
            stmt = stmt.where(AccessRecord.sequence > key[0] if oldest_first else AccessRecord.sequence < key[0])
        order = AccessRecord.sequence.asc() if oldest_first else AccessRecord.sequence.desc()
        async with self.db.session() as s:
            rows = list((await s.execute(stmt.order_by(order).limit(size + 1))).scalars().all())
        if len(rows) > size:
            return rows[:size], encode_token(rows[size - 1].sequence)
        return rows, ""

    async def verify(self, customer_id: uuid.UUID) -> chain.Verification:
        """Recompute the chain in keyset pages of `verify_chunk` records, each read in its own short
        transaction, and stop at the first break: a log of any length costs one page of memory, and
        no transaction stays open while a long log is hashed.

        Pages follow (sequence, id), not the sequence alone, so a record inserted with a duplicate
        sequence is still read (and reported) rather than skipped by the page boundary. Records
        appended while the walk runs are simply checked too: the log is append-only."""
        verifier = chain.Verifier()
        after: tuple[int, uuid.UUID] | None = None
        while True:
            stmt = select(AccessRecord).where(AccessRecord.customer_id == customer_id)
            if after is not None:
                stmt = stmt.where(tuple_(AccessRecord.sequence, AccessRecord.id) > tuple_(*after))
            async with self.db.session() as s:
                rows = list((await s.execute(stmt.order_by(AccessRecord.sequence, AccessRecord.id)
                                             .limit(self.verify_chunk))).scalars().all())
            for row in rows:
                if not verifier.add(record_pb(row)):
                    return verifier.result
            if len(rows) < self.verify_chunk:
                return verifier.result
            after = (rows[-1].sequence, rows[-1].id)

    async def since(self, customer_id: uuid.UUID, after: int, limit: int = 500) -> list[AccessRecord]:
        stmt = select(AccessRecord).where(AccessRecord.customer_id == customer_id, AccessRecord.sequence > after)
        async with self.db.session() as s:
            return list((await s.execute(stmt.order_by(AccessRecord.sequence).limit(limit))).scalars().all())

    async def head(self, customer_id: uuid.UUID) -> int:
        async with self.db.session() as s:
            head = await s.get(ChainHead, customer_id)
            return head.sequence if head is not None else 0

    async def watch(self, customer_id: uuid.UUID, f: LogFilter, after_sequence: int,
                    poll_seconds: float = 2.0) -> AsyncIterator[pb.AccessRecord]:
        """Records after `after_sequence` (or from now), then live ones as they commit. A Redis
        notice wakes the loop at once; a poll every few seconds covers a lost notice, and Redis
        being away (the feed then polls until it can subscribe again)."""
        cursor = after_sequence if after_sequence > 0 else await self.head(customer_id)
        while True:
            async with self._notices(customer_id) as notices:
                while True:
                    while True:
                        # The cursor moves past filtered-out records too: `since` reads every type.
                        rows = await self.since(customer_id, cursor)
                        if not rows:
                            break
                        for row in rows:
                            cursor = row.sequence
                            if f.matches(row):
                                yield record_pb(row)
                    if notices is None:
                        await asyncio.sleep(poll_seconds)
                        break  # try to subscribe again
                    try:
                        notice = await asyncio.wait_for(notices.get(), poll_seconds)
                    except TimeoutError:
                        continue
                    if CLOSED in notice:
                        break

    @contextlib.asynccontextmanager
    async def _notices(self, customer_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[dict[str, Any]] | None]:
        """The customer's commit notices, or None while Redis is away."""
        subscription = self.subscriptions.subscribe(channel_name(customer_id))
        try:
            notices = await subscription.__aenter__()
        except (RedisError, OSError) as exc:
            log.warning("access log notices unavailable, polling: %s", exc)
            yield None
            return
        try:
            yield notices
        finally:
            await subscription.__aexit__(None, None, None)
