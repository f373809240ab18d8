"""Jobs handed straight to an idle long poll.

A LeaseJobs call that found all its queues empty waits for a job (`signals.wait`). When a submit
of this replica brings a job for one of those queues, the job is leased in the submit's own
transaction (inserted Running, with its attempt and both status changes) and given to that call
after the commit: no Redis enqueue, wake-up, pop, in-flight record or lease transaction for it.
At light load that is every job, and a job's processor starts one commit after its submit.

Fair share and priority decide among waiting jobs; a call is idle only after its pop found
nothing, so no job waits in its queues that a handed one could pass (at most one enqueued by
another replica a moment before, which its own wake-up brings to the next call). A job handed to
a call that has gone meanwhile (its runner disconnected) is given back like any lease its runner
never received: Pending again, at the front of its queue (`Leases._undelivered`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from innosystem.jobs.v1 import jobs_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Idle:
    """One long poll waiting with nothing to lease."""

    request: pb.LeaseJobsRequest
    queues: Sequence[str]
    wake: asyncio.Future[bool]  # its wait (`Signals.wait`): resolved, it looks again
    # Set when a submit claims the call: the leases once that submit committed ([] if it did not).
    handed: asyncio.Future[list[pb.JobLease]] | None = None
    gone: bool = False  # the call ended before the claiming submit committed
    room: int = field(init=False)

    def __post_init__(self) -> None:
        self.room = self.request.max_jobs


@dataclass(frozen=True)
class Claim:
    """A submit's jobs going to idle long polls: which call takes each job."""

    by_job: dict[uuid.UUID, Idle]

    def __bool__(self) -> bool:
        return bool(self.by_job)

    def calls(self) -> list[Idle]:
        return list(dict.fromkeys(self.by_job.values()))


class IdlePolls:
    """This replica's idle long polls, by queue, oldest first."""

    def __init__(self) -> None:
        self._by_queue: dict[str, deque[Idle]] = {}
        # Gives back leases whose call went away (set by the leases service: `Leases._undelivered`).
        self.undelivered: Callable[[list[pb.JobLease]], Coroutine[Any, Any, None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, idle: Idle) -> None:
        for q in idle.queues:
            self._by_queue.setdefault(q, deque()).append(idle)

    def discard(self, idle: Idle) -> None:
        for q in idle.queues:
            waiting = self._by_queue.get(q)
            if waiting is not None:
                if idle in waiting:
                    waiting.remove(idle)
                if not waiting:
                    del self._by_queue[q]

    def claim(self, jobs: Sequence[tuple[uuid.UUID, str, uuid.UUID]]) -> Claim:
        """Idle calls for as many of `jobs` (id, queue, customer) as they have room for, in order;
        each claimed call leaves the registry (one submit hands it jobs, the next finds it gone)."""
        by_job: dict[uuid.UUID, Idle] = {}
        if not self._by_queue:
            return Claim(by_job)
        taken: list[Idle] = []
        for job_id, queue, customer_id in jobs:
            idle = self._first(queue, customer_id)
            if idle is None:
                continue
            if idle.handed is None:
                idle.handed = asyncio.get_running_loop().create_future()
                taken.append(idle)
            idle.room -= 1
            by_job[job_id] = idle
        for idle in taken:
            self.discard(idle)
        return Claim(by_job)

    def _first(self, queue: str, customer_id: uuid.UUID) -> Idle | None:
        for idle in self._by_queue.get(queue, ()):
            if idle.room > 0 and not idle.wake.done() and (
                    not idle.request.customer_id or idle.request.customer_id == str(customer_id)):
                return idle
        return None

    def deliver(self, claim: Claim, leases: dict[uuid.UUID, pb.JobLease]) -> None:
        """After the submit's commit: each call gets its jobs' leases (none if the submit did not
        store them: the call then looks again); leases for a call that is gone are given back."""
        mine: dict[int, list[pb.JobLease]] = {}
        for job_id, idle in claim.by_job.items():
            lease = leases.get(job_id)
            if lease is not None:
                mine.setdefault(id(idle), []).append(lease)
        for idle in claim.calls():
            handed = mine.get(id(idle), [])
            assert idle.handed is not None
            if idle.gone:
                if handed:
                    self._give_back(handed)
                continue
            if not idle.handed.done():
                idle.handed.set_result(handed)
            if not idle.wake.done():
                idle.wake.set_result(True)

    def release(self, claim: Claim) -> None:
        """The submit stored none of its claimed jobs: every claimed call looks again."""
        self.deliver(claim, {})

    async def received(self, idle: Idle) -> list[pb.JobLease]:
        """What a submit that claimed `idle` handed it, once that submit committed (none if no
        submit claimed it)."""
        return [] if idle.handed is None else await asyncio.shield(idle.handed)

    def abandon(self, idle: Idle) -> None:
        """The call went away: the leases a submit handed it, or hands it at its commit, go back."""
        idle.gone = True
        if idle.handed is not None and idle.handed.done() and not idle.handed.cancelled():
            self._give_back(idle.handed.result())

    def _give_back(self, leases: list[pb.JobLease]) -> None:
        if not leases or self.undelivered is None:
            return
        task = asyncio.create_task(self.undelivered(leases))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("handed jobs not given back (their leases expire): %s", task.exception())
