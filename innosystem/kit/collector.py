"""The cyclic garbage collector's policy for the platform's long-running processes.

Measured with `gc.callbacks` timing during `scripts/probe_submit.py` (docs/performance.md,
session 5): under CPython's defaults a service spent about a third of its CPU in the collector,
mostly in full collections, each walking the 140,000-200,000 objects that imports and start-up
made (protobuf descriptors, SQLAlchemy metadata, gRPC, OpenTelemetry) and each a pause of tens
of milliseconds on the event loop. Those objects live as long as the process. So, once a process
has started: they are frozen out of every later scan (`gc.freeze`), and a young collection runs
per `INNOSYSTEM_GC_THRESHOLD` allocations instead of per 700. A request's objects are freed by
reference counting either way; the collector is there for cycles, and it still collects them.
"""

from __future__ import annotations

import gc
import logging

from innosystem.kit.config import env_int

log = logging.getLogger(__name__)

THRESHOLD = 50_000  # allocations between young collections; CPython's default is 700


def threshold() -> int:
    """The young threshold the process asks for (`INNOSYSTEM_GC_THRESHOLD`); 0 or less: CPython's."""
    return env_int("INNOSYSTEM_GC_THRESHOLD", THRESHOLD)


def settle() -> None:
    """Call once the process has started (imports done, servers listening): freezes what exists
    and raises the young threshold. `INNOSYSTEM_GC_THRESHOLD=0` keeps CPython's defaults."""
    young = threshold()
    if young <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
    log.debug("garbage collector: %d start-up objects frozen, young threshold %d", gc.get_freeze_count(), young)
