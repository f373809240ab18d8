"""A submit's holds stored by the jobs service's own transaction, where the two share a process
and a database.

A submit is a hold and a job. Stored apart they are two commits, one after the other: billing's
group commit (two round trips, its wallet rows locked between them) and then the jobs' (docs/
performance.md, session 21: at 50 jobs/s the hold was half of a submit's time). Where billing runs
in the jobs service's process on the same database (`innosystem serve billing jobs runners` with
one DATABASE_URL), it offers `Joined` (kit.inprocess): the jobs service gives it the transaction
it is about to store the jobs with, its queued writes and the BatchReserveRequest it would have
sent. Billing checks Open-to-Buy while it locks the holds' rows on that connection (the
transaction's first round trip), decides each hold as its group commit would, and queues the
holds, the wallets' and platform accounts' updates and the journal rows for the jobs' COMMIT:
one transaction and one commit for the holds and their jobs, so neither is ever stored without
the other. Elsewhere (billing in a process of its own, another database), the jobs service
reserves over gRPC as before.
"""

from __future__ import annotations

from google.rpc import status_pb2

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.kit.db import Conn, Database, Writes
from innosystem.kit.errors import DomainError, to_status
from services.billing import ledger
from services.billing.api import DOMAIN, answered, reserve_requests
from services.billing.models import AnyHold
from services.billing.service import BillingService, JoinedReserves


class Joined:
    def __init__(self, service: BillingService) -> None:
        self._service = service

    def serves(self, db: Database) -> bool:
        """Whether a transaction of `db` can store billing's rows: the same database, as the same role."""
        return db.engine.url == self._service.db.engine.url

    async def reserve(self, conn: Conn, writes: Writes, request: pb.BatchReserveRequest
                      ) -> tuple[list[status_pb2.Status | None], JoinedReserves] | None:
        """Each hold's refusal as the call would have answered it (None: held), and the reserves,
        to be told whether `conn`'s transaction committed. None when an Open-to-Buy check came too
        late for the locked rows (nothing written, nothing held): reserve the usual way."""
        reserved: list[JoinedReserves] = []

        async def reserve(requests: list[pb.ReserveRequest]) -> list[AnyHold | DomainError]:
            reserved.append(await self._service.reserve_in(conn, writes, reserve_requests(requests)))
            return reserved[0].outcomes

        try:  # as BatchReserve answers (services/billing/api.py)
            answers = await answered("reserve", request.requests, reserve)
        except ledger.Late:
            return None
        return [to_status(a, DOMAIN) if isinstance(a, DomainError) else None for a in answers], reserved[0]
