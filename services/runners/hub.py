"""The runner streams this replica holds: handshake, dispatch, heartbeats, results, cancellation.

Per connected runner one task long-polls `LeaseJobs` for exactly its free slots, and only while
it has some (the wait is the jobs service's, server side: no polling here). Results from every
stream go to the jobs service in batches (results.py); leases and results travel as messages on
one stream to the jobs service (relay.py); heartbeats extend the runner's leases
in one `ExtendLeases` and bring back cancel requests; `WatchCancellations` (one per replica)
delivers the others at once. Replica-wide state a second replica needs (which session is a
runner's current one) is in Redis (live.py); nothing breaks with two replicas. What a stream has
not written yet is bounded (outbox.py): a runner that stops reading gets no new jobs, and is
closed as a slow consumer if it does not resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import metrics, propagate, trace

from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.keys.v1 import keys_pb2, keys_pb2_grpc
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import DOMAIN_SUFFIX, InvalidArgument, PermissionDenied
from innosystem.kit.telemetry import SECONDS_BUCKETS, links_to
from innosystem.runners.v1 import runners_pb2 as pb
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.runners.config import RunnersConfig
from services.runners.live import CONTROL_CHANNEL, LiveState
from services.runners.models import Runner
from services.runners.outbox import Outbox
from services.runners.relay import Relay
from services.runners.repository import CUSTOMER, RunnerRepository
from services.runners.results import ResultBatcher
from services.runners.revocations import RevocationFollower
from services.runners.session import FAILED_PRECONDITION, INVALID, PERMISSION_DENIED, Session, status, stream_error
from services.runners.views import runner_pb

log = logging.getLogger(__name__)
_meter = metrics.get_meter("innosystem.runners")
_tracer = trace.get_tracer("innosystem.runners")
_online = _meter.create_up_down_counter("runners.online", unit="{runner}",
                                        description="runner streams held by this replica")
_dispatch = _meter.create_histogram("runners.dispatch.latency", unit="s",
                                    description="job submitted (or due) → assignment sent to its runner",
                                    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)

MAX_TAGS, MAX_PROCESSORS, MAX_SLOTS = 50, 200, 10_000
MAX_LEASE_JOBS = 1000  # LeaseJobs' own limit per call
LEASE_CALLS = 2  # LeaseJobs calls a session may have under way at once
AttemptOutcome = jobs_pb2.AttemptOutcome


class Hub:
    def __init__(self, config: RunnersConfig, db: Database, live: LiveState, jobs: jobs_pb2_grpc.JobServiceStub,
                 keys: keys_pb2_grpc.KeyManagementServiceStub) -> None:
        self.config, self.db, self.live, self.jobs, self.keys = config, db, live, jobs, keys
        self.replica = uuid.uuid4().hex[:12]
        self.sessions: dict[str, Session] = {}
        self.relay = Relay(jobs)  # LeaseJobs and CompleteJobs on one stream (relay.py)
        self.results = ResultBatcher(self.relay, self._ack)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False
        # Closes the streams of runners whose customer lost its access (set by main).
        self.revocations: RevocationFollower | None = None
        _meter.create_observable_gauge(
            "runners.slots.free", callbacks=[lambda _: [metrics.Observation(
                sum(s.free() for s in self.sessions.values()))]],
            unit="{slot}", description="free slots of the runners connected to this replica")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.relay.close()

    # ------------------------------------------------------------------ the stream

    async def serve(self, caller: Principal, requests: AsyncIterator[pb.ConnectRequest],
                    context: grpc.aio.ServicerContext) -> None:
        """One Connect stream. Messages are written with `context.write` by one writer task rather
        than yielded: a yield cannot be bounded in time, and a runner that does not read would hold
        it (and everything queued behind it) forever. See outbox.py for the bounds."""
        timeout = self.config.heartbeat_timeout_ms / 1000
        try:
            first = await asyncio.wait_for(anext(requests), timeout)
        except (StopAsyncIteration, TimeoutError):
            await self._write_now(context, stream_error(INVALID, "HELLO_REQUIRED",
                                                        "send hello first, within the heartbeat timeout", fatal=True))
            return
        if first.WhichOneof("kind") != "hello":
            await self._write_now(context, stream_error(
                INVALID, "HELLO_REQUIRED", f"the first message must be hello, got "
                f"{first.WhichOneof('kind') or 'an empty message'}", message_id=first.message_id, fatal=True))
            return
        try:
            session, welcome = await self._open(caller, first.hello)
        except (InvalidArgument, PermissionDenied) as err:
            code = INVALID if isinstance(err, InvalidArgument) else PERMISSION_DENIED
            await self._write_now(context, stream_error(code, err.reason, err.message, message_id=first.message_id,
                                                        fatal=True))
            return
        log.info("runner %s connected (session %s, %d slots, processors %s)", session.runner_id,
                 session.session_id, session.max_slots, ",".join(session.processors))
        _online.add(1)
        writer = reader = None
        try:
            # Written before anything the session queued meanwhile (a cancellation of a resumed job).
            if not await self._write_now(context, pb.ConnectResponse(welcome=welcome)):
                session.close()
            elif welcome.refused_processors:
                await self._write_now(context, stream_error(
                    PERMISSION_DENIED, "PROCESSOR_REFUSED", "this runner may not serve "
                    + ", ".join(welcome.refused_processors), message_id=first.message_id))
            writer = self._spawn(self._write(session, context))
            reader = self._spawn(self._read(session, requests))
            for _ in range(LEASE_CALLS):
                self._spawn(self._lease_loop(session))
            await session.closed.wait()
            if not session.slow:  # its last messages (a final error) get as long as a slow consumer would
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), self.config.slow_consumer_timeout_ms / 1000)
            if not writer.done():
                writer.cancel()
                await self._abort(context, session)
        finally:
            session.close()
            for task in (writer, reader):
                if task is not None:
                    task.cancel()
            _online.add(-1)
            if self.sessions.get(session.runner_id) is session:
                del self.sessions[session.runner_id]
            # The lease loop is left to finish its long-poll (cancelling it could lose a job the
            # jobs service leased meanwhile); it gives back whatever arrives for a closed session.
            self._spawn(self._closed(session))

    async def _write_now(self, context: grpc.aio.ServicerContext, message: pb.ConnectResponse) -> bool:
        """A handshake message, written before the writer starts (the transport is empty then, so
        this waits only on a runner that reads nothing at all). False if it could not be written."""
        try:
            await asyncio.wait_for(context.write(message), self.config.slow_consumer_timeout_ms / 1000)
            return True
        except Exception as exc:  # the stream is gone or stuck: the caller ends it
            log.info("a runner stream's handshake could not be written: %s", exc or type(exc).__name__)
            return False

    async def _write(self, session: Session, context: grpc.aio.ServicerContext) -> None:
        """Writes the session's outbox to its stream until the stream ends. A write waits while the
        runner does not read (flow control); the queue behind it is bounded (outbox.py)."""
        try:
            while (message := await session.out.get()) is not None:
                await context.write(message)
        except Exception as exc:  # the stream broke: the session ends with it
            log.info("runner %s: stream write failed: %s", session.runner_id, exc or type(exc).__name__)
        finally:
            session.close()

    async def _abort(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        """The stream's final error could not be written in time (the runner does not read): end
        the RPC with it as the status, which the runner sees after what its transport already
        holds. The status itself may wait behind that data; past a second it is left to the
        transport, and the session ends regardless."""
        final = session.final.error.status if session.final is not None and session.final.HasField("error") else (
            status(code_pb2.RESOURCE_EXHAUSTED, "SLOW_CONSUMER", "the runner does not read its stream"))
        code = next((c for c in grpc.StatusCode if c.value[0] == final.code), grpc.StatusCode.UNKNOWN)
        info = error_details_pb2.ErrorInfo(reason=final.message.partition(":")[0], domain=f"runners{DOMAIN_SUFFIX}")
        packed = any_pb2.Any()
        packed.Pack(info)
        details = status_pb2.Status(code=final.code, message=final.message, details=[packed])
        log.info("runner %s: stream ended with %s (its final message was not read in time)", session.runner_id,
                 final.message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(context.abort(code, final.message, trailing_metadata=(
                ("grpc-status-details-bin", details.SerializeToString()),)), 1.0)

    async def _open(self, caller: Principal, hello: pb.Hello) -> tuple[Session, pb.Welcome]:
        runner_id = caller.runner_id
        if hello.runner_id and hello.runner_id != runner_id:
            raise PermissionDenied(f"hello.runner_id {hello.runner_id} is not the runner of this token",
                                   reason="RUNNER_MISMATCH")
        if not 1 <= hello.max_concurrent_jobs <= MAX_SLOTS:
            raise InvalidArgument(f"hello.max_concurrent_jobs must be 1 to {MAX_SLOTS}",
                                  field="hello.max_concurrent_jobs", reason="INVALID_SLOTS")
        if not 0 <= hello.prefetch <= MAX_SLOTS:
            raise InvalidArgument(f"hello.prefetch must be 0 to {MAX_SLOTS}", field="hello.prefetch",
                                  reason="INVALID_PREFETCH")
        if not 0 <= hello.free_slots <= hello.max_concurrent_jobs + hello.prefetch:
            raise InvalidArgument("hello.free_slots must be 0 to max_concurrent_jobs + prefetch",
                                  field="hello.free_slots", reason="INVALID_SLOTS")
        names = [p.job_type_name.strip() for p in hello.processors]
        if len(names) > MAX_PROCESSORS or any(not n or len(n) > 200 for n in names):
            raise InvalidArgument(f"hello.processors: at most {MAX_PROCESSORS}, each with a job_type_name of 1 to "
                                  "200 characters", field="hello.processors", reason="INVALID_PROCESSORS")
        tags = list(dict.fromkeys(t.strip() for t in hello.tags))
        if len(tags) > MAX_TAGS or any(not t or len(t) > 64 for t in tags):
            raise InvalidArgument(f"hello.tags: at most {MAX_TAGS}, each 1 to 64 characters", field="hello.tags",
                                  reason="INVALID_TAGS")
        async with self.db.session() as s:
            row = await s.get(Runner, uuid.UUID(runner_id))
        if row is None:
            raise PermissionDenied("the runner was deleted", reason="RUNNER_DELETED")
        refused = await self._refused(row, names)
        accepted = [n for n in dict.fromkeys(names) if n not in refused]
        welcome = pb.Welcome(session_id=uuid.uuid4().hex, heartbeat_interval_ms=self.config.heartbeat_interval_ms,
                             heartbeat_timeout_ms=self.config.heartbeat_timeout_ms, refused_processors=refused,
                             batches=True)
        session = Session(runner_id=runner_id, session_id=welcome.session_id, customer_id=caller.customer_id,
                          processors=accepted, tags=tags, max_slots=hello.max_concurrent_jobs,
                          prefetch=hello.prefetch, reported_free=hello.free_slots, maintenance=row.maintenance,
                          batches=hello.batches,
                          out=Outbox(self.config.send_queue_messages, self.config.send_queue_bytes))
        if hello.running:  # jobs still running from an earlier connection: keep the leases still its own
            answer = await self.jobs.ExtendLeases(jobs_pb2.ExtendLeasesRequest(
                runner_id=runner_id, leases=[jobs_pb2.LeaseExtension(job_id=r.job_id, lease_id=r.lease_id)
                                             for r in hello.running]), timeout=10, wait_for_ready=True)
            for ref, result in zip(hello.running, answer.results, strict=False):
                if result.HasField("error"):
                    welcome.dropped.append(ref)
                else:
                    welcome.resumed.append(ref)
                    session.held[ref.job_id] = ref.lease_id
                    if result.cancel_requested:  # asked while it was away: told right after the welcome
                        self._cancel(session, ref.job_id, ref.lease_id, "")
        previous = await self.live.open(runner_id, session.session_id, self.replica, session.free())
        if previous and previous != session.session_id:
            await self.live.publish("superseded", runner_id, session_id=session.session_id)
        older = self.sessions.get(runner_id)
        if older is not None:
            older.close(stream_error(FAILED_PRECONDITION, "SUPERSEDED", "a newer connection of this runner took over",
                                     fatal=True))
        self.sessions[runner_id] = session
        if self.revocations is not None:  # a revocation between authentication and now found no stream
            self.revocations.opened(session)
        now = utcnow()
        async with self.db.session() as s:
            await RunnerRepository(s).connected(row.id, session.session_id, now, session.status(),
                                                processors=accepted, tags=tags,
                                                max_concurrent_jobs=session.max_slots, version=hello.version[:100],
                                                hostname=hello.hostname[:255])
        row.processors, row.tags, row.max_concurrent_jobs = accepted, tags, session.max_slots
        row.version, row.hostname, row.connect_time, row.last_heartbeat_time = (
            hello.version[:100], hello.hostname[:255], now, now)
        row.status = session.status()
        welcome.runner.CopyFrom(runner_pb(row, None, connected=True))
        return session, welcome

    async def _refused(self, row: Runner, names: list[str]) -> list[str]:
        """Declared processors this runner may not serve: not allowed, or (customer-owned) no such type."""
        allowed = set(row.allowed_processors or ())
        refused = [n for n in names if allowed and n not in allowed]
        if row.scope == CUSTOMER and (rest := [n for n in names if n not in refused]):
            known: set[str] = set()
            token = ""
            while True:
                page = await self.jobs.ListJobTypes(jobs_pb2.ListJobTypesRequest(
                    project_id="-", customer_id=str(row.customer_id), page_size=500, page_token=token),
                        timeout=10, wait_for_ready=True)
                known.update(t.name for t in page.job_types)
                token = page.next_page_token
                if not token:
                    break
            refused += [n for n in rest if n not in known]
        return list(dict.fromkeys(refused))

    async def _read(self, session: Session, requests: AsyncIterator[pb.ConnectRequest]) -> None:
        try:
            async for message in requests:
                session.last_seen = time.monotonic()
                try:
                    self._handle(session, message)
                except Exception:
                    log.exception("runner %s: message %s not handled", session.runner_id, message.WhichOneof("kind"))
                    session.send(stream_error(code_pb2.INTERNAL, "INTERNAL", "the message could not be handled",
                                              message_id=message.message_id))
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            session.close()

    def _handle(self, session: Session, message: pb.ConnectRequest) -> None:
        kind = message.WhichOneof("kind")
        mid = message.message_id

        def reject(code: int, reason: str, text: str) -> None:
            log.info("runner %s: %s rejected: %s %s", session.runner_id, kind, reason, text)
            session.send(stream_error(code, reason, text, message_id=mid))

        if kind == "heartbeat":
            if session.held and not session.extending:
                session.extending = True
                self._spawn(self._extend(session))
        elif kind == "result":
            self._result(session, message.result, reject)
        elif kind == "results":
            for r in message.results.items:
                self._result(session, r, reject)
        elif kind == "returned":
            g = message.returned
            if session.held.get(g.job_id) != g.lease_id or not g.lease_id:
                reject(FAILED_PRECONDITION, "LEASE_NOT_HELD",
                       f"job {g.job_id} lease {g.lease_id} is not held by this runner")
            else:
                session.finish(g.job_id, g.lease_id)
                self._spawn(self._release(session.runner_id, [jobs_pb2.LeaseRef(job_id=g.job_id, lease_id=g.lease_id)],
                                          jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_NOT_STARTED))
        elif kind == "slots":
            slots = message.slots
            if not 0 <= slots.free_slots <= session.room() or slots.last_assignment_seq > session.seq:
                reject(INVALID, "INVALID_SLOTS", "slots.free_slots must be 0 to max_concurrent_jobs + prefetch and "
                       "slots.last_assignment_seq at most the last seq sent")
            else:
                session.slots(message.slots)
        elif kind == "progress":
            p = message.progress
            if session.held.get(p.job_id) != p.lease_id or not p.lease_id:
                reject(FAILED_PRECONDITION, "LEASE_NOT_HELD", f"job {p.job_id} is not held by this runner")
            elif not 0 <= p.progress.percent <= 100:
                reject(INVALID, "INVALID_PROGRESS", "progress.percent must be 0 to 100")
            else:
                session.progress[p.job_id] = p.progress
        elif kind == "secure_access_open":
            o = message.secure_access_open
            if session.held.get(o.job_id) != o.lease_id or not o.lease_id:
                session.send(pb.ConnectResponse(secure_access_grant=pb.SecureAccessGrant(
                    request_id=o.request_id, error=status(code_pb2.PERMISSION_DENIED, "NOT_LEASE_HOLDER",
                                                          f"job {o.job_id} is not held by this runner"))))
            else:
                self._spawn(self._secure_access(session, o))
        elif kind == "secure_access_close":
            if not message.secure_access_close.access_id:
                reject(INVALID, "INVALID_SECURE_ACCESS", "secure_access_close.access_id is required")
            else:
                self._spawn(self._secure_access_close(session, message.secure_access_close))
        elif kind == "hello":
            reject(INVALID, "HELLO_REPEATED", "hello is sent once, first")
        else:
            reject(INVALID, "MALFORMED_MESSAGE", "the message has no known kind")

    def _result(self, session: Session, r: pb.JobResult, reject: Callable[[int, str, str], None]) -> None:
        outcome = r.result.outcome
        if not r.job_id or not r.lease_id:
            reject(INVALID, "INVALID_RESULT", "result.job_id and result.lease_id are required")
        elif outcome not in (AttemptOutcome.ATTEMPT_OUTCOME_SUCCEEDED, AttemptOutcome.ATTEMPT_OUTCOME_FAILED,
                             AttemptOutcome.ATTEMPT_OUTCOME_CANCELLED):
            reject(INVALID, "INVALID_RESULT", "result.result.outcome must be SUCCEEDED, FAILED or CANCELLED")
        elif (r.job_id, r.lease_id) in session.recent:
            reject(FAILED_PRECONDITION, "DUPLICATE_RESULT", f"job {r.job_id} lease {r.lease_id} already reported")
        elif session.held.get(r.job_id) != r.lease_id:
            reject(FAILED_PRECONDITION, "LEASE_NOT_HELD",
                   f"job {r.job_id} lease {r.lease_id} is not held by this runner")
        else:
            session.finish(r.job_id, r.lease_id, completing=True)
            self.results.submit(jobs_pb2.JobCompletion(job_id=r.job_id, lease_id=r.lease_id,
                                                       runner_id=session.runner_id, result=r.result))

    # ------------------------------------------------------------------ dispatch

    async def _lease_loop(self, session: Session) -> None:
        """One of the session's LEASE_CALLS lease loops: each asks for the free slots the others
        have not asked for, so slots freed while one call is under way are asked for at once
        instead of after it (a lease's round trip is most of a busy slot's cycle)."""
        delay = 0.2
        while not session.closed.is_set():
            # its free slots not yet asked for, none while its outgoing queue is full
            wanted = min(session.wanted() - session.requested, MAX_LEASE_JOBS)
            if wanted <= 0:
                session.changed.clear()
                if session.wanted() - session.requested <= 0:
                    await session.changed.wait()
                continue
            session.requested += wanted
            try:
                answer = await self.relay.LeaseJobs(jobs_pb2.LeaseJobsRequest(
                    runner_id=session.runner_id, session_id=session.session_id, job_type_names=session.processors,
                    tags=session.tags, customer_id=session.customer_id, max_jobs=wanted,
                    wait_ms=self.config.lease_wait_ms), timeout=self.config.lease_wait_ms / 1000 + 15,
                    wait_for_ready=True)
                delay = 0.2
            except grpc.aio.AioRpcError as exc:
                log.warning("LeaseJobs for runner %s failed: %s %s; retrying in %.1fs", session.runner_id,
                            exc.code().name, exc.details(), delay)
                session.requested -= wanted
                session.changed.set()  # the other loop may ask for these slots meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.closed.wait(), delay)
                delay = min(delay * 2, 5.0)
                continue
            session.requested -= wanted
            self._deliver(session, list(answer.leases))
            if len(answer.leases) < wanted:
                session.changed.set()  # slots asked for and not filled are free to ask for again

    def _deliver(self, session: Session, leases: list[jobs_pb2.JobLease]) -> None:
        back = []
        now = time.time()
        assigned: list[pb.JobAssignment] = []
        unsent: list[pb.JobAssignment] = []  # of a runner taking batches: the next stream message
        unsent_bytes = 0
        for lease in leases:
            # closed, draining or in maintenance since the call began, or not reading its stream
            # (its queue full): given back unstarted, so no new assignment waits behind the backlog
            if session.free() <= 0 or session.out.full():
                back.append(jobs_pb2.LeaseRef(job_id=lease.job_id, lease_id=lease.lease_id))
                continue
            assignment = session.assign(lease, send=not session.batches)
            assigned.append(assignment)
            if session.batches:
                unsent.append(assignment)
                unsent_bytes += lease.ByteSize()
                if session.out.bytes + unsent_bytes >= session.out.max_bytes:  # large payloads: the
                    _send_assignments(session, unsent)  # queue is full now, the rest go back
                    unsent, unsent_bytes = [], 0
            if lease.create_time.seconds:
                _dispatch.record(max(0.0, now - lease.create_time.ToMicroseconds() / 1e6))
        _send_assignments(session, unsent)
        if len(assigned) == 1:  # a span in the job's own trace (from its submit): handed to this runner
            lease = assigned[0].lease
            _tracer.start_span(f"assign {lease.job_type_name}", context=propagate.extract(dict(lease.trace_context)),
                               attributes={"innosystem.job.id": lease.job_id,
                                           "innosystem.runner.id": session.runner_id}).end()
        elif assigned:  # a batch: one span, linked to each job's trace
            _tracer.start_span("assign batch", links=links_to(x.lease.trace_context for x in assigned), attributes={
                "innosystem.batch.size": len(assigned), "innosystem.runner.id": session.runner_id}).end()
        if back:
            self._spawn(self._release(session.runner_id, back,
                                      jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_NOT_STARTED))

    async def _release(self, runner_id: str, leases: list[jobs_pb2.LeaseRef],
                       reason: jobs_pb2.LeaseReleaseReason.ValueType) -> None:
        for attempt in range(5):
            try:
                await self.jobs.ReleaseLeases(jobs_pb2.ReleaseLeasesRequest(runner_id=runner_id, leases=leases,
                                                                           reason=reason),
                                                                               timeout=10, wait_for_ready=True)
                return
            except grpc.aio.AioRpcError as exc:
                log.warning("ReleaseLeases for runner %s failed (%s); leases expire by themselves if this keeps "
                            "failing", runner_id, exc.code().name)
                await asyncio.sleep(0.2 * 2 ** attempt)

    async def release_all(self, runner_id: str) -> None:
        """A deleted runner: its stream is closed (control message) and its jobs go back to the queue."""
        await self._release(runner_id, [], jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_RUNNER_LOST)

    async def _extend(self, session: Session) -> None:
        try:
            held = list(session.held.items())
            if not held:
                return
            answer = await self.jobs.ExtendLeases(jobs_pb2.ExtendLeasesRequest(
                runner_id=session.runner_id,
                leases=[jobs_pb2.LeaseExtension(job_id=j, lease_id=lid, progress=session.progress.pop(j, None))
                        for j, lid in held]), timeout=10, wait_for_ready=True)
            for result in answer.results:
                if session.held.get(result.job_id) != result.lease_id:
                    continue
                if result.HasField("error"):
                    session.drop(result.job_id)
                    session.send(pb.ConnectResponse(cancellation=pb.JobCancellation(
                        job_id=result.job_id, lease_id=result.lease_id,
                        reason=pb.CancellationReason.CANCELLATION_REASON_LEASE_LOST, message=result.error.message)))
                elif result.cancel_requested:
                    self._cancel(session, result.job_id, result.lease_id, "")
        except grpc.aio.AioRpcError as exc:
            log.warning("ExtendLeases for runner %s failed: %s", session.runner_id, exc.code().name)
        finally:
            session.extending = False

    def _cancel(self, session: Session, job_id: str, lease_id: str, message: str) -> None:
        if job_id in session.cancel_sent:
            return
        session.cancel_sent.add(job_id)
        session.send(pb.ConnectResponse(cancellation=pb.JobCancellation(
            job_id=job_id, lease_id=lease_id, reason=pb.CancellationReason.CANCELLATION_REASON_CANCEL_REQUESTED,
            message=message)))

    def _ack(self, runner_id: str, acks: list[pb.ResultAck]) -> None:
        session = self.sessions.get(runner_id)
        if session is None:
            return
        for ack in acks:
            session.acked(ack.job_id, ack.lease_id)
        if session.batches and len(acks) > 1:
            session.send(pb.ConnectResponse(result_acks=pb.ResultAcks(items=acks)))
        else:
            for ack in acks:
                session.send(pb.ConnectResponse(result_ack=ack))

    async def _closed(self, session: Session) -> None:
        """After a stream ends: Offline now; after the heartbeat timeout, unless the runner came back,
        its leases go back to the queue (a lost runner's attempt counts)."""
        log.info("runner %s session %s closed", session.runner_id, session.session_id)
        if await self.live.close(session.runner_id, session.session_id):
            async with self.db.session() as s:
                await RunnerRepository(s).disconnected(uuid.UUID(session.runner_id), session.session_id, utcnow())
        if not session.held:
            return
        await asyncio.sleep(self.config.heartbeat_timeout_ms / 1000)
        if not self.stopping and await self.live.current_session(session.runner_id) is None:
            log.info("runner %s lost with %d jobs; releasing their leases", session.runner_id, len(session.held))
            await self._release(session.runner_id, [jobs_pb2.LeaseRef(job_id=j, lease_id=lid)
                                                    for j, lid in session.held.items()],
                                jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_RUNNER_LOST)

    # ------------------------------------------------------------------ secure access relay

    async def _secure_access(self, session: Session, o: pb.SecureAccessOpen) -> None:
        grant = pb.SecureAccessGrant(request_id=o.request_id)
        try:
            answer = await self.keys.SecureAccess(keys_pb2.SecureAccessRequest(
                runner_id=session.runner_id, job_id=o.job_id, lease_id=o.lease_id, processor=o.processor,
                purpose=o.purpose, fields=o.fields, client_reference=o.client_reference),
                    timeout=30, wait_for_ready=True)
            grant.access_id = answer.access_id
            grant.fields.extend(answer.fields)
        except grpc.aio.AioRpcError as exc:
            log.info("secure access for job %s refused: %s", o.job_id, exc.code().name)
            grant.error.CopyFrom(status(exc.code().value[0], "SECURE_ACCESS_FAILED", exc.details() or ""))
        session.send(pb.ConnectResponse(secure_access_grant=grant))

    async def _secure_access_close(self, session: Session, c: pb.SecureAccessClose) -> None:
        try:
            await self.keys.CompleteSecureAccess(keys_pb2.CompleteSecureAccessRequest(
                access_id=c.access_id, runner_id=session.runner_id, succeeded=c.succeeded, error=c.error,
                duration_ms=c.duration_ms, output_summary=c.output_summary), timeout=30, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            log.warning("CompleteSecureAccess %s failed: %s", c.access_id, exc.code().name)
            session.send(stream_error(exc.code().value[0], "SECURE_ACCESS_CLOSE_FAILED", exc.details() or ""))

    # ------------------------------------------------------------------ replica-wide loops

    async def tick_forever(self) -> None:
        """Silence detection, live state in Redis, heartbeats in PostgreSQL, and runners left
        connected by a replica that died."""
        try:
            await self._tick()
        except asyncio.CancelledError:
            # The replica is stopping (background loops are cancelled right after the server
            # stopped): the streams it held end, but their runners will reconnect elsewhere and
            # resume, so their leases are not released (they expire if the runners never return).
            self.stopping = True
            raise

    async def _tick(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000 / 2
        timeout = self.config.heartbeat_timeout_ms / 1000
        slow = self.config.slow_consumer_timeout_ms / 1000
        ticks = 0
        while True:
            await asyncio.sleep(interval)
            ticks += 1
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now - session.last_seen > timeout:
                    log.info("runner %s silent for %.1fs; closing its stream", session.runner_id,
                             now - session.last_seen)
                    session.close(stream_error(code_pb2.DEADLINE_EXCEEDED, "HEARTBEAT_TIMEOUT",
                                               f"no message for more than {timeout:.1f}s", fatal=True))
                elif session.out.full_for(now) > slow:
                    log.info("runner %s does not read its stream (%d messages, %d bytes queued); closing it",
                             session.runner_id, len(session.out), session.out.bytes)
                    session.close_slow(f"{len(session.out)} messages ({session.out.bytes} bytes) have waited, "
                                       f"over the limit of {session.out.max_messages} messages or "
                                       f"{session.out.max_bytes} bytes, for more than {slow:.1f}s")
            sessions = [s for s in self.sessions.values() if not s.closed.is_set()]
            stale = await self.live.update(
                (s.runner_id, s.session_id, {"free": s.free(), "running": s.busy(),
                                             "current_job_id": s.current_job_id, "draining": int(s.draining)})
                for s in sessions)
            for session in sessions:
                if session.runner_id in stale:
                    session.close(stream_error(FAILED_PRECONDITION, "SUPERSEDED",
                                               "a newer connection of this runner took over", fatal=True))
            if sessions and ticks % 2 == 0:  # the registry's heartbeat time: a second or so behind is fine
                when = utcnow()
                async with self.db.session() as s:
                    await RunnerRepository(s).heartbeat({uuid.UUID(x.runner_id): (x.session_id, x.status(), when)
                                                         for x in sessions if x.runner_id not in stale})
            if ticks % 10 == 0:
                await self._sweep_orphans()

    async def _sweep_orphans(self) -> None:
        async with self.db.session() as s:
            connected = await RunnerRepository(s).connected_ids()
        live = await self.live.get_many([str(r) for r, _ in connected])
        gone = [(r, sid) for r, sid in connected if str(r) not in live]
        if gone:
            async with self.db.session() as s:
                repo = RunnerRepository(s)
                for runner_id, session_id in gone:
                    await repo.disconnected(runner_id, session_id, utcnow())

    async def control_forever(self) -> None:
        """Registry changes from any replica: close a stream, supersede a session, maintenance."""
        pubsub = self.live.redis.pubsub()
        await pubsub.subscribe(CONTROL_CHANNEL)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    self._control(json.loads(message["data"]))
                except (ValueError, KeyError, TypeError):
                    log.warning("malformed control message ignored")
        finally:
            await pubsub.aclose()

    def _control(self, body: dict[str, Any]) -> None:
        session = self.sessions.get(str(body["runner_id"]))
        if session is None:
            return
        kind = body["kind"]
        if kind == "close":
            session.close(stream_error(code_pb2.UNAUTHENTICATED, "RUNNER_REVOKED", str(body.get("reason", "")),
                                       fatal=True))
        elif kind == "superseded" and body.get("session_id") != session.session_id:
            session.close(stream_error(FAILED_PRECONDITION, "SUPERSEDED", "a newer connection of this runner took over",
                                       fatal=True))
        elif kind == "settings":
            session.maintenance = bool(body.get("maintenance"))
            allowed = set(body.get("allowed_processors") or ())
            if allowed:
                session.processors = [p for p in session.processors if p in allowed]
            session.changed.set()

    async def cancellations_forever(self) -> None:
        """Cancel requests for running jobs, forwarded to the runners this replica holds."""
        delay = 0.2
        while True:
            try:
                async for notice in self.jobs.WatchCancellations(
                        jobs_pb2.WatchCancellationsRequest(replica=self.replica), wait_for_ready=True):
                    delay = 0.2
                    session = self.sessions.get(notice.runner_id)
                    if session is not None and session.held.get(notice.job_id) == notice.lease_id:
                        self._cancel(session, notice.job_id, notice.lease_id, notice.reason)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    log.info("WatchCancellations ended (%s); resubscribing in %.1fs", exc.code().name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def loops(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [self.results.run, self.tick_forever, self.control_forever, self.cancellations_forever]


def _send_assignments(session: Session, assigned: list[pb.JobAssignment]) -> None:
    """A batch of assignments in one stream message."""
    if assigned:
        session.send(pb.ConnectResponse(assignment=assigned[0]) if len(assigned) == 1 else
                     pb.ConnectResponse(assignments=pb.JobAssignments(items=assigned)))
