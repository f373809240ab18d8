"""The benchmark's processor: `echo` that also says when it started (wall clock, same machine),
so dispatch latency is measured from the submit call to the processor's first line."""

from __future__ import annotations

import time
from typing import Any

from innosystem.runner import Job


def echo(job: Job) -> dict[str, Any]:
    started = time.time()
    return {**job.payload, "processorStart": started}
