"""Results of every stream on this replica, passed to the jobs service in batches.

A result waits here at most a few milliseconds for others (one `CompleteJobs` for many
runners), and a single result at idle goes at once: the batch is whatever arrived while the
previous call was in flight. The runner gets a ResultAck per result. A batch the jobs service
did not answer is retried (completions are fenced by lease, so a repeat cannot apply twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from google.rpc import status_pb2
from opentelemetry import metrics

from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.runners.v1 import runners_pb2 as pb

log = logging.getLogger(__name__)
_batched = metrics.get_meter("innosystem.runners").create_histogram(
    "runners.results.batch_size", unit="{result}", description="results passed to the jobs service in one call")

MAX_BATCH = 500
LINGER_SECONDS = 0.002


class ResultBatcher:
    def __init__(self, jobs: jobs_pb2_grpc.JobServiceStub, ack: Callable[[str, pb.ResultAck], None]) -> None:
        self._jobs = jobs
        self._ack = ack  # delivers an ack to the runner's session, wherever it is on this replica
        self._queue: asyncio.Queue[jobs_pb2.JobCompletion] = asyncio.Queue()

    def submit(self, completion: jobs_pb2.JobCompletion) -> None:
        self._queue.put_nowait(completion)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(LINGER_SECONDS)  # let the other streams' results join
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._complete(batch)

    async def _complete(self, batch: list[jobs_pb2.JobCompletion]) -> None:
        delay = 0.1
        while True:
            try:
                answer = await self._jobs.CompleteJobs(jobs_pb2.CompleteJobsRequest(completions=batch),
                    timeout=30, wait_for_ready=True)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED):
                    log.error("CompleteJobs refused a batch of %d: %s %s", len(batch), exc.code().name,
                              exc.details())
                    error = status_pb2.Status(code=exc.code().value[0], message=exc.details() or "")
                    for c in batch:
                        self._ack(c.runner_id, pb.ResultAck(job_id=c.job_id, lease_id=c.lease_id, error=error))
                    return
                log.warning("CompleteJobs unavailable (%s); retrying %d results in %.1fs", exc.code().name,
                            len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        _batched.record(len(batch))
        for completion, result in zip(batch, answer.results, strict=False):
            if result.HasField("error"):
                log.info("result for job %s rejected: %s", completion.job_id, result.error.message)
            ack = pb.ResultAck(job_id=completion.job_id, lease_id=completion.lease_id, job_status=result.status)
            if result.HasField("error"):
                ack.error.CopyFrom(result.error)
            self._ack(completion.runner_id, ack)
