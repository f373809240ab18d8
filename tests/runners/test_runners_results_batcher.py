"""The runners service's result batches, with a stand-in for the jobs service's CompleteJobs
(pure batching logic: what is split, retried aside and acknowledged)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from innosystem.jobs.v1 import jobs_pb2
from innosystem.runners.v1 import runners_pb2 as pb
from services.runners.results import MAX_RESULT_BYTES, ResultBatcher


class _Refused(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class Jobs:
    """CompleteJobs that refuses any batch holding the job "poison", and fails `unavailable` calls first."""

    def __init__(self, unavailable: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.sent: dict[str, jobs_pb2.JobCompletion] = {}
        self.unavailable = unavailable

    async def CompleteJobs(self, request: jobs_pb2.CompleteJobsRequest, **_: Any) -> jobs_pb2.CompleteJobsResponse:
        ids = [c.job_id for c in request.completions]
        self.calls.append(ids)
        self.sent.update({c.job_id: c for c in request.completions})
        if self.unavailable:
            self.unavailable -= 1
            raise _Refused(grpc.StatusCode.UNAVAILABLE)
        if "poison" in ids:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT)
        return jobs_pb2.CompleteJobsResponse(results=[jobs_pb2.CompletionResult(job_id=i) for i in ids])


def _completion(job_id: str, size: int = 10) -> jobs_pb2.JobCompletion:
    c = jobs_pb2.JobCompletion(job_id=job_id, lease_id="l", runner_id="r")
    c.result.outcome = jobs_pb2.ATTEMPT_OUTCOME_SUCCEEDED
    c.result.result.update({"blob": "x" * size})
    return c


async def _acks(jobs: Jobs, completions: list[jobs_pb2.JobCompletion], wanted: int) -> dict[str, pb.ResultAck]:
    acks: dict[str, pb.ResultAck] = {}
    done = asyncio.Event()

    def ack(runner_id: str, batch: list[pb.ResultAck]) -> None:
        acks.update({a.job_id: a for a in batch})
        if len(acks) >= wanted:
            done.set()

    batcher = ResultBatcher(jobs, ack)  # type: ignore[arg-type]
    for c in completions:
        batcher.submit(c)
    runner = asyncio.create_task(batcher.run())
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        runner.cancel()
    return acks


async def test_a_refused_batch_is_split_until_the_refused_item_stands_alone() -> None:
    jobs = Jobs()
    acks = await _acks(jobs, [_completion(f"j{n}") for n in range(7)] + [_completion("poison")], 8)
    assert acks["poison"].HasField("error") and acks["poison"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(not acks[f"j{n}"].HasField("error") for n in range(7))
    assert ["poison"] in jobs.calls  # it stood alone at the end


async def test_an_outage_is_waited_out_aside_and_an_oversized_result_fails_alone() -> None:
    jobs = Jobs(unavailable=1)
    big = _completion("big", MAX_RESULT_BYTES + 1)
    acks = await _acks(jobs, [_completion("a"), big], 2)
    assert set(acks) == {"a", "big"} and not any(a.HasField("error") for a in acks.values())
    sent = jobs.sent["big"].result  # passed on as a failure of its attempt, not as 8 MiB of result
    assert sent.outcome == jobs_pb2.ATTEMPT_OUTCOME_FAILED and sent.error.type == "RESULT_TOO_LARGE"
    assert len(jobs.calls) >= 2  # the first call met the outage and was retried aside
