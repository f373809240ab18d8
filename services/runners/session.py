"""One runner's live session on this replica: what it holds and how many jobs it may take."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from google.rpc import code_pb2, status_pb2

from innosystem.jobs.v1 import jobs_pb2
from innosystem.runners.v1 import runners_pb2 as pb
from services.runners.outbox import HARD_FACTOR, Outbox
from services.runners.repository import AVAILABLE, BUSY, ERROR

RECENT_RESULTS = 256  # results remembered per session, to tell a duplicate from a stranger


def stream_error(code: int, reason: str, message: str, *, message_id: str = "", fatal: bool = False
                 ) -> pb.ConnectResponse:
    return pb.ConnectResponse(error=pb.StreamError(
        message_id=message_id, fatal=fatal, status=status_pb2.Status(code=code, message=f"{reason}: {message}")))


def status(code: int, reason: str, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=f"{reason}: {message}")


INVALID = code_pb2.INVALID_ARGUMENT
FAILED_PRECONDITION = code_pb2.FAILED_PRECONDITION
PERMISSION_DENIED = code_pb2.PERMISSION_DENIED
RESOURCE_EXHAUSTED = code_pb2.RESOURCE_EXHAUSTED


@dataclass(eq=False)
class Session:
    runner_id: str
    session_id: str
    customer_id: str  # empty for a shared runner
    processors: list[str]
    tags: list[str]
    max_slots: int  # jobs it runs at once
    # Free slots as the runner counts them, kept current between its slot updates (see SlotUpdate).
    reported_free: int
    prefetch: int = 0  # jobs it may hold beyond them, started as its slots free (Hello.prefetch)
    maintenance: bool = False
    batches: bool = False  # the runner takes several assignments and acks in one stream message
    requested: int = 0  # slots asked for by LeaseJobs calls under way
    draining: bool = False
    seq: int = 0
    held: dict[str, str] = field(default_factory=dict)  # job id → lease id
    # Results passed on but not yet committed by the jobs service. A result frees its slot when it
    # arrives (the runner's processor is done; waiting for the commit would put the commit's
    # latency in every slot's cycle), up to `room()` results awaiting their ack; past that, its
    # slot frees on the ack, so what a slow jobs service leaves unacknowledged stays bounded. The
    # runner SDK counts its slots the same way.
    completing: dict[str, str] = field(default_factory=dict)
    freed_early: set[str] = field(default_factory=set)  # of `completing`: slot already free
    progress: dict[str, jobs_pb2.JobProgress] = field(default_factory=dict)
    cancel_sent: set[str] = field(default_factory=set)
    recent: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    current_job_id: str = ""
    # What the stream sends, bounded (outbox.py); None ends it (after a final StreamError, if any).
    out: Outbox = field(default_factory=Outbox)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    last_seen: float = field(default_factory=time.monotonic)
    extending: bool = False
    # The fatal StreamError the stream was closed with, if any (sent as the RPC's status instead
    # when the runner does not read it in time); `slow`: closed as a slow consumer.
    final: pb.ConnectResponse | None = None
    slow: bool = False

    def __post_init__(self) -> None:
        self.out.on_room = self.changed.set  # a full queue with room again: the lease loop may go on

    def wanted(self) -> int:
        """Jobs to lease for it now: its free slots, but none while its outgoing queue is full (a
        runner that does not read its stream is given no more to read)."""
        return min(self.free(), self.out.room())

    def free(self) -> int:
        """Jobs it may be given now: never more than its free slots and the jobs it holds beyond
        them (`prefetch`), nor more than it says it would take (it holds none while its jobs run long)."""
        if self.closed.is_set() or self.draining or self.maintenance or not self.processors:
            return 0
        return max(0, min(self.room() - self.busy(), self.reported_free))

    def room(self) -> int:
        """Jobs it may hold: its slots and the jobs it holds beyond them."""
        return self.max_slots + self.prefetch

    def busy(self) -> int:
        """Slots taken: jobs held (running or waiting for a slot), and results awaiting their ack
        beyond `room()` of them."""
        return len(self.held) + max(0, len(self.completing) - self.room())

    def send(self, message: pb.ConnectResponse) -> None:
        if self.closed.is_set():
            return  # the stream is ending: nothing after its final message
        if not self.out.put(message):
            self.close_slow(f"more than {HARD_FACTOR * self.out.max_messages} messages or "
                            f"{HARD_FACTOR * self.out.max_bytes} bytes waiting to be read")

    def close(self, final: pb.ConnectResponse | None = None, *, discard: bool = False) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.changed.set()
            self.final = final
            self.out.end(final, discard=discard)

    def close_slow(self, why: str) -> None:
        """The runner does not read its stream: end it now, its backlog dropped (its leases are
        released like any lost runner's; a runner that resumes reading gets this error next)."""
        if not self.closed.is_set():
            self.slow = True
            self.close(stream_error(RESOURCE_EXHAUSTED, "SLOW_CONSUMER", f"the runner does not read its stream: {why}",
                                    fatal=True), discard=True)

    def assign(self, lease: jobs_pb2.JobLease, send: bool = True) -> pb.JobAssignment:
        """Hand a lease to the runner: sent at once, or (`send=False`) by the caller with others."""
        self.seq += 1
        self.held[lease.job_id] = lease.lease_id
        self.reported_free -= 1
        self.current_job_id = lease.job_id
        assignment = pb.JobAssignment(seq=self.seq, lease=lease)
        if send:
            self.send(pb.ConnectResponse(assignment=assignment))
        return assignment

    def finish(self, job_id: str, lease_id: str, *, completing: bool = False) -> None:
        """A result arrived (its slot frees now, or with its ack when `room()` results already await
        theirs: see `completing`), or a return (its slot frees now)."""
        self.held.pop(job_id, None)
        self.progress.pop(job_id, None)
        self.cancel_sent.discard(job_id)
        if completing:
            self.completing[job_id] = lease_id
            if len(self.completing) <= self.room():
                self.freed_early.add(job_id)
                self.reported_free += 1
        else:
            self.reported_free += 1
        self.recent[(job_id, lease_id)] = None
        while len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        if self.current_job_id == job_id:
            self.current_job_id = next(reversed(self.held), "") if self.held else ""
        self.changed.set()

    def acked(self, job_id: str, lease_id: str) -> None:
        if self.completing.get(job_id) == lease_id:
            del self.completing[job_id]
            if job_id in self.freed_early:
                self.freed_early.discard(job_id)
            else:
                self.reported_free += 1
            self.changed.set()

    def drop(self, job_id: str) -> None:
        """The lease is no longer the runner's (stale, lost): forget it without a result."""
        if self.held.pop(job_id, None) is not None:
            self.reported_free += 1
            self.progress.pop(job_id, None)
            self.changed.set()

    def slots(self, update: pb.SlotUpdate) -> None:
        unseen = max(0, self.seq - update.last_assignment_seq)
        self.reported_free = update.free_slots - unseen
        self.draining = self.draining or update.draining
        self.changed.set()

    def status(self) -> int:
        if not self.processors:
            return ERROR  # connected, but every processor it declared was refused
        return BUSY if self.max_slots - self.busy() <= 0 else AVAILABLE
