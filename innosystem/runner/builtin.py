"""Built-in processors for demos and tests: `echo`, `sleep`, `sha256`, `fail`."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from innosystem.keymanager.v1 import keymanager_pb2
from innosystem.runner.processors import Job, JobError, Registry

NAMES = ("echo", "sleep", "sha256", "fail")


def echo(job: Job) -> dict[str, Any]:
    """The payload back."""
    return dict(job.payload)


async def sleep(job: Job) -> dict[str, Any]:
    """Sleeps `payload.seconds` (default 1), reporting progress; a cancel request stops it. Says
    when it started and ended (epoch seconds), so overlapping runs can be seen."""
    seconds = float(job.payload.get("seconds", 1.0))
    if not 0 <= seconds <= 86_400:
        raise JobError("payload.seconds must be 0 to 86400", type="ValueError", retryable=False)
    started = time.time()
    steps = max(1, int(seconds * 4))
    for step in range(steps):
        await asyncio.sleep(seconds / steps)
        job.progress(100 * (step + 1) // steps)
    return {"slept": seconds, "started": started, "ended": time.time()}


async def sha256(job: Job) -> dict[str, Any]:
    """SHA-256 of `payload.data` (a string), hex. In an encrypted project it reads `payload.data`
    through secure access (purpose CUSTOMER_INITIATED_JOB), so the access is on the customer's log."""
    if "payload.data" in job.lease.encryption.encrypted_fields:
        async with job.secure_access(keymanager_pb2.PURPOSE_CODE_CUSTOMER_INITIATED_JOB, ["payload.data"]) as fields:
            return _digest(fields.get("payload.data", ""))
    return _digest(job.payload.get("data", ""))


def _digest(data: Any) -> dict[str, Any]:
    if not isinstance(data, str):
        raise JobError("payload.data must be a string", type="TypeError", retryable=False)
    return {"sha256": hashlib.sha256(data.encode()).hexdigest()}


def fail(job: Job) -> dict[str, Any]:
    """Fails attempts 1 to `payload.times` (default: every attempt) with `payload.message` and
    `payload.error_type`, retryable unless `payload.retryable` is false; then succeeds."""
    times = job.payload.get("times")
    if times is None or job.attempt <= int(times):
        raise JobError(str(job.payload.get("message", "failed on purpose")),
                       type=str(job.payload.get("error_type", "DemoFailure")),
                       retryable=bool(job.payload.get("retryable", True)))
    return {"attempt": job.attempt}


def registry(names: tuple[str, ...] = NAMES) -> Registry:
    """A registry with the named built-ins (all four by default)."""
    out = Registry()
    for name in names:
        if name not in NAMES:
            raise ValueError(f"no built-in processor {name!r} (have {', '.join(NAMES)})")
        out.processor(name)(globals()[name])
    return out
