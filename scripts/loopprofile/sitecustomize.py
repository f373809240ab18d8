"""The event loop's CPU by task, for `probe_dispatch.py --loop-profile` (docs/performance.md).

Python imports this module at start when its folder is on PYTHONPATH. With INNOSYSTEM_LOOP_PROFILE
naming a folder, every asyncio callback is timed with the thread's CPU clock between that folder's
`start` and `stop` files, by what it runs (a task's coroutine, else the callback's name): from
the moment `<pid>.on` appears there, until `<pid>.json` holds the process's command line and
{name: [callbacks, CPU seconds, the longest callback's wall seconds]}. A
sampling profiler (py-spy) spreads a light-load job's CPU over the whole stack; this says which
task's steps it is, and how many steps a job costs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

FOLDER = os.environ.get("INNOSYSTEM_LOOP_PROFILE")


def _name(handle: Any) -> str:
    callback = handle._callback
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(owner, "get_coro"):  # a task's step
        coro = owner.get_coro()
        what = "task " + str(getattr(coro, "__qualname__", None) or type(coro).__name__)
        frame = getattr(coro, "cr_frame", None)
        handler = getattr(frame.f_locals.get("self"), "_handler", None) if frame is not None else None
        if handler is not None:  # a coalescer's worker: which batches it runs
            what += f" [{getattr(handler, '__qualname__', type(handler).__name__)}]"
        named = owner.get_name()
        return what if named.startswith("Task-") else f"{what} ({named})"  # a name its creator gave it
    return str(getattr(callback, "__qualname__", None) or type(callback).__name__)


def _install(folder: Path) -> None:
    import asyncio.events

    stats: dict[str, list[float]] = {}
    on = threading.Event()
    run = asyncio.events.Handle._run
    clock, wall = time.thread_time, time.perf_counter

    def timed(handle: Any) -> None:
        if not on.is_set():
            run(handle)
            return
        began, since = clock(), wall()
        try:
            run(handle)
        finally:
            took = wall() - since  # a stall: what held the loop (CPU, or a blocking call)
            entry = stats.setdefault(_name(handle), [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += clock() - began
            entry[2] = max(entry[2], took)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def window() -> None:
        while not (folder / "start").exists():
            time.sleep(0.05)
        on.set()
        (folder / f"{os.getpid()}.on").touch()  # for whoever waits until the timing has begun
        while not (folder / "stop").exists():
            time.sleep(0.05)
        on.clear()
        time.sleep(0.1)  # a callback under way when the window closed has ended
        taken = dict(stats)  # one C-level copy: the loop may still add names meanwhile
        (folder / f"{os.getpid()}.json").write_text(json.dumps({"argv": sys.argv, "stats": taken}))

    threading.Thread(target=window, name="loop-profile", daemon=True).start()


if FOLDER:
    _install(Path(FOLDER))
