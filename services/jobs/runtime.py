"""What the job use cases share: their dependencies, the clock, queue names and status changes."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.kit.db import Database
from innosystem.kit.freshness import ChangeTokens
from services.jobs.billing import Billing
from services.jobs.config import JobsConfig
from services.jobs.encryption import Encryptor
from services.jobs.handoff import IdlePolls
from services.jobs.leasecopy import LeaseCopies
from services.jobs.models import Job, JobStatusChange
from services.jobs.queue import JobQueue
from services.jobs.retry import Policy
from services.jobs.signals import Signals

PENDING, RUNNING, SUCCEEDED = enums.JOB_STATUS_PENDING, enums.JOB_STATUS_RUNNING, enums.JOB_STATUS_SUCCEEDED
FAILED, CANCELLED, SCHEDULED = enums.JOB_STATUS_FAILED, enums.JOB_STATUS_CANCELLED, enums.JOB_STATUS_SCHEDULED
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
WAITING = frozenset({PENDING, SCHEDULED})

_QUEUE_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "|": "%7C", "{": "%7B", "}": "%7D", ",": "%2C", "~": "%7E"})


def queue_name(type_name: str, required_tags: Sequence[str], owner: object = None) -> str:
    """The Redis queue of a type name with its required tags: runners of that name whose tags
    include them all lease from it; jobs of equal name and tags share it (fair share between customers).

    `owner`: the customer of a customer's own type (None for a catalog type). Its jobs wait in a
    queue of that customer alone, `@<customer>/<name>…` (a type name cannot start with `@`), which
    only that customer's runners lease from: shared runners serve catalog types only."""
    name = type_name.translate(_QUEUE_ESCAPES)
    tags = sorted(set(required_tags))
    base = name if not tags else name + "~" + ",".join(t.translate(_QUEUE_ESCAPES) for t in tags)
    return base if owner is None else f"@{owner}/{base}"


def priority_name(priority: int) -> str:
    return enums.PriorityLevel.Name(priority)  # type: ignore[arg-type]


def status_name(status: int) -> str:
    return enums.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()  # type: ignore[arg-type]


def utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def policy_of(job: Job | Any) -> Policy:
    return Policy(job.retry_max_attempts, job.retry_initial_interval_seconds, job.retry_backoff_multiplier,
                  job.retry_max_interval_seconds, tuple(job.non_retryable_error_types or ()))


@dataclass
class Deps:
    db: Database
    queue: JobQueue
    billing: Billing
    projects: Callable[[Any], Any]  # uuid → ProjectOwner | None (awaitable)
    signals: Signals
    config: JobsConfig
    clock: Callable[[], float]  # epoch seconds; tests pass a controllable one
    rng: random.Random = field(default_factory=random.Random)
    encryptor: Encryptor | None = None  # the keys service; None: encrypted projects cannot submit
    tokens: ChangeTokens | None = None  # change tokens of cached projects and job types (`kit.freshness`)
    idle: IdlePolls = field(default_factory=IdlePolls)  # long polls a submit may hand jobs to (`handoff`)
    copies: LeaseCopies = field(default_factory=LeaseCopies)  # what this replica's leases stored, for their ends

    def now(self) -> datetime:
        return utc(self.clock())


@dataclass
class Changes:
    """Status changes made in one transaction, published after it commits."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ready_queues: set[str] = field(default_factory=set)
    scheduled: bool = False

    def move(self, s: AsyncSession, job: Job, status: int, reason: str, now: datetime) -> None:
        job.status = status
        job.update_time = now
        s.add(JobStatusChange(job_id=job.id, status=status, time=now, reason=reason, attempt=job.attempt_count))
        self.events.append((str(job.id), {"status": status, "reason": reason, "attempt": job.attempt_count,
                                          "time": now.isoformat()}))

    async def publish(self, signals: Signals) -> None:
        await signals.jobs_changed(self.events)
        await signals.jobs_ready(self.ready_queues)
        if self.scheduled:
            await signals.schedule_changed()

