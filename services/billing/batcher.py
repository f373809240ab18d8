"""Group commit: many concurrent ledger operations share one PostgreSQL transaction.

Callers submit an operation (`fn(tx)`); one writer task takes whatever is queued (up to
`max_batch`), runs each operation in its own SAVEPOINT (one item failing does not fail the
others), applies the platform accounts' counter changes and the journal rows of the batch as
multi-row statements, commits once, and only then resolves every caller's future: an answer
is never given before its commit. At idle a single operation goes straight through; under
load the queue fills while the previous batch commits, so a hot wallet is not one commit per job.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.db import Database
from services.billing.models import Account, Transfer

log = logging.getLogger(__name__)

COUNTERS = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")


@dataclass
class Tx:
    """One operation's view of the batch transaction."""

    session: AsyncSession
    deltas: dict[uuid.UUID, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    transfers: list[dict[str, Any]] = field(default_factory=list)

    def defer(self, account_id: uuid.UUID, debits_posted: int = 0, credits_posted: int = 0,
              debits_pending: int = 0, credits_pending: int = 0) -> None:
        """Counter changes of a platform account, applied once per batch (no per-item hot-row update)."""
        d = self.deltas[account_id]
        d[0] += debits_posted
        d[1] += credits_posted
        d[2] += debits_pending
        d[3] += credits_pending

    def journal(self, **row: Any) -> uuid.UUID:
        row.setdefault("id", uuid.uuid4())
        self.transfers.append(row)
        return uuid.UUID(str(row["id"]))


Operation = Callable[[Tx], Awaitable[Any]]


class GroupCommit:
    def __init__(self, db: Database, max_batch: int = 256) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Operation, asyncio.Future[Any]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.operations = 0

    async def run(self, fn: Operation) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((fn, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
            if live:
                await self._commit(live)

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            async with self.db.session() as session:
                deltas: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
                transfers: list[dict[str, Any]] = []
                for fn, fut in batch:
                    tx = Tx(session)
                    try:
                        async with session.begin_nested():
                            result = await fn(tx)
                    except Exception as exc:
                        outcomes.append((fut, False, exc))
                        continue
                    for account_id, d in tx.deltas.items():
                        acc = deltas[account_id]
                        for i in range(4):
                            acc[i] += d[i]
                    transfers.extend(tx.transfers)
                    outcomes.append((fut, True, result))
                await _apply(session, deltas, transfers)
        except Exception as exc:
            log.exception("group commit of %d operations failed", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.operations += len(batch)
        for fut, ok, value in outcomes:
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


async def _apply(session: AsyncSession, deltas: dict[uuid.UUID, list[int]],
                 transfers: list[dict[str, Any]]) -> None:
    rows = [{"aid": k, "dp": d[0], "cp": d[1], "dpe": d[2], "cpe": d[3]}
            for k, d in sorted(deltas.items()) if any(d)]
    if rows:
        t = Account.__table__.c
        stmt = update(Account).where(t.id == bindparam("aid")).values(
            debits_posted=t.debits_posted + bindparam("dp"), credits_posted=t.credits_posted + bindparam("cp"),
            debits_pending=t.debits_pending + bindparam("dpe"),
            credits_pending=t.credits_pending + bindparam("cpe"))
        conn = await session.connection()
        await conn.execute(stmt, rows)
    if transfers:
        defaults = {"pending_amount": 0, "wallet_id": None, "customer_id": None, "balance_after": 0,
                    "held_after": 0, "hold_id": None, "job_id": "", "request_id": None, "description": "",
                    "reseller_id": None, "commission_rate_bps": 0}
        conn = await session.connection()
        await conn.execute(insert(Transfer), [{**defaults, **row} for row in transfers])
