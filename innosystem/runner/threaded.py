"""A runner in a background thread with its own event loop: for demos, benchmarks and tests
that drive the platform synchronously.

    with RunnerThread(Runner(target, token, builtin.registry(), max_concurrent_jobs=8)) as thread:
        thread.wait_connected()
        ...                      # submit jobs; they run here
    # leaving the block drains the runner (running jobs finish) and joins the thread
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from innosystem.runner.client import Runner


class RunnerThread:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._connected = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="innosystem-runner", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            watcher = asyncio.create_task(self._watch())
            try:
                await self.runner.run()
            finally:
                watcher.cancel()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the owner by join()
            self.error = exc
        finally:
            self._ready.set()

    async def _watch(self) -> None:
        await self.runner.connected.wait()
        self._connected.set()

    def start(self) -> RunnerThread:
        self._thread.start()
        self._ready.wait()
        return self

    def wait_connected(self, timeout: float = 30.0) -> bool:
        return self._connected.wait(timeout)

    def drain(self, grace_seconds: float | None = None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.runner.drain, grace_seconds)

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.runner.stop)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> RunnerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.drain()
        self.join(self.runner.drain_grace_seconds + 10)
