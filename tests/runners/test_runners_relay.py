"""The Relay stream between the runners and jobs services (services/{jobs,runners}/relay.py).

Against the real jobs service: each request on one stream is answered on its own, a refused one
as the unary call would be refused, and the stream goes on. Against a stand-in jobs server (a
real gRPC server in this process): an older jobs service without Relay is asked by unary calls, a
lease answered after its caller gave up goes back unstarted, and a stream that ends fails what
is under way UNAVAILABLE and is opened again for the next request. With the jobs service in the
same process (kit.inprocess), its handler answers with the same replies and errors, the stream is
never opened, and a lease answered after its caller gave up goes back as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from innosystem.embedded import free_port
from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.kit import inprocess, principal
from innosystem.kit.errors import InvalidArgument, from_rpc_error, rpc_error, to_status
from innosystem.stack import Stack
from services.runners.relay import Relay

RELAY = "/innosystem.jobs.v1.JobService/Relay"


def _lease(max_jobs: int = 1, wait_ms: int = 0) -> jobs_pb2.LeaseJobsRequest:
    return jobs_pb2.LeaseJobsRequest(runner_id=str(uuid.uuid4()), job_type_names=["nothing-of-this-name"],
                                     max_jobs=max_jobs, wait_ms=wait_ms)


@pytest.mark.e2e
async def test_each_request_on_the_stream_is_answered_on_its_own(stack: Stack) -> None:
    signed = principal.sign(principal.service_principal("runners"), stack.internal_secret.encode(), RELAY)
    async with grpc.aio.insecure_channel(stack.address("jobs")) as channel:
        call = jobs_pb2_grpc.JobServiceStub(channel).Relay(metadata=signed, timeout=30)
        await call.write(jobs_pb2.RelayRequest(id=7, lease=_lease(max_jobs=0)))  # refused: max_jobs
        await call.write(jobs_pb2.RelayRequest(id=8, lease=_lease()))
        await call.write(jobs_pb2.RelayRequest(id=9, complete=jobs_pb2.CompleteJobsRequest(completions=[
            jobs_pb2.JobCompletion(job_id=str(uuid.uuid4()), lease_id=str(uuid.uuid4()), runner_id="r",
                                   result=jobs_pb2.AttemptResult(outcome=jobs_pb2.ATTEMPT_OUTCOME_SUCCEEDED))])))
        await call.write(jobs_pb2.RelayRequest(id=10))  # neither a lease nor a result
        await call.done_writing()
        replies = {reply.id: reply async for reply in call}
    assert await call.code() == grpc.StatusCode.OK
    assert sorted(replies) == [7, 8, 9, 10]
    refused = from_rpc_error(rpc_error(replies[7].error))  # as the unary call would have failed
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in refused.violations] == ["max_jobs"]
    assert replies[8].WhichOneof("kind") == "lease" and not replies[8].lease.leases  # no such type: nothing
    (unknown,) = replies[9].complete.results  # answered item by item, as CompleteJobs answers
    assert unknown.HasField("error")
    assert replies[10].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


class _Jobs:
    """A stand-in jobs service: LeaseJobs and ReleaseLeases by unary call, and Relay as each test
    needs it (or none at all, as an older jobs service)."""

    def __init__(self, relay: Any = None) -> None:
        self.relay = relay
        self.unary_leases = 0
        self.released: list[jobs_pb2.ReleaseLeasesRequest] = []
        self.streams = 0

    async def LeaseJobs(self, request: jobs_pb2.LeaseJobsRequest, context: Any) -> jobs_pb2.LeaseJobsResponse:
        self.unary_leases += 1
        return jobs_pb2.LeaseJobsResponse(leases=[jobs_pb2.JobLease(job_id="unary", lease_id="l")])

    async def ReleaseLeases(self, request: jobs_pb2.ReleaseLeasesRequest,
                            context: Any) -> jobs_pb2.ReleaseLeasesResponse:
        self.released.append(request)
        return jobs_pb2.ReleaseLeasesResponse()

    async def Relay(self, requests: AsyncIterator[jobs_pb2.RelayRequest], context: Any) -> None:
        self.streams += 1
        await self.relay(self, requests, context)


@asynccontextmanager
async def _relay_to(jobs: _Jobs) -> AsyncIterator[Relay]:
    """A Relay to `jobs` served by a real gRPC server in this process."""
    methods = {
        "LeaseJobs": grpc.unary_unary_rpc_method_handler(
            jobs.LeaseJobs, request_deserializer=jobs_pb2.LeaseJobsRequest.FromString,
            response_serializer=jobs_pb2.LeaseJobsResponse.SerializeToString),
        "ReleaseLeases": grpc.unary_unary_rpc_method_handler(
            jobs.ReleaseLeases, request_deserializer=jobs_pb2.ReleaseLeasesRequest.FromString,
            response_serializer=jobs_pb2.ReleaseLeasesResponse.SerializeToString)}
    if jobs.relay is not None:
        methods["Relay"] = grpc.stream_stream_rpc_method_handler(
            jobs.Relay, request_deserializer=jobs_pb2.RelayRequest.FromString,
            response_serializer=jobs_pb2.RelayReply.SerializeToString)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("innosystem.jobs.v1.JobService", methods),))
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            relay = Relay(jobs_pb2_grpc.JobServiceStub(channel))
            try:
                yield relay
            finally:
                await relay.close()
    finally:
        await server.stop(None)


async def test_a_jobs_service_without_relay_is_asked_by_unary_calls() -> None:
    jobs = _Jobs()
    async with _relay_to(jobs) as relay:
        first = await relay.LeaseJobs(_lease(), timeout=5)
        second = await relay.LeaseJobs(_lease(), timeout=5)
    assert [lease.job_id for lease in (*first.leases, *second.leases)] == ["unary", "unary"]
    assert jobs.unary_leases == 2


async def test_a_lease_answered_after_its_caller_gave_up_goes_back_unstarted() -> None:
    async def late(jobs: _Jobs, requests: AsyncIterator[jobs_pb2.RelayRequest], context: Any) -> None:
        async for message in requests:
            await asyncio.sleep(0.5)  # after its caller was cancelled
            await context.write(jobs_pb2.RelayReply(id=message.id, lease=jobs_pb2.LeaseJobsResponse(
                leases=[jobs_pb2.JobLease(job_id="j1", lease_id="l1")])))

    jobs = _Jobs(late)
    async with _relay_to(jobs) as relay:
        request = _lease()
        asking = asyncio.create_task(relay.LeaseJobs(request, timeout=5))
        await asyncio.sleep(0.1)
        asking.cancel()
        await asyncio.to_thread(_wait, lambda: jobs.released)
    assert asking.cancelled()
    (given_back,) = jobs.released
    assert given_back.runner_id == request.runner_id
    assert [(r.job_id, r.lease_id) for r in given_back.leases] == [("j1", "l1")]
    assert given_back.reason == jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_NOT_STARTED


async def test_a_stream_without_an_answer_in_time_is_dropped_and_another_one_opened() -> None:
    async def stuck_first(jobs: _Jobs, requests: AsyncIterator[jobs_pb2.RelayRequest], context: Any) -> None:
        stream = jobs.streams
        async for message in requests:
            if stream == 1:
                await asyncio.sleep(3600)  # never answers
            await context.write(jobs_pb2.RelayReply(id=message.id, lease=jobs_pb2.LeaseJobsResponse()))

    jobs = _Jobs(stuck_first)
    async with _relay_to(jobs) as relay:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await relay.LeaseJobs(_lease(), timeout=0.2)
        answer = await relay.LeaseJobs(_lease(), timeout=5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answer.leases == [] and jobs.streams == 2


async def test_a_stream_that_ends_fails_what_is_under_way_and_is_opened_again() -> None:
    async def first_ends(jobs: _Jobs, requests: AsyncIterator[jobs_pb2.RelayRequest], context: Any) -> None:
        async for message in requests:
            if jobs.streams == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            await context.write(jobs_pb2.RelayReply(id=message.id, complete=jobs_pb2.CompleteJobsResponse(
                results=[jobs_pb2.CompletionResult(job_id="done")])))

    jobs = _Jobs(first_ends)
    async with _relay_to(jobs) as relay:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await relay.CompleteJobs(jobs_pb2.CompleteJobsRequest(), timeout=5)
        answer = await relay.CompleteJobs(jobs_pb2.CompleteJobsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [r.job_id for r in answer.results] == ["done"]
    assert jobs.streams == 2


async def test_an_unreachable_jobs_service_fails_the_request_at_its_timeout() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:  # nobody listens
        relay = Relay(jobs_pb2_grpc.JobServiceStub(channel))
        asked = [asyncio.create_task(relay.CompleteJobs(jobs_pb2.CompleteJobsRequest(), timeout=0.3))
                 for _ in range(3)]  # the later ones wait for the first one's write
        outcomes = await asyncio.gather(*asked, return_exceptions=True)
        await relay.close()
    assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.DEADLINE_EXCEEDED
               for o in outcomes), outcomes


def _refusal() -> Any:
    return to_status(InvalidArgument("max_jobs must be 1 to 1000", field="max_jobs", reason="INVALID_MAX_JOBS"),
                     "jobs.innosystem")


@pytest.mark.parametrize("where", ["stream", "in-process"])
async def test_a_refusal_carries_the_unary_calls_reason_and_field(where: str) -> None:
    async def refuses(jobs: _Jobs, requests: AsyncIterator[jobs_pb2.RelayRequest], context: Any) -> None:
        async for message in requests:
            await context.write(jobs_pb2.RelayReply(id=message.id, error=_refusal()))

    async def refuses_here(message: jobs_pb2.RelayRequest) -> jobs_pb2.RelayReply:
        return jobs_pb2.RelayReply(error=_refusal())

    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(_relay_to(_Jobs(refuses)))
        if where == "in-process":
            await stack.enter_async_context(_offered(refuses_here))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await relay.LeaseJobs(_lease(max_jobs=0), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    refused = from_rpc_error(err.value)
    assert refused.reason == "INVALID_MAX_JOBS"
    assert refused.violations == [("max_jobs", "max_jobs must be 1 to 1000")]


def _wait(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not given back in time"
        time.sleep(0.02)


@asynccontextmanager
async def _offered(answer: Any) -> AsyncIterator[None]:
    """`answer` offered as the jobs service's relay in this process, as `serve jobs runners` does."""
    inprocess.offer(inprocess.JOBS_RELAY, answer)
    try:
        yield
    finally:
        inprocess.withdraw(inprocess.JOBS_RELAY, answer)


