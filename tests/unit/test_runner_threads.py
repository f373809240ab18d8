"""The runner's processor threads (innosystem/runner/threads.py): results and exceptions come back
to the loop, concurrent calls run on separate threads up to the size, in their caller's context,
a cancelled call's result is dropped, and shutdown ends the threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from innosystem.runner.threads import Threads

_JOB: contextvars.ContextVar[str] = contextvars.ContextVar("job", default="")


async def test_results_and_exceptions_come_back_to_the_loop() -> None:
    threads = Threads(4, "t")
    try:
        assert await threads.run(lambda x: x * 2, 21) == 42

        def boom(_: object) -> None:
            raise ValueError("bad payload")

        with pytest.raises(ValueError, match="bad payload"):
            await threads.run(boom, None)

        def exits(_: object) -> None:
            raise SystemExit(3)

        with pytest.raises(RuntimeError, match="SystemExit"):
            await threads.run(exits, None)
    finally:
        threads.shutdown()


async def test_concurrent_calls_run_side_by_side_up_to_the_size() -> None:
    threads = Threads(3, "t")
    inside, release = threading.Semaphore(0), threading.Event()
    names: list[str] = []

    def wait(_: object) -> str:
        names.append(threading.current_thread().name)
        inside.release()
        release.wait(10)
        return threading.current_thread().name

    try:
        calls = [threads.run(wait, None) for _ in range(5)]
        for _ in range(3):  # three run at once; the other two wait for a free thread
            assert await asyncio.to_thread(inside.acquire, True, 10)
        assert not inside.acquire(timeout=0.2)
        release.set()
        done = await asyncio.gather(*calls)
        assert len(set(done)) == 3 and set(done) <= {"t_0", "t_1", "t_2"}, done
    finally:
        threads.shutdown()


async def test_a_cancelled_call_is_dropped_and_shutdown_ends_the_threads() -> None:
    threads = Threads(1, "t")
    started, release = threading.Event(), threading.Event()

    def slow(_: object) -> str:
        started.set()
        release.wait(10)
        return "late"

    call = threads.run(slow, None)
    assert await asyncio.to_thread(started.wait, 10)
    call.cancel()
    release.set()
    assert await threads.run(lambda _: "next", None) == "next"  # the late result went nowhere
    assert call.cancelled()
    threads.shutdown()
    for thread in threads._threads:
        await asyncio.to_thread(thread.join, 10)
    assert not any(t.is_alive() for t in threads._threads)


async def test_a_call_runs_in_its_callers_context() -> None:
    """What the caller made current (the job's span, its trace context) is current in the
    processor, each call its own caller's; what the call changes stays in the thread's copy."""
    threads = Threads(2, "t")

    def seen(_: object) -> str:
        value = _JOB.get()
        _JOB.set("changed in the thread")
        return value

    async def job(name: str) -> str:
        _JOB.set(name)
        return await threads.run(seen, None)

    try:
        assert await asyncio.gather(job("a"), job("b"), job("c")) == ["a", "b", "c"]
        assert _JOB.get() == ""
    finally:
        threads.shutdown()
