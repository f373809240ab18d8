"""A submit's holds stored by the jobs service's own transaction, where the two share a process
and a database.

A submit is a hold and a job. Stored apart they are two commits, one after the other: billing's
group commit (two round trips, its wallet rows locked between them) and then the jobs' (docs/
performance.md, session 21: at 50 jobs/s the hold was half of a submit's time). Where billing runs
in the jobs service's process on the same database (`innosystem serve billing jobs runners` with
one DATABASE_URL), it offers `Joined` (kit.inprocess): the jobs service gives it the transaction
it is about to store the jobs with, its queued writes and the holds it would have sent in a
BatchReserveRequest, as they are (no message built only to be read back). Billing queues one
wallet's holds, its guarded update and the journal rows for the jobs' COMMIT
(`ledger.reserve_guarded`: the wallet is not read first) and asks Open-to-Buy beside that commit:
one transaction and one round trip for the holds and their jobs, so neither is ever stored
without the other. A guard that does not hold (the wallet cannot pay, a low-balance alert to
raise, a hold id that exists) fails that transaction (`failed`), and the jobs service reserves the
usual way, as it does where billing cannot take them at all (several wallets, a spending limit:
`reserve` answers None) and where billing runs in a process of its own or on another database.

An ending's captures go the same way (`capture`): one customer's holds, each captured within what
it holds, written by the ending's own transaction (`ledger.capture_guarded`: the holds and the
wallet are not read first, their state guarded in the statement) instead of an outbox row each and
a BatchCapture with a commit of billing's own; what billing cannot take there (holds it did not
reserve here, a spending limit, a charge beyond the hold) or a guard refuses (the hold not active,
a low-balance flag to change) goes through the outbox as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from google.rpc import status_pb2

from innosystem.kit.db import Conn, Database, Writes
from innosystem.kit.errors import DomainError, to_status
from services.billing import ledger
from services.billing.api import DOMAIN
from services.billing.metrics import count_many
from services.billing.service import (
    BillingService,
    JoinedCapture,
    JoinedCaptures,
    JoinedReserves,
    NotJoinable,
    ReserveRequest,
)


class HoldItem(Protocol):
    """A hold as the jobs service asks for it (its HoldRequest): a BatchReserveRequest's item."""

    hold_id: str
    customer_id: str
    amount_cents: int
    currency_code: str
    job_id: str
    expire_time: datetime | None
    project_id: str
    job_type_id: str

    @property
    def description(self) -> str: ...


class CaptureItem(Protocol):
    """A capture as the jobs service asks for it (its CaptureRequest): a BatchCaptureRequest's item."""

    hold_id: str
    amount_cents: int
    over_capture_policy: int
    description: str


class Joined:
    def __init__(self, service: BillingService) -> None:
        self._service = service

    def serves(self, db: Database) -> bool:
        """Whether a transaction of `db` can store billing's rows: the same database, as the same role."""
        return db.engine.url == self._service.db.engine.url

    async def reserve(self, conn: Conn, writes: Writes, holds: Sequence[HoldItem]
                      ) -> tuple[list[status_pb2.Status | None], JoinedReserves] | None:
        """Each hold's refusal as BatchReserve would have answered it (None: held once `conn`'s
        transaction commits), and the reserves, to be told whether it committed. None when billing
        cannot store them there (nothing written, nothing held): reserve the usual way. The
        holds' text is the jobs service's own (ids it made and checked), so it is not checked
        for what PostgreSQL cannot store as a call's would be."""
        requests = [ReserveRequest(h.hold_id, h.customer_id, h.amount_cents, h.currency_code, h.job_id,
                                   h.expire_time, h.description, h.project_id, h.job_type_id) for h in holds]
        try:
            reserved = await self._service.reserve_in(conn, writes, requests)
        except NotJoinable:
            return None
        count_many("reserve", reserved.outcomes)
        return [to_status(a, DOMAIN) if isinstance(a, DomainError) else None for a in reserved.outcomes], reserved

    async def capture(self, conn: Conn, writes: Writes, customer_id: uuid.UUID, captures: Sequence[CaptureItem],
                      held: Mapping[str, int]) -> JoinedCaptures | None:
        """One customer's captures (`held`: what each hold's reserve held) written into `conn`'s
        transaction, an ending's: captured once it commits, and to be told so. None when billing
        cannot store them there (nothing written): settle them the usual way."""
        try:
            return await self._service.capture_in(conn, writes, customer_id, [
                JoinedCapture(c.hold_id, c.amount_cents, held[c.hold_id], c.over_capture_policy, c.description)
                for c in captures])
        except NotJoinable:
            return None

    @staticmethod
    def failed(exc: BaseException) -> bool:
        """Whether a transaction that `reserve` or `capture` wrote into failed on one of its guards:
        nothing of it was stored; the holds are to be reserved, or settled, the usual way."""
        return getattr(getattr(exc, "orig", exc), "sqlstate", None) == ledger.GUARDS_FAILED
