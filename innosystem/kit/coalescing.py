"""Coalescing: concurrent callers' items share one run of a batch handler (one billing call, one
commit). At idle an item goes straight through; under load the items queue up while the previous
batch runs and then go together. Each caller gets its own item's outcome (a value or an exception).
With `concurrency` > 1, that many batches may run at once (pipelining: the items that arrive while
one batch commits need not wait for it); with `overlap_below` as well, another batch starts only
while each running one is smaller than that: a small batch under way means light load, where an
item that waited for it would wait for nothing, and a large one means heavy load, where the items
that arrive meanwhile go together next instead of in small batches of their own, each paying a
batch's fixed cost. A handler may answer its callers before it is done (`Answer`): what follows
the answer runs in the same worker before its next batch. A `Backlog` is the same for work nobody
waits for."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
Key = TypeVar("Key", bound=Hashable)


@dataclass
class Answer(Generic[Result]):
    """A batch handler's outcomes, given to the callers at once, and work that need not hold them
    up (`then`, awaited by the worker after the callers are answered, before its next batch: no
    task of its own). A failure of `then` is logged; the callers have their outcomes already."""

    outcomes: Sequence[Result | BaseException]
    then: Awaitable[None]


Handler = Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException] | Answer[Result]]]


class Coalescer(Generic[Item, Result]):
    def __init__(self, handler: Handler[Item, Result],
                 max_batch: int = 200, orphaned: Callable[[Result], Awaitable[None]] | None = None,
                 concurrency: int = 1, overlap_below: int | None = None) -> None:
        self._handler = handler
        self._orphaned = orphaned  # gets a result whose caller went away meanwhile
        self._max = max_batch
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._concurrency = concurrency
        self._running = 0  # workers inside a batch (the others are about to take one or to end)
        self._overlap_below = overlap_below
        self._sizes: list[int] = []  # of the batches running
        self.batches = 0

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        live = sum(1 for w in self._workers if not w.done())  # a finished one may not be discarded yet
        if live <= self._running and live < self._concurrency and (  # every live worker is inside a batch
                self._overlap_below is None or all(n < self._overlap_below for n in self._sizes)):
            worker = asyncio.create_task(self._run())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return await future

    def idle(self) -> bool:
        """Nothing queued and no batch under way: an item now would go alone, at once."""
        return self._queue.empty() and all(w.done() for w in self._workers)

    async def _run(self) -> None:
        while not self._queue.empty():
            batch = [self._queue.get_nowait()]
            while len(batch) < self._max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(i, f) for i, f in batch if not f.cancelled()]
            if not batch:
                continue
            self.batches += 1
            outcomes: Sequence[Any]
            then: Awaitable[None] | None = None
            self._running += 1
            self._sizes.append(len(batch))
            try:
                answer = await self._handler([i for i, _ in batch])
                outcomes, then = (answer.outcomes, answer.then) if isinstance(answer, Answer) else (answer, None)
            except Exception as exc:  # the whole batch failed: every caller gets the error
                outcomes = [exc] * len(batch)
            finally:
                self._running -= 1
                self._sizes.remove(len(batch))
            try:
                await self._answer(batch, outcomes)
            finally:
                if then is not None:  # the callers go on meanwhile: this worker counts as busy
                    self._running += 1
                    self._sizes.append(0)
                    try:
                        await then
                    except Exception:
                        log.exception("the work after a batch of %d failed", len(batch))
                    finally:
                        self._running -= 1
                        self._sizes.remove(0)

    async def _answer(self, batch: list[tuple[Item, asyncio.Future[Result]]], outcomes: Sequence[Any]) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                if future.cancelled() and self._orphaned is not None and not isinstance(outcome, BaseException):
                    await self._orphaned(outcome)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class Lanes(Generic[Key, Item, Result]):
    """A coalescer per key (a caller and what it addresses): only one key's items share a batch,
    so one tenant's item never shares a handler run with another's. Idle lanes beyond `limit` are
    forgotten, least recently used first (a forgotten lane's batches under way still finish)."""

    def __init__(self, handler: Handler[Item, Result], limit: int = 10_000, **options: Any) -> None:
        self._handler, self._limit, self._options = handler, limit, options
        self._lanes: OrderedDict[Key, Coalescer[Item, Result]] = OrderedDict()

    def __call__(self, key: Key) -> Coalescer[Item, Result]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Coalescer(self._handler, **self._options)
            while len(self._lanes) > self._limit:
                self._lanes.popitem(last=False)
        else:
            self._lanes.move_to_end(key)
        return lane


class Backlog(Generic[Item]):
    """Work nobody waits for: items handed to one background task that takes, each turn, every
    item added meanwhile (a burst becomes one run of the handler). With `window` seconds, turns
    come at most once per window: an item that finds the task idle goes at once, and the items
    that follow it within the window go together in the next turn, so a quiet stream of items
    (one every few milliseconds) still goes in few turns. The handler's failure is logged; the
    items of that turn are not tried again (callers keep what they must elsewhere)."""

    def __init__(self, handler: Callable[[list[Item]], Awaitable[None]], what: str, window: float = 0.0) -> None:
        self._handler, self._what, self._window = handler, what, window
        self._items: list[Item] = []
        self._worker: asyncio.Task[None] | None = None

    def add(self, item: Item) -> None:
        self._items.append(item)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())

    async def drained(self) -> None:
        """Wait until every item added so far has been handled."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def _run(self) -> None:
        while self._items:
            items, self._items = self._items, []
            try:
                await self._handler(items)
            except Exception:
                log.exception("%s failed for %d items", self._what, len(items))
            if self._window > 0:
                await asyncio.sleep(self._window)  # what comes meanwhile waits for the next turn
