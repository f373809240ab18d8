"""Group commit: many concurrent ledger operations share one PostgreSQL transaction.

Callers submit an operation (`fn(tx)`); one writer task takes whatever is queued (up to
`max_batch`), runs the operations one after another in one transaction, sends the batch's
writes (the ledger's, the platform accounts' counter changes, the journal rows) with its COMMIT
in one round trip, and only then resolves every caller's future: an answer is never given before its commit.
At idle a single operation goes straight through; under load the queue fills while the previous
batch commits, so a hot wallet is not one commit per job.

Contract for operations: a refusal is a DomainError raised before the operation wrote anything
(or after undoing what it wrote), so the others still commit. Any other exception may have left
the transaction unusable: the whole batch is rolled back and every caller gets the error (the
callers' Redis undo then runs; nothing half-done is ever committed). There is no SAVEPOINT per
item: two more round trips each, on the hottest path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from psycopg import sql
from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.db import Conn, Database, Writes, new_id
from innosystem.kit.errors import DomainError
from services.billing.models import Account, Transfer

log = logging.getLogger(__name__)

COUNTERS = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
# Deadlock and serialization failure: the batch did nothing and can simply run again.
RETRYABLE = {"40P01", "40001"}
RETRIES = 3
QUIET_SECONDS = 0.01  # see `GroupCommit.idle`


@dataclass
class Tx:
    """One operation's view of the batch transaction."""

    # A session when the batch has operations (they use the ORM); a batch of bulk items alone runs
    # on the hot paths' pool (`Database.transaction`), whose statements take either.
    conn: Conn
    # Writes sent with the batch's COMMIT in one round trip (see `kit.db.Writes`).
    writes: Writes = field(default_factory=Writes)
    deltas: dict[uuid.UUID, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    transfers: list[dict[str, Any]] = field(default_factory=list)
    # Wallet events stored by this operation, published after the commit.
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def session(self) -> AsyncSession:
        """The batch's ORM session: an operation's batch always has one."""
        if not isinstance(self.conn, AsyncSession):
            raise TypeError("a batch of bulk items alone has no ORM session")
        return self.conn

    def defer(self, account_id: uuid.UUID, debits_posted: int = 0, credits_posted: int = 0,
              debits_pending: int = 0, credits_pending: int = 0) -> None:
        """Counter changes of a platform account, applied once per batch (no per-item hot-row update)."""
        d = self.deltas[account_id]
        d[0] += debits_posted
        d[1] += credits_posted
        d[2] += debits_pending
        d[3] += credits_pending

    def journal(self, **row: Any) -> None:
        """A journal row, written with the batch (an id of its own unless it names one)."""
        if "id" not in row:
            row["id"] = new_id()
        self.transfers.append(row)


Operation = Callable[[Tx], Awaitable[Any]]
# Runs the batch's bulk items (see ledger.apply): one outcome per item, a DomainError for a refusal.
Bulk = Callable[[Conn, Tx, list[Any]], Awaitable[list[Any]]]
# Told the wallet events of each committed batch (alerts.Publisher).
OnEvents = Callable[[list[dict[str, Any]]], Awaitable[None]]


class GroupCommit:
    def __init__(self, db: Database, max_batch: int = 256, bulk: Bulk | None = None,
                 on_events: OnEvents | None = None) -> None:
        self.db = db
        self.max_batch = max_batch
        self.bulk = bulk
        self.on_events = on_events
        # (operation or bulk item, is it a bulk item, the caller's future)
        self._queue: asyncio.Queue[tuple[Any, bool, asyncio.Future[Any]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.operations = 0
        self._busy = False  # a batch is under way
        self._ended = 0.0  # when the last batch ended (monotonic)

    @property
    def idle(self) -> bool:
        """Light load: no batch under way or waiting, and none for QUIET_SECONDS. What is queued now
        begins at once and is alone in its batch (right after a batch, under a steady load, the
        next ones are about to come and are better taken together)."""
        return not self._busy and self._queue.empty() and time.monotonic() - self._ended >= QUIET_SECONDS

    async def run(self, fn: Operation) -> Any:
        """Run `fn(tx)` in the next batch; its result once committed."""
        return await self._enqueue(fn, False)

    async def submit(self, item: Any) -> Any:
        """Add a bulk item to the next batch; its outcome once committed (a refusal is raised)."""
        return await self._enqueue(item, True)

    async def submit_many(self, items: list[Any]) -> list[Any]:
        """Add bulk items to the next batches together; each one's outcome once committed (a
        refusal as its exception, in the list). No task per item: a batch call's items share this one."""
        return list(await self.enqueue_many(items))

    def enqueue_many(self, items: list[Any]) -> asyncio.Future[list[Any]]:
        """`submit_many`, queued now: the caller may do other work while the batch starts."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, True, future))
        if items and (self._worker is None or self._worker.done()):
            self._worker = asyncio.create_task(self._work())
        return asyncio.gather(*futures, return_exceptions=True)

    async def _enqueue(self, entry: Any, is_item: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((entry, is_item, future))
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
            live = [entry for entry in batch if not entry[2].cancelled()]
            if live:
                self._busy = True
                try:
                    await self._commit(live)
                finally:
                    self._busy, self._ended = False, time.monotonic()

    async def _commit(self, batch: list[tuple[Any, bool, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        events: list[dict[str, Any]] = []
        for attempt in range(1, RETRIES + 1):
            try:
                outcomes, events = await self._attempt(batch)
                break
            except DBAPIError as exc:
                # Another replica's batch locked the same rows in another order: run ours again.
                if getattr(exc.orig, "sqlstate", None) in RETRYABLE and attempt < RETRIES:
                    log.warning("group commit retried after %s", getattr(exc.orig, "sqlstate", ""))
                    continue
                self._fail(batch, exc)
                return
            except Exception as exc:
                self._fail(batch, exc)
                return
        self.batches += 1
        self.operations += len(batch)
        if events and self.on_events is not None:
            await self.on_events(events)
        for fut, ok, value in outcomes:
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    @staticmethod
    def _fail(batch: list[tuple[Any, bool, asyncio.Future[Any]]], exc: Exception) -> None:
        log.error("group commit of %d operations failed: %s", len(batch), exc)
        for _, _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def _attempt(self, batch: list[tuple[Any, bool, asyncio.Future[Any]]]
                       ) -> tuple[list[tuple[asyncio.Future[Any], bool, Any]], list[dict[str, Any]]]:
        """Run the batch in one transaction and commit it; the outcome per caller (nothing resolved
        yet) and the wallet events it stored."""
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        events: list[dict[str, Any]] = []
        # A batch of hold items alone (reserves, captures, releases: every job's) needs no ORM
        # session: it runs on the hot paths' pool, without the session's cost per transaction.
        items_only = all(is_item for _, is_item, _ in batch)
        async with (self.db.transaction() if items_only else self.db.session()) as conn:
            writes = Writes()
            deltas: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            transfers: list[dict[str, Any]] = []
            for fn, is_item, fut in batch:
                if is_item:
                    continue
                tx = Tx(conn, writes)
                try:
                    result = await fn(tx)
                except DomainError as exc:
                    outcomes.append((fut, False, exc))
                    continue
                _merge(deltas, transfers, tx)
                events += tx.events
                outcomes.append((fut, True, result))
            items = [(entry, fut) for entry, is_item, fut in batch if is_item]
            if items:
                assert self.bulk is not None
                tx = Tx(conn, writes)
                results = await self.bulk(conn, tx, [entry for entry, _ in items])
                _merge(deltas, transfers, tx)
                events += tx.events
                outcomes += [(fut, not isinstance(r, DomainError), r)
                             for (_, fut), r in zip(items, results, strict=True)]
            await write_totals(conn, writes, deltas, transfers)
            await writes.commit(conn)
        return outcomes, events


def _merge(deltas: dict[uuid.UUID, list[int]], transfers: list[dict[str, Any]], tx: Tx) -> None:
    for account_id, d in tx.deltas.items():
        acc = deltas[account_id]
        for i in range(4):
            acc[i] += d[i]
    transfers.extend(tx.transfers)


_ACCOUNTS = cast(Table, Account.__table__)
_ADD_COUNTERS = sql.SQL(
    "UPDATE {} SET debits_posted = debits_posted + %(dp)s, credits_posted = credits_posted + %(cp)s, "
    "debits_pending = debits_pending + %(dpe)s, credits_pending = credits_pending + %(cpe)s WHERE id = %(aid)s"
).format(sql.Identifier(str(_ACCOUNTS.schema), _ACCOUNTS.name)).as_string()


async def write_totals(conn: Conn, writes: Writes, deltas: dict[uuid.UUID, list[int]],
                 transfers: list[dict[str, Any]]) -> None:
    """The platform accounts' counters and the journal rows of the batch, with its commit."""
    writes.executemany(_ADD_COUNTERS, [{"aid": k, "dp": d[0], "cp": d[1], "dpe": d[2], "cpe": d[3]}
                                       for k, d in sorted(deltas.items()) if any(d)])
    if transfers:
        defaults = {"pending_amount": 0, "wallet_id": None, "customer_id": None, "balance_after": 0,
                    "held_after": 0, "hold_id": None, "job_id": "", "request_id": None, "description": "",
                    "reseller_id": None, "commission_rate_bps": 0}
        await writes.insert(conn, cast(Table, Transfer.__table__), [{**defaults, **row} for row in transfers])
