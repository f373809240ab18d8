"""How soon a service's event loop lets another thread of its process have the GIL.

A service process runs its event loop beside gRPC's C-core threads, which take the GIL to hand
each call's bytes over to the loop. A thread that asks for the GIL waits until its holder drops
it, which a thread busy in Python does only every switch interval: 5 ms by CPython's default.
Where the loop is busy (at 200 single submits a second the shared process's loop runs about
two thirds of the time), a call can wait that long at each hand-over. With 0.5 ms, in sixteen
alternated pairs at 200 submits/s (`scripts/probe_dispatch.py`), the processor started sooner at
the median in thirteen and at the 90th percentile in eleven, and the shared process spent less
CPU a job in most (docs/performance.md, session 28). Services only: a runner's processor threads
share their GIL with its loop, where a shorter interval means more switching between them, and
the gateway showed no change beyond the noise (three pairs of `scripts/probe_submit.py`).
"""

from __future__ import annotations

import logging
import sys

from innosystem.kit.config import env_float

log = logging.getLogger(__name__)

INTERVAL_MS = 0.5  # CPython's default is 5 ms


def interval_ms() -> float:
    """The interval the process asks for (`INNOSYSTEM_SWITCH_INTERVAL_MS`); 0 or less: CPython's."""
    return env_float("INNOSYSTEM_SWITCH_INTERVAL_MS", INTERVAL_MS)


def settle() -> None:
    """Call once the process has started: sets the switch interval."""
    ms = interval_ms()
    if ms > 0:
        sys.setswitchinterval(ms / 1000)
        log.debug("switch interval %.3f ms", ms)
