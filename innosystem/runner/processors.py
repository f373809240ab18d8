"""Processors: what a runner runs for a job type, registered by job type name.

    from innosystem.runner import Registry, JobError

    processors = Registry()

    @processors.processor("resize")          # a function: SYNC (thread pool); a coroutine: ASYNC
    def resize(job):
        return {"width": job.payload["width"] // 2}

    @processors.batch("embed", max_batch_size=32)   # BATCH: up to N jobs of the type in one call
    async def embed(jobs):
        return [{"n": len(j.payload)} for j in jobs]

    processors.external_api("charge")        # EXTERNAL_API: the job type's HTTP endpoint

A processor returns a JSON object (a dict), or `Result` to also report the actual cost; it
fails by raising (`JobError` says whether a retry can help). A job's cancel request cancels an
async processor's task and sets `job.cancelled` for a sync one.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from innosystem.jobs.v1 import job_types_pb2, jobs_pb2
from innosystem.kit.protos import struct_dict


class Kind(IntEnum):
    SYNC = job_types_pb2.ProcessorType.PROCESSOR_TYPE_SYNC
    ASYNC = job_types_pb2.ProcessorType.PROCESSOR_TYPE_ASYNC
    EXTERNAL_API = job_types_pb2.ProcessorType.PROCESSOR_TYPE_EXTERNAL_API
    BATCH = job_types_pb2.ProcessorType.PROCESSOR_TYPE_BATCH


class JobError(Exception):
    """A processor's failure. `retryable=False`: the job fails at once, whatever its retry policy."""

    def __init__(self, message: str, *, type: str = "", retryable: bool = True,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message, self.type, self.retryable, self.details = message, type, retryable, details


class JobCancelled(Exception):
    """Raised by a sync processor that saw `job.cancelled` and stopped."""


@dataclass(frozen=True)
class Result:
    """A success with more than the output: the actual cost (capped by the job type), the units
    of work done (what a PER_UNIT catalog price charges for) and details."""

    result: dict[str, Any] = field(default_factory=dict)
    cost_cents: int | None = None
    details: dict[str, Any] | None = None
    units: int | None = None


# Opens a secure access on the runner's stream: (job, purpose, fields, processor, client_reference).
SecureAccessOpener = Callable[["Job", int, Sequence[str], str, str], Awaitable[Any]]


_EVENTS = threading.Lock()


class Job:
    """One attempt of a job, as a processor sees it."""

    def __init__(self, lease: jobs_pb2.JobLease, *, on_progress: Callable[[Job, int, str], None] | None = None,
                 secure_access: SecureAccessOpener | None = None) -> None:
        self.lease = lease
        self.payload: dict[str, Any] = struct_dict(lease.payload)
        self._cancelled: threading.Event | None = None  # made when first asked for: most jobs never are
        self.cancel_requested = False  # a client asked: the attempt ends CANCELLED
        self.silent = False  # the lease is gone: stop and report nothing
        self._on_progress = on_progress
        self._secure_access = secure_access

    @property
    def cancelled(self) -> threading.Event:
        """Set when the job must stop (a client cancelled it, or its lease was lost)."""
        event = self._cancelled
        if event is None:
            with _EVENTS:  # the loop's thread and the processor's may ask at once: both get one Event
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    @property
    def id(self) -> str:
        return self.lease.job_id

    @property
    def attempt(self) -> int:
        return self.lease.attempt

    @property
    def type_name(self) -> str:
        return self.lease.job_type_name

    def progress(self, percent: int, message: str = "") -> None:
        """Report progress (0 to 100); it reaches the job with the next heartbeat."""
        if self._on_progress is not None:
            self._on_progress(self, max(0, min(100, int(percent))), message)

    @asynccontextmanager
    async def secure_access(self, purpose: int, fields: Sequence[str], *, processor: str = "",
                            client_reference: str = "") -> AsyncIterator[dict[str, Any]]:
        """Decrypted fields ({path: value}) of this job, in memory only, for the block's duration.

        The platform records the access before any key is unwrapped and its completion (duration,
        success) when the block ends. Raises `JobError` (not retryable) when access is denied.
        """
        if self._secure_access is None:
            raise JobError("secure access needs a connected runner", type="SecureAccessUnavailable")
        access = await self._secure_access(self, purpose, fields, processor or self.type_name, client_reference)
        try:
            yield access.values
        except BaseException as exc:
            await access.close(False, type(exc).__name__)
            raise
        else:
            await access.close(True, "")


SyncFn = Callable[[Job], Any]
BatchFn = Callable[[list[Job]], Any]


@dataclass(frozen=True)
class Processor:
    name: str
    kind: Kind
    fn: Callable[..., Any] | None = None
    max_batch_size: int = 0
    # EXTERNAL_API: the processor's own endpoint settings, over the job type's.
    url: str = ""
    max_retries: int | None = None
    timeout_seconds: float | None = None

    @property
    def is_coroutine(self) -> bool:
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)


class Registry:
    """Processors by job type name."""

    def __init__(self) -> None:
        self._by_name: dict[str, Processor] = {}

    def add(self, processor: Processor) -> Processor:
        if not processor.name or len(processor.name) > 200:
            raise ValueError(f"processor name must be 1 to 200 characters, got {processor.name!r}")
        if processor.name in self._by_name:
            raise ValueError(f"a processor for job type {processor.name!r} is already registered")
        self._by_name[processor.name] = processor
        return processor

    def processor(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: a function (SYNC, run in a thread pool) or a coroutine function (ASYNC)."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            kind = Kind.ASYNC if inspect.iscoroutinefunction(fn) else Kind.SYNC
            self.add(Processor(name or fn.__name__, kind, fn))
            return fn
        return register

    def batch(self, name: str | None = None, *, max_batch_size: int = 100
              ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `fn(jobs) -> [result per job]`, called with up to `max_batch_size` jobs."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Processor(name or fn.__name__, Kind.BATCH, fn, max_batch_size=max_batch_size))
            return fn
        return register

    def external_api(self, name: str, *, url: str = "", max_retries: int | None = None,
                     timeout_seconds: float | None = None) -> None:
        """An HTTP endpoint is the processor: the job type's `external_api` settings, or these."""
        self.add(Processor(name, Kind.EXTERNAL_API, url=url, max_retries=max_retries,
                           timeout_seconds=timeout_seconds))

    def get(self, name: str) -> Processor | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def merge(self, other: Registry) -> None:
        for processor in other:
            self.add(processor)


async def call_single(processor: Processor, job: Job, run_sync: Callable[..., Awaitable[Any]]) -> Any:
    """Run a SYNC or ASYNC processor for one job."""
    assert processor.fn is not None
    if processor.is_coroutine:
        return await processor.fn(job)
    return await run_sync(processor.fn, job)


# The default registry the decorators below fill (`innosystem runner --processor module` imports
# a module whose functions use them).
default_registry = Registry()
processor = default_registry.processor
batch = default_registry.batch

