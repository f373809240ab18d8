"""`probe_dispatch.py --loop-profile`'s hook (scripts/loopprofile/sitecustomize.py): in a process
started with it on PYTHONPATH, the event loop's callbacks between the folder's `start` and `stop`
files are counted and timed by the task they ran, with the longest callback of each (a stall),
and written to `<pid>.json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROGRAM = """
import asyncio, sys, time
from pathlib import Path
from innosystem.kit.coalescing import Coalescer
folder = Path(sys.argv[1])

async def double(items):
    await asyncio.sleep(0)
    return [2 * i for i in items]

async def spin(steps):
    for _ in range(steps):
        sum(range(2000))
        await asyncio.sleep(0)

async def hold(seconds):
    time.sleep(seconds)  # a blocking call: the loop stalls, on the wall clock, not the CPU

async def until(pattern):
    for _ in range(600):
        if list(folder.glob(pattern)):
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"no {pattern} in 30 s")

async def main():
    await spin(5)  # before the window: not counted
    (folder / "start").touch()
    await until("*.on")  # the timing has begun
    await asyncio.gather(spin(50), asyncio.create_task(spin(50), name="named"))
    assert await asyncio.gather(*(Coalescer(double).submit(i) for i in range(3))) == [0, 2, 4]
    await asyncio.create_task(hold(0.03))
    (folder / "stop").touch()
    await until("*.json")  # the report is written

asyncio.run(main())
"""


def test_callbacks_are_counted_and_timed_by_task_inside_the_window(tmp_path: Path) -> None:
    env = {**os.environ, "INNOSYSTEM_LOOP_PROFILE": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts" / "loopprofile"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", _PROGRAM, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert report["argv"] == ["-c", str(tmp_path)], done.stderr
    steps, cpu, longest = report["stats"]["task spin"]
    assert 50 <= steps < 55  # the gathered task's steps, not the five before the window
    assert cpu > 0
    assert longest > 0
    assert report["stats"]["task hold"][2] >= 0.03  # the stall, in the wall clock's seconds
    assert report["stats"]["task spin (named)"][0] >= 50  # a task its creator named is told apart
    assert report["stats"]["task Coalescer._run [double]"][0] >= 3  # a coalescer's worker, by its batches' handler


def test_without_the_setting_the_loop_is_left_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "INNOSYSTEM_LOOP_PROFILE"}
    show = "import asyncio.events; print(asyncio.events.Handle._run.__qualname__)"
    with_hook = {**env, "PYTHONPATH": str(ROOT / "scripts" / "loopprofile")}
    plain = subprocess.run([sys.executable, "-c", show], env=with_hook, capture_output=True, text=True, timeout=60,
                           check=True)
    assert plain.stdout.strip() == "Handle._run"
    with_hook["INNOSYSTEM_LOOP_PROFILE"] = "/nonexistent"
    hooked = subprocess.run([sys.executable, "-c", show], env=with_hook, capture_output=True, text=True, timeout=60,
                            check=True)
    assert hooked.stdout.strip() != "Handle._run"  # the same check sees the hook when it is asked for
