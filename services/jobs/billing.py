"""The billing peer as the jobs service uses it: batched holds over gRPC (hold id = job id), or
answered in this process when billing shares it (kit.inprocess, services/billing/holds.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from innosystem.billing.v1 import billing_pb2 as bpb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.kit import inprocess
from innosystem.kit.db import Conn, Database, Writes
from innosystem.kit.errors import DomainError, FailedPrecondition, from_rpc_error, rpc_error
from innosystem.kit.protos import timestamp, to_datetime

log = logging.getLogger(__name__)

BATCH = 1000  # billing's batch limit
# A batch this small goes to a billing replica in this process when there is one (kit.inprocess),
# while this process uses less than a core: every submit's and ending's batch at light and steady
# load (200 jobs/s), spared a gRPC exchange and the wake-up of another process (7% less CPU per
# job at 200/s than with 0.6, docs/performance.md, session 16). Once this process is busy for a
# whole core, and for a large batch, billing's own process answers, on another core.
LOCAL_ITEMS = 8
LOCAL_BELOW_CORES = 1.0
# A submit's holds, up to a whole batch, go in the jobs' own transaction where billing shares this
# process and database (`joined`), while this process uses less than a core: a batch of 1,000 then
# costs no BatchReserve exchange and no commit of billing's (0.20-0.21 ms of CPU a job in all
# against 0.22-0.30, billing's process idle; docs/performance.md, session 24).
JOINED_ITEMS = BATCH


@dataclass(frozen=True)
class HoldRequest:
    hold_id: str
    customer_id: str
    amount_cents: int
    currency_code: str
    job_id: str
    expire_time: datetime | None = None
    # For billing's per-project monthly spending limits and usage reports.
    project_id: str = ""
    job_type_id: str = ""

    @property
    def description(self) -> str:
        return f"job {self.job_id}"


@dataclass(frozen=True)
class CaptureRequest:
    hold_id: str
    amount_cents: int
    over_capture_policy: int = 0
    description: str = ""


class _StatusError(grpc.RpcError):
    """A batch item's google.rpc.Status dressed as an RpcError so `from_rpc_error` reads its details."""

    def __init__(self, status: status_pb2.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return next((c for c in grpc.StatusCode if c.value[0] == self._status.code), grpc.StatusCode.UNKNOWN)

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def item_error(status: status_pb2.Status) -> DomainError:
    return from_rpc_error(_StatusError(status))


Outcome = DomainError | None  # None: the item succeeded


class NotJoined(Exception):
    """Billing could not store the holds, or their captures, in the caller's transaction; nothing
    was held or captured."""


@dataclass
class Joined:
    """Holds written into the caller's transaction: each one's outcome; `ended` once the
    transaction ended (billing's follow-up in Open-to-Buy)."""

    outcomes: list[Outcome]
    reserves: Any

    async def ended(self, committed: bool) -> None:
        await (self.reserves.committed() if committed else self.reserves.abandoned())


def _reserves(items: Sequence[HoldRequest]) -> list[bpb.ReserveRequest]:
    return [bpb.ReserveRequest(hold_id=i.hold_id, customer_id=i.customer_id, amount_cents=i.amount_cents,
                               currency_code=i.currency_code, job_id=i.job_id, expire_time=timestamp(i.expire_time),
                               description=i.description, project_id=i.project_id,
                               job_type_id=i.job_type_id) for i in items]


class Billing:
    def __init__(self, channel: grpc.aio.Channel, call_timeout: float = 10.0) -> None:
        self._stub = billing_pb2_grpc.BillingServiceStub(channel)
        self._timeout = call_timeout

    async def _batched(self, method: str, requests: Sequence[object]) -> list[Outcome]:
        out: list[Outcome] = []
        request_type = getattr(bpb, f"{method}Request")
        for start in range(0, len(requests), BATCH):
            # Only each item's outcome is read here: billing skips building the rest of each hold.
            request = request_type(requests=requests[start:start + BATCH], view=bpb.HOLD_VIEW_BASIC)
            local = (inprocess.find(inprocess.BILLING_HOLDS) if len(request.requests) <= LOCAL_ITEMS
                     and inprocess.cpu_share() < LOCAL_BELOW_CORES else None)
            if local is not None:
                reply = await self._local(local, request)
            else:
                reply = await getattr(self._stub, method)(request, timeout=self._timeout)
            out += [item_error(r.error) if r.HasField("error") else None for r in reply.results]
        return out

    async def _local(self, answer: inprocess.Handler, request: Message) -> bpb.BatchHoldResponse:
        """Billing in this process answers: the same reply, an error raised as the call's would be,
        within the same time."""
        try:
            async with asyncio.timeout(self._timeout):
                reply: bpb.BatchHoldResponse | status_pb2.Status = await answer(request)
        except TimeoutError:
            raise rpc_error(status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=(
                f"no answer from the billing service in {self._timeout:g} s"))) from None
        if isinstance(reply, status_pb2.Status):
            raise rpc_error(reply)
        return reply

    async def reserve(self, items: Sequence[HoldRequest]) -> list[Outcome]:
        return await self._batched("BatchReserve", _reserves(items))

    def joined(self, db: Database, holds: int) -> Any:
        """Billing in this process on `db`'s database, which stores `holds` holds in a transaction
        of `db` (services/billing/joined.py), if there is one and the batch is one billing would
        take here: up to JOINED_ITEMS of them, while this process uses less than a core (once it is
        busy, billing's own process reserves, on another core)."""
        peer = inprocess.find(inprocess.BILLING_JOINED)
        if (peer is None or holds > JOINED_ITEMS or inprocess.cpu_share() >= LOCAL_BELOW_CORES
                or not peer.serves(db)):
            return None
        return peer

    async def reserve_in(self, peer: Any, conn: Conn, writes: Writes, items: Sequence[HoldRequest]) -> Joined:
        """`reserve`, the holds written by `conn`'s transaction (`peer`: `joined`'s): each item's
        outcome, and what to tell billing once the transaction ended. Raises NotJoined (nothing
        written, nothing held) when billing cannot take them there: `reserve` them instead."""
        answer = await peer.reserve(conn, writes, items)
        if answer is None:
            raise NotJoined()
        statuses, reserves = answer
        return Joined([None if s is None else item_error(s) for s in statuses], reserves)

    async def capture_in(self, peer: Any, conn: Conn, writes: Writes, customer_id: uuid.UUID,
                         items: Sequence[CaptureRequest], held: Mapping[str, int]) -> Any:
        """`capture`, the captures (one customer's; `held`: what each hold's reserve held) written
        by `conn`'s transaction, an ending's (`peer`: `joined`'s): what to tell once it committed
        (`committed()`). Raises NotJoined (nothing written) when billing cannot take them there:
        settle them the usual way, through the outbox."""
        try:
            captures = await peer.capture(conn, writes, customer_id, items, held)
        except Exception as exc:  # billing's lookups (a reseller's rate, an account), before it wrote anything
            log.warning("captures not joined to their ending (%s); they go through the outbox", type(exc).__name__)
            captures = None
        if captures is None:
            raise NotJoined()
        return captures

    async def capture(self, items: Sequence[CaptureRequest]) -> list[Outcome]:
        return await self._batched("BatchCapture", [
            bpb.CaptureRequest(hold_id=i.hold_id, amount_cents=i.amount_cents,
                               over_capture_policy=i.over_capture_policy,  # type: ignore[arg-type]
                               description=i.description) for i in items])

    async def extend(self, holds: Sequence[tuple[str, datetime]]) -> list[Outcome]:
        """Move holds' deadlines later (never earlier)."""
        return await self._batched("BatchExtend", [bpb.ExtendRequest(hold_id=h, expire_time=timestamp(at))
                                                   for h, at in holds])

    async def release(self, hold_ids: Sequence[str], reason: str) -> list[Outcome]:
        return await self._batched("BatchRelease", [bpb.ReleaseRequest(hold_id=h, reason=reason) for h in hold_ids])

    async def active_holds(self, start: datetime | None, before: datetime
                           ) -> AsyncIterator[list[tuple[str, str, datetime]]]:
        """Pages of (hold id, job id, create time) of the active holds created in [start, before)."""
        token = ""
        while True:
            reply = await self._stub.ListActiveHolds(bpb.ListActiveHoldsRequest(
                create_time_from=timestamp(start), create_time_before=timestamp(before), page_token=token),
                timeout=self._timeout)
            yield [(h.hold_id, h.job_id, to_datetime(h.create_time)) for h in reply.holds]
            token = reply.next_page_token
            if not token:
                return

    async def wallet_events_after(self, after_seq: int, limit: int) -> bpb.ListWalletEventsAfterResponse:
        """Billing's stored wallet events past `after_seq`, in store order (webhook fan-out)."""
        reply: bpb.ListWalletEventsAfterResponse = await self._stub.ListWalletEventsAfter(
            bpb.ListWalletEventsAfterRequest(after_seq=after_seq, limit=limit), timeout=self._timeout)
        return reply


def insufficient_funds(err: DomainError, field: str) -> FailedPrecondition:
    """The submit's error when the wallet cannot hold the cost: billing's reason, the field named."""
    return FailedPrecondition(f"{field}: the wallet cannot hold the estimated cost ({err.message})",
                              field=field, reason=err.reason, metadata=err.metadata)
