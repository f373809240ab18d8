"""Per-tenant bounds for the keys service's background work (abandon sweeper, rewrap, webhook
delivery).

Each duty is a loop over items that belong to customers, and most items wait on something the
customer controls: its key manager (rewrap), its webhook (delivery), its access-log chain (the
sweeper appends to it). Done one after another, one customer's hanging key manager or webhook
stalls every other customer's work behind it. So a pass runs its items through a `TenantGate`:

- customers side by side, at most `concurrency` items in flight in the process;
- at most `per_customer` items of one customer in flight, whatever duty they belong to (a
  semaphore per customer, shared by the duties);
- each item under its own time limit (`asyncio.timeout`), on top of the call's own timeout;
- a pass waits for a customer's turn only until its `budget` runs out: the items it did not start
  are left for the next pass (their claims expire), so one customer's backlog cannot hold the
  pass, and with it the next pass of everyone else.

An item that fails or times out is logged with its customer and skipped; it never fails the pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    done: int = 0
    failed: int = 0
    timed_out: int = 0
    deferred: int = 0


class TenantGate:
    def __init__(self, concurrency: int = 16, per_customer: int = 2) -> None:
        self._all = asyncio.Semaphore(max(1, concurrency))
        self._per_customer = max(1, per_customer)
        self._customers: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    def _semaphore(self, customer: str) -> asyncio.Semaphore:
        sem = self._customers.get(customer)
        if sem is None:
            sem = self._customers[customer] = asyncio.Semaphore(self._per_customer)
        self._users[customer] = self._users.get(customer, 0) + 1
        return sem

    def _release(self, customer: str) -> None:
        # Forget a customer's semaphore once nobody waits on it: the map stays as small as the
        # set of customers with work in flight.
        self._users[customer] -= 1
        if not self._users[customer]:
            del self._users[customer]
            del self._customers[customer]

    async def run(self, what: str, items: Iterable[tuple[str, float, Callable[[], Awaitable[object]]]],
                  budget: float) -> Outcome:
        """Run `(customer, time limit in seconds, work)` items; see the module docstring."""
        out = Outcome()
        deadline = time.monotonic() + budget

        async def one(customer: str, limit: float, work: Callable[[], Awaitable[object]]) -> None:
            sem = self._semaphore(customer)
            try:
                try:
                    # Waiting for this customer's turn (and a free slot) is bounded by the budget.
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await sem.acquire()
                        try:
                            await self._all.acquire()
                        except BaseException:
                            sem.release()
                            raise
                except TimeoutError:
                    out.deferred += 1
                    return
                try:
                    async with asyncio.timeout(limit):
                        await work()
                    out.done += 1
                except TimeoutError:
                    out.timed_out += 1
                    log.warning("%s for customer %s: no result within %.1f s; retried later", what, customer, limit,
                                extra={"customer_id": customer})
                except Exception as exc:  # one customer's failure is that item's alone
                    out.failed += 1
                    log.warning("%s for customer %s failed: %s", what, customer, exc, extra={"customer_id": customer})
                finally:
                    self._all.release()
                    sem.release()
            finally:
                self._release(customer)

        await asyncio.gather(*(one(c, limit, work) for c, limit, work in items))
        return out
