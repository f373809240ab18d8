"""This replica's LeaseJobs and CompleteJobs, sent over one Relay stream to the jobs service.

Why one stream (services/jobs/relay.py): a message on an open stream costs each side about a
third of a unary call's CPU, and at moderate load a lease or a batch of results often carries one
job. `Relay` stands in for the stub's two methods, with their names and arguments, and fails as
they do (`grpc.aio.AioRpcError` with the unary call's code, details and error details), so the
lease loop and the result batcher keep their retry rules unchanged.

The stream is opened on first use and again after it ends; the requests under way when it ends
fail UNAVAILABLE, as unary calls to a restarting service would. A lease the jobs service answers
after its caller gave up (timed out or cancelled) is given back unstarted at once rather than
left to expire. A jobs service without the method (an older version, during a rolling upgrade)
is asked by unary calls, and asked for the stream again a minute later.

When the jobs service runs in this process (`innosystem serve jobs runners`), it offers its relay
handler (kit.inprocess) and each request is answered by it directly, with the same replies, the
same time bound and the same give-back of a lease answered after its caller gave up.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2

from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.kit import inprocess
from innosystem.kit.errors import rpc_error

log = logging.getLogger(__name__)

NOT_STARTED = jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_NOT_STARTED
UNARY_SECONDS = 60  # how long a jobs service without Relay is asked by unary calls before trying again


class _Unimplemented(Exception):
    """The jobs service has no Relay: ask by unary calls."""


def _unavailable(message: str) -> grpc.aio.AioRpcError:
    return rpc_error(status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message))


class _Stream:
    """One opened Relay call and the requests waiting for its answers."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future[jobs_pb2.RelayReply]] = {}
        self.abandoned: dict[int, str] = {}  # lease requests given up on → their runner


