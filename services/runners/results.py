"""Results of every stream on this replica, passed to the jobs service in batches.

A result waits here at most a few milliseconds for others (one `CompleteJobs` for many
runners), and a single result at idle goes at once: the batch is whatever arrived while the
previous call was in flight. The runner gets a ResultAck per result.

One result never fails another's: a result too large to pass is failed here on its own
(RESULT_TOO_LARGE), batches are bounded in bytes as well as count, a batch the jobs service
refuses as a whole is split until the item it refuses stands alone, and a batch waiting out an
outage retries in a task of its own (bounded in time), so it does not hold back the batches after
it. Otherwise at most `COMPLETE_CALLS` batches are in flight: the next one gathers while they
are, which is what keeps them large under load.
Completions are fenced by lease, so a repeat cannot apply twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from google.rpc import status_pb2
from opentelemetry import metrics

from innosystem.jobs.v1 import jobs_pb2
from innosystem.runners.v1 import runners_pb2 as pb

log = logging.getLogger(__name__)
_batched = metrics.get_meter("innosystem.runners").create_histogram(
    "runners.results.batch_size", unit="{result}", description="results passed to the jobs service in one call")

MAX_BATCH = 500
MAX_BATCH_BYTES = 8 * 1024 * 1024  # well under the 32 MiB gRPC message limit
MAX_RESULT_BYTES = 8 * 1024 * 1024  # a larger result could not pass in any batch; jobs' own limit is lower
LINGER_SECONDS = 0.002
# CompleteJobs calls in flight: while one waits for its commit and billing, the next carries the
# results that arrived meanwhile (a runner's slots free on arrival, so a slow ack would hold them).
COMPLETE_CALLS = 2
RETRY_SECONDS = 120.0  # past this the leases have expired anyway: the runner is told and the reaper ends them
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)


def too_large(completion: jobs_pb2.JobCompletion, limit: int = MAX_RESULT_BYTES) -> jobs_pb2.JobCompletion:
    """The completion as it may travel: a result over `limit` bytes becomes a failure of the attempt."""
    size = completion.result.ByteSize()
    if size <= limit:
        return completion
    out = jobs_pb2.JobCompletion(job_id=completion.job_id, lease_id=completion.lease_id, runner_id=completion.runner_id)
    out.result.outcome = jobs_pb2.ATTEMPT_OUTCOME_FAILED
    out.result.error.message = f"the result is {size} bytes, over the limit of {limit}"
    out.result.error.type = "RESULT_TOO_LARGE"
    return out


class Completes(Protocol):
    """The jobs service's CompleteJobs: the stub's method, or the relay stream's (relay.py)."""

    async def CompleteJobs(self, request: jobs_pb2.CompleteJobsRequest, timeout: float,  # noqa: ASYNC109
                           wait_for_ready: bool = True) -> jobs_pb2.CompleteJobsResponse: ...


class ResultBatcher:
    def __init__(self, jobs: Completes, ack: Callable[[str, list[pb.ResultAck]], None]) -> None:
        self._jobs = jobs
        self._ack = ack  # delivers a runner's acks to its session, wherever it is on this replica
        self._queue: deque[tuple[jobs_pb2.JobCompletion, int]] = deque()  # with its size in bytes
        self._arrived = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls = asyncio.Semaphore(COMPLETE_CALLS)

    def submit(self, completion: jobs_pb2.JobCompletion) -> None:
        completion = too_large(completion)
        self._queue.append((completion, completion.ByteSize()))
        self._arrived.set()

    async def run(self) -> None:
        while True:
            await self._calls.acquire()  # a batch gathers while the calls before it are in flight
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await asyncio.sleep(LINGER_SECONDS)  # let the other streams' results join
            first, size = self._queue.popleft()
            batch = [first]
            while len(batch) < MAX_BATCH and self._queue and size + self._queue[0][1] <= MAX_BATCH_BYTES:
                completion, n = self._queue.popleft()
                batch.append(completion)
                size += n
            task = asyncio.create_task(self._pass(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pass(self, batch: list[jobs_pb2.JobCompletion]) -> None:
        try:
            await self._complete(batch, retry_later=True)
        except Exception:  # never the end of the loop: every later result would wait forever
            log.exception("results of %d jobs not passed on", len(batch))
        finally:
            self._calls.release()

    async def _retry(self, batch: list[jobs_pb2.JobCompletion]) -> None:
        try:
            await self._complete(batch, retry_later=False)
        except Exception:
            log.exception("results of %d jobs not passed on", len(batch))

    async def _complete(self, batch: list[jobs_pb2.JobCompletion], retry_later: bool) -> None:
        delay, give_up = 0.1, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                answer = await self._jobs.CompleteJobs(jobs_pb2.CompleteJobsRequest(completions=batch),
                    timeout=30, wait_for_ready=True)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRYABLE and retry_later:  # wait out the outage aside
                    log.warning("CompleteJobs unavailable (%s); retrying %d results aside", exc.code().name,
                                len(batch))
                    task = asyncio.create_task(self._retry(batch))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
                if exc.code() in RETRYABLE and time.monotonic() + delay < give_up:
                    log.warning("CompleteJobs unavailable (%s); retrying %d results in %.1fs", exc.code().name,
                                len(batch), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if len(batch) > 1 and exc.code() not in RETRYABLE:  # find the item it refuses
                    mid = len(batch) // 2
                    log.warning("CompleteJobs refused a batch of %d (%s); splitting it", len(batch), exc.code().name)
                    await self._complete(batch[:mid], retry_later)
                    await self._complete(batch[mid:], retry_later)
                    return
                log.error("CompleteJobs refused %d results: %s %s", len(batch), exc.code().name, exc.details())
                error = status_pb2.Status(code=exc.code().value[0], message=exc.details() or "")
                self._deliver([(c.runner_id, pb.ResultAck(job_id=c.job_id, lease_id=c.lease_id, error=error))
                               for c in batch])
                return
        _batched.record(len(batch))
        acks = []
        for completion, result in zip(batch, answer.results, strict=False):
            ack = pb.ResultAck(job_id=completion.job_id, lease_id=completion.lease_id, job_status=result.status)
            if result.HasField("error"):
                log.info("result for job %s rejected: %s", completion.job_id, result.error.message)
                ack.error.CopyFrom(result.error)
            acks.append((completion.runner_id, ack))
        self._deliver(acks)

    def _deliver(self, acks: list[tuple[str, pb.ResultAck]]) -> None:
        """Each runner's acks together (one stream message for a runner that takes batches)."""
        by_runner: dict[str, list[pb.ResultAck]] = {}
        for runner_id, ack in acks:
            by_runner.setdefault(runner_id, []).append(ack)
        for runner_id, mine in by_runner.items():
            self._ack(runner_id, mine)
