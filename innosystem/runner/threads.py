"""The threads that run synchronous processors, handing each result back to the event loop.

A call runs in a copy of its caller's context (contextvars), as `asyncio.to_thread` runs one: the
job's span, or its trace context, is current inside the processor, so its logs carry the job's
trace id and the spans it starts (an instrumented HTTP client's) are children of the job's.

Cheaper per call than `loop.run_in_executor` on a ThreadPoolExecutor, which a runner paid on
every job: no concurrent Future with its Condition, no callback chained from it to an asyncio
future. And the results that finish while the loop is busy come back with one wake-up between
them, not one write to the loop's self-pipe each.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Callable[[Any], Any], Any]


class Threads:
    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)  # released by a thread each time it finishes a call
        self._done: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False

    def run(self, fn: Callable[[Any], Any], arg: Any) -> asyncio.Future[Any]:
        """`fn(arg)` on one of the threads; its result (or exception) as a future of the running
        loop. Cancelling the future does not stop the call, its result is then dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((loop, future, contextvars.copy_context(), fn, arg))
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return future

    def shutdown(self) -> None:
        """The threads end after their current call; calls not started yet are dropped."""
        while True:
            try:
                self._calls.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._calls.put(None)

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, context, fn, arg = call
            value = error = None
            try:
                value = context.run(fn, arg)
            except Exception as exc:
                error = exc
            except BaseException as exc:  # SystemExit and the like: the job fails, the runner goes on
                error = RuntimeError(f"the processor raised {type(exc).__name__}: {exc}")
            with self._lock:
                self._done.append((future, value, error))
                wake, self._wake_pending = not self._wake_pending, True
            if wake:
                try:
                    loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody waits for the result any more
                    pass
            self._idle.release()

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, deque()
            self._wake_pending = False
        for future, value, error in done:
            if future.done():  # cancelled meanwhile
                continue
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
