"""A runner process's connection to the runners service: one bidirectional stream.

    runner = Runner("127.0.0.1:50054", token, builtin.registry(), max_concurrent_jobs=8)
    await runner.run()          # until drained or stopped; reconnects with backoff meanwhile

It says hello (processors, tags, slots, jobs still running from an earlier connection), runs
each assignment's processor (never more at once than its slots), holds a few more jobs while its
jobs are short (`prefetch`: each starts the moment a slot frees, not a lease's round trip later),
sends heartbeats with its leases, reports each result and keeps it until acknowledged
(a result in flight when the connection broke is sent again on the next one, fenced by its
lease, so it never counts twice). `drain()` (SIGTERM in the CLI) takes no new jobs, gives back
the ones held for a slot, finishes the running ones within the grace period, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import propagate, trace

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import telemetry
from innosystem.kit.egress import Client as EgressClient
from innosystem.kit.egress import Policy as EgressPolicy
from innosystem.kit.protos import whole_numbers
from innosystem.runner import external
from innosystem.runner.backoff import Backoff
from innosystem.runner.processors import Job, JobCancelled, JobError, Kind, Processor, Registry, Result
from innosystem.runner.threads import Threads
from innosystem.runners.v1 import runners_pb2 as pb
from innosystem.runners.v1 import runners_pb2_grpc

log = logging.getLogger("innosystem.runner")
_tracer = trace.get_tracer("innosystem.runner")

VERSION = "innosystem-runner/0.1"
Outcome = jobs_pb2.AttemptOutcome
BATCH_LINGER_SECONDS = 0.005
# Jobs held beyond the slots (`prefetch`) wait for one, their lease (and timeout) already running,
# while another runner might be idle: so they are asked for only while jobs are short. Short: after
# PREFETCH_AFTER_JOBS jobs, their typical run (a moving average) under PREFETCH_BELOW_SECONDS, and
# none running for longer than PREFETCH_LONG_SECONDS (checked with each heartbeat). When that ends,
# the jobs held for a slot go back to the queue at once.
PREFETCH_AFTER_JOBS = 8
PREFETCH_BELOW_SECONDS = 0.1
PREFETCH_LONG_SECONDS = 1.0
MAX_PREFETCH = 10_000
# How many it holds is sized by time as well: about PREFETCH_HOLD_SECONDS of its typical work
# beyond its slots (the slots times that over the typical run), up to `prefetch` (by default
# PREFETCH_SLOTS times the slots). A held job so waits about that long for a slot at most, however
# short the jobs: twice the slots at a typical 100 ms run, as many as `prefetch` allows for jobs of
# a few ms, whose leases, results and endings then go in larger batches (docs/performance.md,
# session 24).
PREFETCH_HOLD_SECONDS = 0.2
PREFETCH_SLOTS = 8
# A result larger than this fails its attempt (RESULT_TOO_LARGE) here: it could not pass the stream
# (32 MiB messages) and the platform stores far less (1 MiB by default). Results that end together
# share a stream message up to MAX_MESSAGE_RESULTS_BYTES.
MAX_RESULT_BYTES = 8 * 1024 * 1024
MAX_MESSAGE_RESULTS_BYTES = 4 * 1024 * 1024
# Keepalive pings find a half-open connection (the service's host gone without a FIN).
CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                   ("grpc.keepalive_permit_without_calls", 1), ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                   ("grpc.max_send_message_length", 32 * 1024 * 1024)]
# A stream closed for one of these is not reconnected: the token was revoked or the runner
# deleted, its customer deactivated or deleted, or another process connected with the same token
# (two would supersede each other forever).
FINAL_REASONS = ("RUNNER_REVOKED", "SUPERSEDED", "RUNNER_DELETED", "RUNNER_MISMATCH", "CUSTOMER_INACTIVE")


class RunnerRejected(Exception):
    """The service refused this runner for good (bad or revoked token, deleted runner)."""


@dataclass
class _Running:
    job: Job
    task: asyncio.Task[None] | None = None
    began: float = 0.0  # when its processor started (monotonic); 0: held for a slot


@dataclass
class _Access:
    values: dict[str, Any]
    access_id: str
    runner: Runner
    started: float

    async def close(self, succeeded: bool, error: str) -> None:
        self.runner._send(pb.ConnectRequest(secure_access_close=pb.SecureAccessClose(
            access_id=self.access_id, succeeded=succeeded, error=error,
            duration_ms=int((time.monotonic() - self.started) * 1000))))


class Runner:
    def __init__(self, target: str, token: str, processors: Registry, *, max_concurrent_jobs: int = 4,
                 prefetch: int | None = None, tags: Sequence[str] = (), hostname: str = "",
                 drain_grace_seconds: float = 30.0, credentials: grpc.ChannelCredentials | None = None,
                 egress: EgressPolicy | None = None) -> None:
        """`prefetch`: jobs held beyond `max_concurrent_jobs` at most, while jobs are short (default
        eight times the slots; 0: none). `egress`: what EXTERNAL_API processors may call (customer-set URLs);
        default from $INNOSYSTEM_RUNNER_EGRESS_ALLOW_HOSTS, otherwise https to public addresses only."""
        if max_concurrent_jobs < 1:
            raise ValueError("max_concurrent_jobs must be at least 1")
        prefetch = min(PREFETCH_SLOTS * max_concurrent_jobs, MAX_PREFETCH) if prefetch is None else prefetch
        if not 0 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be 0 to {MAX_PREFETCH}")
        if not token:
            raise ValueError("a runner token is required (POST /v1/runners returns one)")
        if not len(processors):
            raise ValueError("register at least one processor")
        self.target, self._token, self.processors = target, token, processors
        self.max_concurrent_jobs, self.prefetch = max_concurrent_jobs, prefetch
        self.tags = list(tags)
        self.hostname = hostname or socket.gethostname()
        self.drain_grace_seconds = drain_grace_seconds
        self._credentials = credentials
        self.runner_id = ""
        self.connected = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._unacked: dict[str, pb.JobResult] = {}  # job id → result sent, not yet acknowledged
        self._results: list[pb.JobResult] = []  # results of this event-loop turn, sent together
        self._results_bytes = 0
        self._results_together = False  # the service takes several results in one message (its Welcome says)
        self._out: asyncio.Queue[pb.ConnectRequest | None] | None = None
        self._rejected = ""
        self._last_seq = 0
        self._draining = False
        self._stopping = asyncio.Event()
        self._batches: dict[str, list[Job]] = {}
        self._grants: dict[str, asyncio.Future[pb.SecureAccessGrant]] = {}
        self._progress: dict[str, tuple[int, str]] = {}
        self._threads = Threads(max_concurrent_jobs, "processor")
        self._held: deque[tuple[Processor, _Running]] = deque()  # waiting for a slot, in order
        self._active = 0  # processors running: at most max_concurrent_jobs
        self._prefetching = False  # jobs are short: it holds up to `prefetch` more
        self._holding = 0  # … this many now (`_hold_size`), as last told to the service
        self._typical = 0.0  # a job's run, moving average (seconds)
        self._ran = 0
        self._http = EgressClient(egress or external.policy_from_env())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()  # a job finished or a result was acknowledged
        self.completed = 0  # results acknowledged (for tests and demos)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect and serve until drained or stopped, reconnecting with backoff when the stream breaks."""
        backoff = Backoff()
        try:
            while not self._stopping.is_set():
                try:
                    await self._session(backoff)
                except RunnerRejected:
                    raise
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        raise RunnerRejected(f"{exc.code().name}: {exc.details()}") from None
                    log.warning("stream to %s ended: %s %s", self.target, exc.code().name, exc.details())
                except Exception:  # a protocol surprise must not end the process; reconnect
                    log.exception("stream to %s failed", self.target)
                if self._stopping.is_set() or (self._draining and not self._running):
                    break
                delay = backoff.next()
                log.info("reconnecting in %.1fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self._held.clear()  # none starts while the tasks below are cancelled
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._http.close()
            self._threads.shutdown()

    def drain(self, grace_seconds: float | None = None) -> None:
        """Take no new jobs; finish running ones within the grace period; then close."""
        if self._draining:
            return
        self._draining = True
        self._prefetching, self._holding = False, 0
        self._give_back_held("draining")
        grace = self.drain_grace_seconds if grace_seconds is None else grace_seconds
        log.info("draining: %d jobs running, grace %.0fs", len(self._running), grace)
        self._send_slots()
        self._spawn(self._finish_drain(grace))

    def stop(self) -> None:
        """Stop now: running jobs are abandoned (their leases are released by the service)."""
        self._stopping.set()
        if self._out is not None:
            self._out.put_nowait(None)

    async def _finish_drain(self, grace: float) -> None:
        await self._wait(lambda: not self._running, grace)
        for running in list(self._running.values()):  # past the grace period
            running.job.silent = True
            if running.task is not None:
                running.task.cancel()
        await self._wait(lambda: not self._unacked or not self.connected.is_set(), 5.0)
        log.info("drained")
        self.stop()

    async def _wait(self, done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and (remaining := deadline - time.monotonic()) > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _free(self) -> int:
        """Jobs it would take now: its slots and, while jobs are short, `prefetch` more, less those
        it holds. A sent result frees its slot at once, up to as many results awaiting their ack
        as it may hold jobs (past that, on the ack), as the runners service counts them."""
        awaiting = max(0, len(self._unacked) - self.max_concurrent_jobs - self.prefetch)
        room = self.max_concurrent_jobs + self._holding
        return max(0, room - len(self._running) - awaiting)

    def _hold_size(self) -> int:
        """Jobs to hold beyond the slots: none unless its jobs are short, else about
        PREFETCH_HOLD_SECONDS of its typical work, up to `prefetch`."""
        if not self._prefetching:
            return 0
        return min(self.prefetch, math.ceil(self.max_concurrent_jobs * PREFETCH_HOLD_SECONDS
                                            / max(self._typical, 1e-6)))

    def _ran_for(self, seconds: float) -> None:
        """A job's processor ran this long: prefetch while the typical run is short, as many as
        that run allows; the service hears of a change of a quarter or more, or of reaching `prefetch`."""
        self._ran += 1
        self._typical += (seconds - self._typical) * (0.2 if self._ran > 1 else 1.0)
        self._prefetch_while(self._ran >= PREFETCH_AFTER_JOBS and self._typical < PREFETCH_BELOW_SECONDS)
        size = self._hold_size()
        if self._prefetching and size != self._holding and (
                size == self.prefetch or 4 * abs(size - self._holding) >= self._holding):
            self._holding = size
            self._send_slots()

    def _prefetch_while(self, short: bool) -> None:
        """Start or stop holding jobs beyond the slots, and tell the service; the jobs held for a
        slot when it stops go back to the queue, where an idle runner may take them."""
        on = short and self.prefetch > 0 and not self._draining
        if on == self._prefetching:
            return
        self._prefetching = on
        self._holding = self._hold_size()
        if not on:
            self._give_back_held("its jobs run long")
        self._send_slots()

    def _send_slots(self) -> None:
        """Tells the service how many jobs it would take now, and whether it drains."""
        self._send(pb.ConnectRequest(slots=pb.SlotUpdate(free_slots=self._free(), last_assignment_seq=self._last_seq,
                                                         draining=self._draining)))

    def _give_back_held(self, why: str) -> None:
        """The jobs waiting for a slot go back to the queue, unstarted."""
        while self._held:
            _, running = self._held.popleft()
            if self._running.get(running.job.id) is running:  # not cancelled or dropped meanwhile
                del self._running[running.job.id]
                self._send(pb.ConnectRequest(returned=pb.JobReturn(job_id=running.job.id,
                                                                   lease_id=running.job.lease.lease_id, reason=why)))

    def _send(self, message: pb.ConnectRequest) -> None:
        if self._out is not None:
            self._out.put_nowait(message)

    # ------------------------------------------------------------------ one connection

    async def _requests(self, out: asyncio.Queue[pb.ConnectRequest | None]) -> AsyncIterator[pb.ConnectRequest]:
        while True:
            message = await out.get()
            if message is None:
                return
            yield message

    async def _session(self, backoff: Backoff) -> None:
        out: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        held = [*(r.job.lease for r in self._running.values())]
        refs = [jobs_pb2.LeaseRef(job_id=lease.job_id, lease_id=lease.lease_id) for lease in held]
        refs += [jobs_pb2.LeaseRef(job_id=r.job_id, lease_id=r.lease_id) for r in self._unacked.values()]
        out.put_nowait(pb.ConnectRequest(hello=pb.Hello(
            runner_id=self.runner_id, processors=[pb.Processor(job_type_name=p.name, type=p.kind.value,
                                                               max_batch_size=p.max_batch_size)
                                                  for p in self.processors],
            tags=self.tags, max_concurrent_jobs=self.max_concurrent_jobs, prefetch=self.prefetch,
            free_slots=self._free(), version=VERSION, hostname=self.hostname, running=refs, batches=True)))
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(self.target, self._credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        heartbeat: asyncio.Task[None] | None = None
        try:
            stub = runners_pb2_grpc.RunnerServiceStub(channel)
            call = stub.Connect(self._requests(out), metadata=(("authorization", f"Bearer {self._token}"),))
            first = await call.read()
            if first is grpc.aio.EOF:
                raise grpc.aio.AioRpcError(await call.code(), grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           await call.details())
            if first.WhichOneof("kind") != "welcome":
                text = first.error.status.message if first.HasField("error") else first.WhichOneof("kind")
                if first.HasField("error") and first.error.fatal:
                    raise RunnerRejected(f"the service refused the connection: {text}")
                raise RuntimeError(f"expected welcome, got {text}")
            welcome = first.welcome
            self._welcome(welcome, out)
            backoff.reset()
            heartbeat = asyncio.create_task(self._heartbeats(welcome.heartbeat_interval_ms / 1000))
            while (message := await call.read()) is not grpc.aio.EOF:
                self._handle(message)
            if self._rejected:
                raise RunnerRejected(self._rejected)
            if not self._stopping.is_set():
                log.warning("the service closed the stream")
        finally:
            self.connected.clear()
            self._out = None
            out.put_nowait(None)
            if heartbeat is not None:
                heartbeat.cancel()
            for future in self._grants.values():
                if not future.done():
                    future.set_exception(JobError("the connection to the runners service broke during secure "
                                                  "access", type="SecureAccessUnavailable"))
            self._grants.clear()
            await channel.close(grace=None)

    def _welcome(self, welcome: pb.Welcome, out: asyncio.Queue[pb.ConnectRequest | None]) -> None:
        self.runner_id = welcome.runner.id
        self._last_seq = 0
        for ref in welcome.dropped:  # no longer ours: stop, report nothing
            self._unacked.pop(ref.job_id, None)
            if (running := self._running.pop(ref.job_id, None)) is not None:
                running.job.silent = True
                if running.task is not None:
                    running.task.cancel()
        if welcome.refused_processors:
            log.warning("the service refused processors: %s", ", ".join(welcome.refused_processors))
        self._out = out
        self._results_together = welcome.batches
        self.connected.set()
        resumed = {r.job_id for r in welcome.resumed}
        for job_id, result in list(self._unacked.items()):
            if job_id in resumed:
                out.put_nowait(pb.ConnectRequest(result=result))
        if self._draining or welcome.dropped:  # slots counted busy in hello may be free again
            self._send_slots()
        log.info("connected to %s as runner %s (session %s, %d resumed, %d dropped)", self.target, self.runner_id,
                 welcome.session_id, len(welcome.resumed), len(welcome.dropped))

    def _acked(self, ack: pb.ResultAck) -> None:
        sent = self._unacked.get(ack.job_id)
        if sent is not None and sent.lease_id == ack.lease_id:
            del self._unacked[ack.job_id]
            self.completed += 1
            self._changed.set()
        if ack.HasField("error"):
            log.warning("result for job %s rejected: %s", ack.job_id, ack.error.message)

    def _send_result(self, message: pb.JobResult) -> None:
        """Results that end in one turn of the event loop go in one stream message when the
        service takes batches (one message per job is most of a busy stream's cost)."""
        if not self._results_together:
            self._send(pb.ConnectRequest(message_id=uuid.uuid4().hex[:12], result=message))
            return
        size = message.ByteSize()
        if self._results and self._results_bytes + size > MAX_MESSAGE_RESULTS_BYTES:
            self._flush_results()  # a stream message stays well under gRPC's limit
        self._results.append(message)
        self._results_bytes += size
        if len(self._results) == 1:
            asyncio.get_running_loop().call_soon(self._flush_results)

    def _flush_results(self) -> None:
        results, self._results, self._results_bytes = self._results, [], 0
        if len(results) == 1:
            self._send(pb.ConnectRequest(message_id=uuid.uuid4().hex[:12], result=results[0]))
        elif results:
            self._send(pb.ConnectRequest(message_id=uuid.uuid4().hex[:12], results=pb.JobResults(items=results)))

    async def _heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._prefetching:  # a job running long now: hold none for a slot behind it
                now = time.monotonic()
                self._prefetch_while(not any(r.began and now - r.began > PREFETCH_LONG_SECONDS
                                             for r in self._running.values()))
            self._heartbeat(0)

    def _heartbeat(self, ping_id: int) -> None:
        for job_id, (percent, message) in list(self._progress.items()):
            running = self._running.get(job_id)
            if running is not None:
                self._send(pb.ConnectRequest(progress=pb.ProgressUpdate(
                    job_id=job_id, lease_id=running.job.lease.lease_id,
                    progress=jobs_pb2.JobProgress(percent=percent, message=message))))
        self._progress.clear()
        self._send(pb.ConnectRequest(heartbeat=pb.Heartbeat(ping_id=ping_id, running=[
            jobs_pb2.LeaseRef(job_id=r.job.id, lease_id=r.job.lease.lease_id) for r in self._running.values()])))

    def _handle(self, message: pb.ConnectResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "assignment":
            self._last_seq = max(self._last_seq, message.assignment.seq)
            self._assigned(message.assignment.lease)
        elif kind == "assignments":
            for assignment in message.assignments.items:
                self._last_seq = max(self._last_seq, assignment.seq)
                self._assigned(assignment.lease)
        elif kind == "result_acks":
            for ack in message.result_acks.items:
                self._acked(ack)
        elif kind == "cancellation":
            c = message.cancellation
            running = self._running.get(c.job_id)
            if running is None or running.job.lease.lease_id != c.lease_id:
                return
            job = running.job
            if c.reason == pb.CancellationReason.CANCELLATION_REASON_CANCEL_REQUESTED:
                job.cancel_requested = True
            else:
                job.silent = True
            log.info("job %s: stop (%s)", c.job_id, pb.CancellationReason.Name(c.reason))
            job.cancelled.set()
            if running.task is not None:
                running.task.cancel()
            elif not running.began:  # held for a slot: it never starts
                self._report(job, _cancelled(), time.monotonic())
        elif kind == "result_ack":
            self._acked(message.result_ack)
        elif kind == "ping":
            self._heartbeat(message.ping.ping_id)
        elif kind == "drain":
            self.drain(max(0.0, message.drain.deadline.ToMicroseconds() / 1e6 - time.time())
                       if message.drain.HasField("deadline") else None)
        elif kind == "secure_access_grant":
            future = self._grants.pop(message.secure_access_grant.request_id, None)
            if future is not None and not future.done():
                future.set_result(message.secure_access_grant)
        elif kind == "error":
            log.warning("the service rejected a message: %s%s", message.error.status.message,
                        " (closing)" if message.error.fatal else "")
            reason = message.error.status.message.partition(":")[0]
            if message.error.fatal and reason in FINAL_REASONS:
                self._rejected = message.error.status.message

    # ------------------------------------------------------------------ running jobs

    def _assigned(self, lease: jobs_pb2.JobLease) -> None:
        processor = self.processors.get(lease.job_type_name)
        if self._draining or processor is None or lease.job_id in self._running:
            why = "draining" if self._draining else f"no processor for {lease.job_type_name!r}"
            self._send(pb.ConnectRequest(returned=pb.JobReturn(job_id=lease.job_id, lease_id=lease.lease_id,
                                                               reason=why)))
            return
        job = Job(lease, on_progress=self._on_progress, secure_access=self._open_secure_access)
        running = _Running(job)
        self._running[job.id] = running
        if processor.kind == Kind.BATCH:  # its jobs run together, in calls of their own
            pending = self._batches.setdefault(processor.name, [])
            pending.append(job)
            if len(pending) == 1:
                self._spawn(self._run_batch(processor))
            running.began = time.monotonic()
            return
        if self._active < self.max_concurrent_jobs:
            self._start(processor, running)
        else:
            self._held.append((processor, running))

    def _start(self, processor: Processor, running: _Running) -> None:
        self._active += 1
        running.began = time.monotonic()
        running.task = self._spawn(self._run_one(processor, running.job))
        running.task.add_done_callback(self._slot_freed)

    def _slot_freed(self, _: asyncio.Task[None]) -> None:
        self._active -= 1
        while self._held and self._active < self.max_concurrent_jobs:
            processor, running = self._held.popleft()
            if self._running.get(running.job.id) is running:  # not cancelled, given back or dropped meanwhile
                self._start(processor, running)

    def _on_progress(self, job: Job, percent: int, message: str) -> None:
        # May be called from a processor thread.
        self._progress[job.id] = (percent, message)

    async def _run_one(self, processor: Processor, job: Job) -> None:
        started = time.monotonic()
        with _span(job):
            try:
                value = await self._call(processor, job)
                result = _success(value)
            except asyncio.CancelledError:
                result = _cancelled()
            except Exception as exc:  # a processor's failure is the job's result
                result = _cancelled() if isinstance(exc, JobCancelled) else _failure(exc)
        self._ran_for(time.monotonic() - started)
        self._report(job, result, started)

    async def _call(self, processor: Processor, job: Job) -> Any:
        if processor.kind == Kind.EXTERNAL_API:
            return await external.call(processor, job, self._http)
        assert processor.fn is not None
        if processor.is_coroutine:
            return await processor.fn(job)
        return await self._threads.run(processor.fn, job)

    async def _run_batch(self, processor: Processor) -> None:
        await asyncio.sleep(BATCH_LINGER_SECONDS)  # let the rest of a burst of assignments join
        while jobs := self._batches.get(processor.name):
            chunk, self._batches[processor.name] = jobs[:processor.max_batch_size], jobs[processor.max_batch_size:]
            started = time.monotonic()
            task = asyncio.current_task()
            for job in chunk:
                if (running := self._running.get(job.id)) is not None:
                    running.task = task
            try:
                values = await self._call(processor, chunk)  # type: ignore[arg-type]
                if not isinstance(values, list | tuple) or len(values) != len(chunk):
                    raise JobError(f"batch processor {processor.name!r} must return one result per job",
                                   type="BatchResultMismatch", retryable=False)
                results = [_success(v) for v in values]
            except asyncio.CancelledError:
                results = [_cancelled()] * len(chunk)
            except Exception as exc:
                results = [_failure(exc)] * len(chunk)
            for job, result in zip(chunk, results, strict=True):
                self._report(job, result, started)
        self._batches.pop(processor.name, None)

    def _report(self, job: Job, result: jobs_pb2.AttemptResult, started: float) -> None:
        current = self._running.get(job.id)
        if current is not None and current.job is job:  # not a newer attempt of the same job
            del self._running[job.id]
        self._progress.pop(job.id, None)
        self._changed.set()
        if job.silent:
            return
        if job.cancel_requested and result.outcome != Outcome.ATTEMPT_OUTCOME_SUCCEEDED:
            result = _cancelled()
        result.duration_ms = int((time.monotonic() - started) * 1000)
        if (size := result.ByteSize()) > MAX_RESULT_BYTES:  # could not pass the stream: the attempt fails
            result = jobs_pb2.AttemptResult(outcome=Outcome.ATTEMPT_OUTCOME_FAILED, duration_ms=result.duration_ms,
                                            error=jobs_pb2.JobError(
                                                message=f"the result is {size} bytes, over the limit of "
                                                        f"{MAX_RESULT_BYTES}", type="RESULT_TOO_LARGE"))
        message = pb.JobResult(job_id=job.id, lease_id=job.lease.lease_id, result=result)
        self._unacked[job.id] = message
        self._send_result(message)

    async def _open_secure_access(self, job: Job, purpose: int, fields: Sequence[str], processor: str,
                                  client_reference: str) -> _Access:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[pb.SecureAccessGrant] = asyncio.get_running_loop().create_future()
        self._grants[request_id] = future
        self._send(pb.ConnectRequest(secure_access_open=pb.SecureAccessOpen(
            request_id=request_id, job_id=job.id, lease_id=job.lease.lease_id, processor=processor,
            purpose=purpose, fields=list(fields), client_reference=client_reference)))  # type: ignore[arg-type]
        grant = await future
        if grant.HasField("error"):
            raise JobError(f"secure access denied: {grant.error.message}", type="SecureAccessDenied", retryable=False)
        values = {f.path: whole_numbers(json_format.MessageToDict(f.value)) for f in grant.fields}
        return _Access(values, grant.access_id, self, time.monotonic())


def _span(job: Job) -> contextlib.AbstractContextManager[Any]:
    """The processing span, a child of the job's trace. Where no span is recorded (telemetry found
    nothing to export to), the job's own trace context is made current instead, for the logs: the
    same trace id at a fraction of a span's cost, on every job."""
    carrier = dict(job.lease.trace_context)
    if telemetry.spans_recorded():
        return _tracer.start_as_current_span(f"process {job.type_name}", context=propagate.extract(carrier),
                                             kind=trace.SpanKind.CONSUMER, attributes={
                                                 "innosystem.job_id": job.id, "innosystem.attempt": job.attempt})
    parent = telemetry.span_context_of(carrier)
    return contextlib.nullcontext() if parent is None else trace.use_span(trace.NonRecordingSpan(parent))


def _success(value: Any) -> jobs_pb2.AttemptResult:
    result = jobs_pb2.AttemptResult(outcome=Outcome.ATTEMPT_OUTCOME_SUCCEEDED)
    # Filled in place (a Struct built apart and copied in cost a copy of every result).
    if isinstance(value, Result):
        _fill(result.result, value.result)
        if value.cost_cents is not None:
            result.actual_cost_cents = int(value.cost_cents)
        if value.units is not None:
            result.units = int(value.units)
        if value.details:
            _fill(result.details, value.details)
    elif isinstance(value, dict):
        _fill(result.result, value)
    elif value is not None:
        _fill(result.result, {"value": value})
    return result


def _fill(target: struct_pb2.Struct, value: dict[str, Any] | None) -> None:
    """`value` into the (empty) Struct field `target`, which is set even when `value` is empty."""
    target.SetInParent()
    if value:
        target.update(value)


def _failure(exc: BaseException) -> jobs_pb2.AttemptResult:
    if isinstance(exc, JobError):
        error = jobs_pb2.JobError(message=exc.message[:4000], type=exc.type or "JobError",
                                  non_retryable=not exc.retryable)
        if exc.details:
            _fill(error.details, exc.details)
    else:
        log.warning("processor raised %s", type(exc).__name__, exc_info=exc)
        error = jobs_pb2.JobError(message=str(exc)[:4000] or type(exc).__name__, type=type(exc).__name__)
    return jobs_pb2.AttemptResult(outcome=Outcome.ATTEMPT_OUTCOME_FAILED, error=error)


def _cancelled() -> jobs_pb2.AttemptResult:
    return jobs_pb2.AttemptResult(outcome=Outcome.ATTEMPT_OUTCOME_CANCELLED)