async def test_the_jobs_service_in_this_process_answers_without_the_stream() -> None:
    asked: list[str] = []

    async def answer(message: jobs_pb2.RelayRequest) -> jobs_pb2.RelayReply:
        asked.append(message.WhichOneof("kind"))
        if message.HasField("lease"):
            return jobs_pb2.RelayReply(lease=jobs_pb2.LeaseJobsResponse(
                leases=[jobs_pb2.JobLease(job_id="here", lease_id="l")]))
        return jobs_pb2.RelayReply(complete=jobs_pb2.CompleteJobsResponse(
            results=[jobs_pb2.CompletionResult(job_id=c.job_id) for c in message.complete.completions]))

    jobs = _Jobs(lambda *_: asyncio.sleep(3600))
    async with _relay_to(jobs) as relay, _offered(answer):
        leased = await relay.LeaseJobs(_lease(), timeout=5)
        completed = await relay.CompleteJobs(jobs_pb2.CompleteJobsRequest(completions=[
            jobs_pb2.JobCompletion(job_id="here", lease_id="l", runner_id="r")]), timeout=5)
    assert [lease.job_id for lease in leased.leases] == ["here"]
    assert [r.job_id for r in completed.results] == ["here"]
    assert asked == ["lease", "complete"]
    assert jobs.streams == 0 and jobs.unary_leases == 0  # neither the stream nor a unary call


