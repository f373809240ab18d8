"""A job's own trace: what happens to a job after its submit joins the trace the submit started.

Leases and completions arrive in batches over calls that belong to the runners service's trace.
A batch of one job (the idle path) gets spans of its own in the job's trace, parented by the W3C
context stored at submit and linked to the batch call; its downstream calls (billing's capture)
run in that trace too. A larger batch gets one span linked to each job's trace: the cost of
tracing stays per batch under load, and each job's trace still leads to the batch that handled it.
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
from innosystem.kit.telemetry import links_to
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


def for_batch(jobs: Sequence[Job | Row[Any]], name: str, statuses: Sequence[int] = (),
              start: datetime | None = None) -> list[Span]:
    """Spans for one step of a batch of jobs (the caller ends them): one in the job's own trace when
    the batch is one job, else one span linked to every job's trace."""
    if len(jobs) == 1:
        return [job_span(jobs[0], name, start, statuses[0] if statuses else None)]
    if not jobs:
        return []
    return [_tracer.start_span(f"{name} batch", links=links_to(j.trace_context for j in jobs),
                               start_time=_ns(start) if start else None,
                               attributes={"innosystem.batch.size": len(jobs)})]


def record_waits(jobs: Sequence[Job | Row[Any]], now: datetime) -> None:
    """A `queued` span from when the job became ready to its lease: in the job's trace for a lease
    of one job, else one span for the batch linked to each job's trace."""
    if len(jobs) == 1:
        span = job_span(jobs[0], "queued", start=jobs[0].queue_time or now)
        span.set_attribute("innosystem.runner.id", jobs[0].runner_id)
        span.end(end_time=_ns(now))
    elif jobs:
        first = min((j.queue_time or now for j in jobs), default=now)
        for span in for_batch(jobs, "queued", start=first):
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
