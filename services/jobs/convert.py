"""Job rows ↔ protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from operator import attrgetter
from typing import Any

from google.protobuf import struct_pb2
from sqlalchemy import Row

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.protos import struct_dict, timestamp
from services.jobs.models import Job, JobAttempt, JobStatusChange, NewJob

# The text of a customer's, a project's or a job type's id: a batch of leases names the same few.
owner_text = lru_cache(maxsize=4096)(str)


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def plain(value: struct_pb2.Struct) -> dict[str, Any]:
    """Raises ValueError on a NaN or infinite number (JSON cannot hold one)."""
    return struct_dict(value)


def retry_policy_pb(job: Job | NewJob) -> types_pb.RetryPolicy:
    return types_pb.RetryPolicy(max_attempts=job.retry_max_attempts,
                                initial_interval_seconds=job.retry_initial_interval_seconds,
                                backoff_multiplier=job.retry_backoff_multiplier,
                                max_interval_seconds=job.retry_max_interval_seconds,
                                non_retryable_error_types=list(job.non_retryable_error_types or ()))


def error_pb(error: dict[str, Any] | None) -> pb.JobError | None:
    if not error:
        return None
    return pb.JobError(message=error.get("message", ""), type=error.get("type", ""),
                       non_retryable=bool(error.get("non_retryable")), details=struct(error.get("details")))


def attempt_pb(row: JobAttempt) -> pb.JobAttempt:
    return pb.JobAttempt(attempt=row.attempt, lease_id=str(row.lease_id), runner_id=row.runner_id,
                         outcome=row.outcome,  # type: ignore[arg-type]
                         start_time=timestamp(row.start_time), end_time=timestamp(row.end_time),
                         error=error_pb(row.error), actual_cost_cents=row.actual_cost_cents,
                         details=struct(row.details))


def change_pb(row: JobStatusChange) -> pb.JobStatusChange:
    return pb.JobStatusChange(status=row.status, time=timestamp(row.time),  # type: ignore[arg-type]
                              reason=row.reason, attempt=row.attempt)


def encryption_pb(job: Job | NewJob | Row[Any]) -> pb.JobEncryption | None:
    enc = job.encryption
    if not enc:
        return None
    return pb.JobEncryption(key_id=enc.get("key_id", ""), encrypted_fields=list(enc.get("encrypted_fields", ())))


def job_pb(job: Job | NewJob, *, full: bool = False, attempts: Sequence[JobAttempt] = (),
           history: Sequence[JobStatusChange] = (), pending: pb.PendingInfo | None = None) -> pb.Job:
    running = job.lease_id is not None and job.status == types_pb.JOB_STATUS_RUNNING
    progress = None
    if running and job.progress:
        p = job.progress
        progress = pb.JobProgress(percent=int(p.get("percent", 0)), message=p.get("message", ""),
                                  details=struct(p.get("details")))
        if p.get("update_time"):
            progress.update_time.FromJsonString(p["update_time"])
    return pb.Job(
        id=str(job.id), customer_id=str(job.customer_id), project_id=str(job.project_id),
        job_type_id=str(job.job_type_id), job_type_name=job.job_type_name,
        status=job.status, priority=job.priority,  # type: ignore[arg-type]
        retry_policy=retry_policy_pb(job), persistence_policy=job.persistence_policy,  # type: ignore[arg-type]
        payload=struct(job.payload) if full else None, result=struct(job.result) if full else None,
        error=job.error, error_type=job.error_type, runner_id=job.runner_id, attempt_count=job.attempt_count,
        next_attempt_time=timestamp(job.next_attempt_time), cost_cents=job.cost_cents,
        estimated_cost_cents=job.estimated_cost_cents, currency_code=job.currency_code,
        create_time=timestamp(job.create_time), schedule_time=timestamp(job.schedule_time),
        start_time=timestamp(job.start_time), complete_time=timestamp(job.complete_time),
        update_time=timestamp(job.update_time), request_id=job.request_id, cancel_requested=job.cancel_requested,
        pending_info=pending,
        lease=pb.Lease(lease_id=str(job.lease_id), runner_id=job.runner_id, attempt=job.attempt_count,
                       start_time=timestamp(job.lease_start_time),
                       expire_time=timestamp(job.lease_expire_time)) if running else None,
        progress=progress, dead_lettered=job.dead_lettered, dead_letter_time=timestamp(job.dead_letter_time),
        encryption=encryption_pb(job), trace_context=dict(job.trace_context or {}),
        attempts=[attempt_pb(a) for a in attempts] if full else [],
        status_history=[change_pb(c) for c in history] if full else [],
        price_id=((job.settings or {}).get("price") or {}).get("id", ""),
    )


# A batch's just-submitted jobs differ in little but their ids: `add_jobs` builds one message per
# shape (all that `job_pb` shows of a job but its id and request id) and copies it, under half the
# CPU of building each. A type's settings (shared by a call's jobs of that type) and the dicts no
# new job has are compared by identity, the rest by value. What `job_pb` does not show is left out.
_OWN = ("id", "request_id")
_UNSHOWN = ("payload", "result", "hold_id", "hold_expire_time", "queue_time")
_BY_IDENTITY = ("settings", "progress", "encryption")
_LISTED = ("non_retryable_error_types", "trace_context")
_BY_VALUE = attrgetter(*(k for k in NewJob.__slots__ if k not in _OWN + _UNSHOWN + _BY_IDENTITY + _LISTED))
_IDENTITIES = attrgetter(*_BY_IDENTITY)


def add_jobs(target: Any, jobs: Sequence[Job | NewJob]) -> None:
    """`job_pb` of each job (full=False) added to `target` (a repeated Job field: built in place,
    not built apart and copied in, 6.2 against 3.8 ms for 1,000), sharing the work between jobs of
    one shape."""
    shapes: dict[tuple[Any, ...], pb.Job] = {}
    for job in jobs:
        if not isinstance(job, NewJob):
            target.add().CopyFrom(job_pb(job))
            continue
        key = (_BY_VALUE(job), tuple(job.non_retryable_error_types or ()), tuple((job.trace_context or {}).items()),
               *map(id, _IDENTITIES(job)))
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = job_pb(job)
        m = target.add()
        m.CopyFrom(shape)
        m.id, m.request_id = str(job.id), job.request_id


def lease_pb(job: Job | NewJob | Row[Any]) -> pb.JobLease:
    st = job.settings
    ext = st.get("external_api")
    return pb.JobLease(
        job_id=str(job.id), lease_id=str(job.lease_id), runner_id=job.runner_id, attempt=job.attempt_count,
        expire_time=timestamp(job.lease_expire_time), customer_id=owner_text(job.customer_id),
        project_id=owner_text(job.project_id), job_type_id=owner_text(job.job_type_id),
        job_type_name=job.job_type_name,
        processor_type=st.get("processor_type", 0), priority=job.priority,  # type: ignore[arg-type]
        payload=struct(job.payload or {}), encryption=encryption_pb(job), trace_context=dict(job.trace_context or {}),
        timeout_seconds=st.get("timeout_seconds", 0),
        external_api=types_pb.ExternalApiConfig(**ext) if ext else None,
        max_batch_size=st.get("max_batch_size", 0), create_time=timestamp(job.create_time),
    )