@pytest.mark.parametrize("gives_up", ["timeout", "cancel"])
async def test_an_in_process_lease_answered_after_its_caller_gave_up_goes_back(gives_up: str) -> None:
    async def late(message: jobs_pb2.RelayRequest) -> jobs_pb2.RelayReply:
        await asyncio.sleep(0.5)  # after its caller gave up
        return jobs_pb2.RelayReply(lease=jobs_pb2.LeaseJobsResponse(
            leases=[jobs_pb2.JobLease(job_id="j1", lease_id="l1")]))

    jobs = _Jobs()
    async with _relay_to(jobs) as relay, _offered(late):
        request = _lease()
        asking = asyncio.create_task(relay.LeaseJobs(request, timeout=0.2 if gives_up == "timeout" else 5))
        if gives_up == "cancel":
            await asyncio.sleep(0.1)
            asking.cancel()
        outcome = (await asyncio.gather(asking, return_exceptions=True))[0]
        await asyncio.to_thread(_wait, lambda: jobs.released)
    if gives_up == "timeout":
        assert isinstance(outcome, grpc.aio.AioRpcError) and outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert isinstance(outcome, asyncio.CancelledError)
    (given_back,) = jobs.released
    assert given_back.runner_id == request.runner_id
    assert [(r.job_id, r.lease_id) for r in given_back.leases] == [("j1", "l1")]
    assert given_back.reason == jobs_pb2.LeaseReleaseReason.LEASE_RELEASE_REASON_NOT_STARTED


async def test_a_withdrawn_jobs_service_is_asked_over_grpc_again() -> None:
    async def never(message: jobs_pb2.RelayRequest) -> jobs_pb2.RelayReply:
        raise AssertionError("withdrawn: not to be asked")

    jobs = _Jobs()  # without Relay: asked by unary calls
    async with _relay_to(jobs) as relay:
        async with _offered(never):
            pass
        answer = await relay.LeaseJobs(_lease(), timeout=5)
    assert [lease.job_id for lease in answer.leases] == ["unary"] and jobs.unary_leases == 1
