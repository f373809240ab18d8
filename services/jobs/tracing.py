"""A job's own trace: what happens to a job after its submit joins the trace the submit started.

Leases and completions arrive in batches over calls that belong to the runners service's trace,
so each job gets spans of its own, parented by the W3C context stored at submit and linked to
the batch call. A batched downstream call (billing's captures) runs in the job's trace when the
batch is that one job, and otherwise under a span linked to each job's span.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span
from sqlalchemy import Row

from innosystem.jobs.v1 import job_types_pb2 as enums
from services.jobs.models import Job

_tracer = trace.get_tracer("innosystem.jobs")


def _ns(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


def job_span(job: Job | Row[Any], name: str, start: datetime | None = None, status: int | None = None) -> Span:
    """A span in `job`'s trace, linked to the call handling it; the caller ends it."""
    current = trace.get_current_span().get_span_context()
    attributes: dict[str, str | int] = {"innosystem.job.id": str(job.id), "innosystem.job.type": job.job_type_name,
                                        "innosystem.job.attempt": job.attempt_count}
    if status is not None:
        attributes["innosystem.job.status"] = enums.JobStatus.Name(status)  # type: ignore[arg-type]
    return _tracer.start_span(
        f"{name} {job.job_type_name}", context=propagate.extract(job.trace_context or {}),
        links=[Link(current)] if current.is_valid else [], start_time=_ns(start) if start else None,
        attributes=attributes)


def record_waits(jobs: Sequence[Job | Row[Any]], now: datetime) -> None:
    """One `queued` span per leased job, from when it became ready to its lease: the wait shows
    in the job's trace."""
    for job in jobs:
        span = job_span(job, "queued", start=job.queue_time or now)
        span.set_attribute("innosystem.runner.id", job.runner_id)
        span.end(end_time=_ns(now))


@contextmanager
def within(spans: Sequence[Span]) -> Iterator[None]:
    if not spans:
        yield
    elif len(spans) == 1:
        with trace.use_span(spans[0], end_on_exit=False):
            yield
    else:
        with _tracer.start_as_current_span("jobs batch", links=[Link(s.get_span_context()) for s in spans],
                                           attributes={"innosystem.batch.size": len(spans)}):
            yield