class Relay:
    def __init__(self, jobs: jobs_pb2_grpc.JobServiceStub) -> None:
        self._jobs = jobs
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()  # a stream takes one write at a time
        self._unary_until = 0.0  # asked by unary calls until then (a jobs service without Relay)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answering: set[asyncio.Future[jobs_pb2.RelayReply]] = set()  # in-process requests under way

    # the stub's two methods ----------------------------------------------------------------------
    async def LeaseJobs(self, request: jobs_pb2.LeaseJobsRequest, timeout: float,  # noqa: ASYNC109 - the stub's signature
                        wait_for_ready: bool = True) -> jobs_pb2.LeaseJobsResponse:
        reply = await self._ask(jobs_pb2.RelayRequest(lease=request), timeout, request.runner_id)
        if reply is None:
            answer: jobs_pb2.LeaseJobsResponse = await self._jobs.LeaseJobs(request, timeout=timeout,
                                                                             wait_for_ready=wait_for_ready)
            return answer
        return reply.lease

    async def CompleteJobs(self, request: jobs_pb2.CompleteJobsRequest, timeout: float,  # noqa: ASYNC109 - the stub's signature
                           wait_for_ready: bool = True) -> jobs_pb2.CompleteJobsResponse:
        reply = await self._ask(jobs_pb2.RelayRequest(complete=request), timeout, "")
        if reply is None:
            answer: jobs_pb2.CompleteJobsResponse = await self._jobs.CompleteJobs(request, timeout=timeout,
                                                                                   wait_for_ready=wait_for_ready)
            return answer
        return reply.complete

    # the stream ----------------------------------------------------------------------------------
    async def _ask(self, message: jobs_pb2.RelayRequest, seconds: float, runner_id: str) -> jobs_pb2.RelayReply | None:
        """The reply on the stream; None when the jobs service has no Relay (ask by a unary call)."""
        if (local := inprocess.find(inprocess.JOBS_RELAY)) is not None:
            return await self._local(local, message, seconds, runner_id)
        if time.monotonic() < self._unary_until:
            return None
        try:
            return await self._exchange(message, seconds, runner_id)
        except _Unimplemented:
            return None

    async def _exchange(self, message: jobs_pb2.RelayRequest, seconds: float, runner_id: str) -> jobs_pb2.RelayReply:
        message.id = key = next(self._ids)
        stream = self._open()
        future: asyncio.Future[jobs_pb2.RelayReply] = asyncio.get_running_loop().create_future()
        stream.pending[key] = future
        answered = False
        try:
            # One bound for the whole exchange: a write waits while the jobs service is unreachable
            # (wait_for_ready) and holds the lock meanwhile.
            async with asyncio.timeout(seconds):
                try:
                    async with self._writing:
                        await stream.call.write(message)
                except grpc.aio.AioRpcError:  # the stream ended: its reader fails what waits on it
                    pass
                except Exception as exc:  # written after the call finished (grpc's UsageError)
                    self._drop(stream)
                    if not future.done():
                        future.set_exception(_unavailable(f"the relay stream to the jobs service ended ({exc})"))
                reply = await future
            answered = True
        except TimeoutError:  # every request is answered well within its timeout: the stream is stuck
            self._drop(stream)
            raise rpc_error(status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED,
                                              message=f"no answer on the relay stream in {seconds:g} s")) from None
        finally:
            stream.pending.pop(key, None)
            if not answered and runner_id:
                stream.abandoned[key] = runner_id  # its leases, should they still come, go back
        if reply.HasField("error"):
            raise rpc_error(reply.error)
        return reply

    async def _local(self, answer: inprocess.Handler, message: jobs_pb2.RelayRequest, seconds: float,
                     runner_id: str) -> jobs_pb2.RelayReply:
        """The jobs service in this process answers; its task goes on if the caller gives up, as
        a request on the stream would, and the leases it then grants go back."""
        task: asyncio.Future[jobs_pb2.RelayReply] = asyncio.ensure_future(answer(message))
        self._answering.add(task)  # cancelled by close, as the stream's requests are when it ends
        task.add_done_callback(self._answering.discard)
        try:
            reply = await asyncio.wait_for(asyncio.shield(task), seconds)
        except BaseException as exc:
            if runner_id:
                task.add_done_callback(lambda t: self._abandoned(t, runner_id))
            if isinstance(exc, TimeoutError):
                late = f"no answer from the jobs service in {seconds:g} s"
                raise rpc_error(status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=late)) from None
            raise
        if reply.HasField("error"):
            raise rpc_error(reply.error)
        return reply

    def _abandoned(self, task: asyncio.Future[jobs_pb2.RelayReply], runner_id: str) -> None:
        if not task.cancelled() and task.exception() is None and task.result().lease.leases:
            self._spawn(self._give_back(runner_id, list(task.result().lease.leases)))

    def _open(self) -> _Stream:
        if self._stream is None:
            # Opened outside the caller's context: a deadline or trace of the RPC being served
            # (kit.clients carries them into calls) must not bind the stream all requests share.
            self._stream = _Stream(contextvars.Context().run(self._jobs.Relay, wait_for_ready=True))
            self._spawn(self._read(self._stream))
        return self._stream

    def _drop(self, stream: _Stream) -> None:
        """Ends a stream that cannot be used any more; the next request opens another."""
        if self._stream is stream:
            self._stream = None
        stream.call.cancel()

    async def _read(self, stream: _Stream) -> None:
        ended: Exception = _unavailable("the relay stream to the jobs service ended")
        try:
            async for reply in stream.call:
                future = stream.pending.get(reply.id)
                if future is not None and not future.done():
                    future.set_result(reply)
                elif (runner_id := stream.abandoned.pop(reply.id, None)) and reply.lease.leases:
                    self._spawn(self._give_back(runner_id, list(reply.lease.leases)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("the jobs service has no Relay stream: leases and results go by unary calls for %d s",
                         UNARY_SECONDS)
                self._unary_until = time.monotonic() + UNARY_SECONDS
                ended = _Unimplemented()
            elif exc.code() != grpc.StatusCode.CANCELLED:
                log.warning("relay stream to the jobs service ended: %s %s", exc.code().name, exc.details())
                ended = _unavailable(f"the relay stream to the jobs service ended: {exc.code().name} "
                                     f"{exc.details()}")
        finally:
            if self._stream is stream:
                self._stream = None
            for future in stream.pending.values():
                if not future.done():
                    future.set_exception(ended)

    async def _give_back(self, runner_id: str, leases: list[jobs_pb2.JobLease]) -> None:
        refs = [jobs_pb2.LeaseRef(job_id=lease.job_id, lease_id=lease.lease_id) for lease in leases]
        try:
            await self._jobs.ReleaseLeases(jobs_pb2.ReleaseLeasesRequest(runner_id=runner_id, leases=refs,
                                                                         reason=NOT_STARTED), timeout=10)
        except grpc.aio.AioRpcError as exc:  # they expire with their lease TTL instead
            log.warning("%d leases asked for and not awaited could not be given back: %s", len(refs),
                        exc.code().name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._stream is not None:
            self._drop(self._stream)
        for task in [*self._answering, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._answering, *self._tasks, return_exceptions=True)
