"""A submit's holds stored by the jobs service's own transaction, where the two share a process
and a database.

A submit is a hold and a job. Stored apart they are two commits, one after the other: billing's
group commit (two round trips, its wallet rows locked between them) and then the jobs' (docs/
performance.md, session 21: at 50 jobs/s the hold was half of a submit's time). Where billing runs
in the jobs service's process on the same database (`innosystem serve billing jobs runners` with
one DATABASE_URL), it offers `Joined` (kit.inprocess): the jobs service gives it the transaction
it is about to store the jobs with, its queued writes and the BatchReserveRequest it would have
sent. Billing queues one wallet's holds, its guarded update and the journal rows for the jobs'
COMMIT (`ledger.reserve_guarded`: the wallet is not read first) and asks Open-to-Buy beside that
commit: one transaction and one round trip for the holds and their jobs, so neither is ever stored
without the other. A guard that does not hold (the wallet cannot pay, a low-balance alert to
raise, a hold id that exists) fails that transaction (`failed`), and the jobs service reserves the
usual way, as it does where billing cannot take them at all (several wallets, a spending limit:
`reserve` answers None) and where billing runs in a process of its own or on another database.
"""

from __future__ import annotations

from google.rpc import status_pb2

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.kit.db import Conn, Database, Writes
from innosystem.kit.errors import DomainError, to_status
from services.billing import ledger
from services.billing.api import DOMAIN, answered, reserve_requests
from services.billing.models import AnyHold
from services.billing.service import BillingService, JoinedReserves, NotJoinable


class Joined:
    def __init__(self, service: BillingService) -> None:
        self._service = service

    def serves(self, db: Database) -> bool:
        """Whether a transaction of `db` can store billing's rows: the same database, as the same role."""
        return db.engine.url == self._service.db.engine.url

    async def reserve(self, conn: Conn, writes: Writes, request: pb.BatchReserveRequest
                      ) -> tuple[list[status_pb2.Status | None], JoinedReserves] | None:
        """Each hold's refusal as the call would have answered it (None: held once `conn`'s
        transaction commits), and the reserves, to be told whether it committed. None when billing
        cannot store them there (nothing written, nothing held): reserve the usual way."""
        reserved: list[JoinedReserves] = []

        async def reserve(requests: list[pb.ReserveRequest]) -> list[AnyHold | DomainError]:
            reserved.append(await self._service.reserve_in(conn, writes, reserve_requests(requests)))
            return reserved[0].outcomes

        try:  # as BatchReserve answers (services/billing/api.py)
            answers = await answered("reserve", request.requests, reserve)
        except NotJoinable:
            return None
        return [to_status(a, DOMAIN) if isinstance(a, DomainError) else None for a in answers], reserved[0]

    @staticmethod
    def failed(exc: BaseException) -> bool:
        """Whether a transaction that `reserve` wrote into failed on one of its guards: nothing of it
        was stored, and the holds are to be reserved the usual way."""
        return getattr(getattr(exc, "orig", exc), "sqlstate", None) == ledger.GUARDS_FAILED
