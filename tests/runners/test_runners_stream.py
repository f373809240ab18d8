"""The Connect stream's protocol against the real runners service: authentication, the
handshake, and bad input (each rejected with a StreamError, nothing changed, the stream up where
that is safe)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from innosystem.jobs.v1 import job_types_pb2, jobs_pb2
from innosystem.runners.v1 import runners_pb2 as pb
from innosystem.runners.v1 import runners_pb2_grpc
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import wait_for
from tests.runners.world import BASE_COST, tenant

pytestmark = pytest.mark.e2e


class Stream:
    """A hand-driven runner stream."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(stack.address("runners"))
        self.out: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self.call = runners_pb2_grpc.RunnerServiceStub(self.channel).Connect(
            self._requests(), metadata=(("authorization", f"Bearer {token}"),))

    async def _requests(self) -> AsyncIterator[pb.ConnectRequest]:
        while (message := await self.out.get()) is not None:
            yield message

    def send(self, **kind: Any) -> None:
        self.out.put_nowait(pb.ConnectRequest(**kind))

    def hello(self, processors: tuple[str, ...] = ("echo",), slots: int = 1, **extra: Any) -> None:
        self.send(hello=pb.Hello(processors=[pb.Processor(job_type_name=p) for p in processors],
                                 max_concurrent_jobs=slots, free_slots=slots, version="test", hostname="t", **extra))

    async def read(self, seconds: float = 10) -> pb.ConnectResponse:
        message = await asyncio.wait_for(self.call.read(), seconds)
        assert message is not grpc.aio.EOF, "the stream ended"
        return message

    async def read_kind(self, kind: str, seconds: float = 10) -> pb.ConnectResponse:
        while True:
            message = await self.read(seconds)
            if message.WhichOneof("kind") == kind:
                return message

    async def close(self) -> None:
        self.out.put_nowait(None)
        self.call.cancel()
        await self.channel.close()


def _runner(admin: Client, **body: Any) -> tuple[dict[str, Any], str]:
    created = admin.post("/v1/runners", {"name": f"stream-{uuid.uuid4().hex[:6]}", **body})
    assert created.status == 200, created.body
    return created.body["runner"], created.body["token"]


async def test_wrong_token_is_unauthenticated_with_a_clear_message(stack: Stack) -> None:
    stream = Stream(stack, "isr_" + "x" * 40)
    stream.hello()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "runner token" in (caught.value.details() or "")
    await stream.close()


async def test_an_api_key_cannot_open_a_runner_stream(stack: Stack) -> None:
    stream = Stream(stack, stack.admin_api_key)
    stream.hello()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await stream.close()


async def test_welcome_then_bad_messages_are_rejected_and_the_stream_stays_up(stack: Stack, admin: Client) -> None:
    runner, token = _runner(admin, allowedProcessors=["echo"])
    stream = Stream(stack, token)
    stream.hello(processors=("echo", "render-gpu"), slots=2)
    welcome = (await stream.read()).welcome
    assert welcome.session_id and welcome.runner.id == runner["id"]
    assert list(welcome.refused_processors) == ["render-gpu"]
    refused = await stream.read_kind("error")
    assert "PROCESSOR_REFUSED" in refused.error.status.message and not refused.error.fatal

    stream.send(message_id="m1")  # no kind at all
    malformed = await stream.read_kind("error")
    assert malformed.error.message_id == "m1" and "MALFORMED_MESSAGE" in malformed.error.status.message
    assert not malformed.error.fatal

    stranger = str(uuid.uuid4())
    stream.send(message_id="m2", result=pb.JobResult(job_id=stranger, lease_id="l1", result=jobs_pb2.AttemptResult(
        outcome=jobs_pb2.AttemptOutcome.ATTEMPT_OUTCOME_SUCCEEDED)))
    not_held = await stream.read_kind("error")
    assert not_held.error.message_id == "m2" and "LEASE_NOT_HELD" in not_held.error.status.message

    stream.send(message_id="m3", result=pb.JobResult(job_id=stranger, lease_id="l1", result=jobs_pb2.AttemptResult(
        outcome=jobs_pb2.AttemptOutcome.ATTEMPT_OUTCOME_RUNNING)))
    bad_outcome = await stream.read_kind("error")
    assert "INVALID_RESULT" in bad_outcome.error.status.message

    stream.send(message_id="m4", hello=pb.Hello(max_concurrent_jobs=1))
    again = await stream.read_kind("error")
    assert "HELLO_REPEATED" in again.error.status.message and not again.error.fatal

    stream.send(message_id="m5", slots=pb.SlotUpdate(free_slots=99))
    slots = await stream.read_kind("error")
    assert "INVALID_SLOTS" in slots.error.status.message

    stream.send(secure_access_open=pb.SecureAccessOpen(request_id="r1", job_id=stranger, lease_id="l1",
                                                       fields=["payload.card"]))
    grant = (await stream.read_kind("secure_access_grant")).secure_access_grant
    assert grant.request_id == "r1" and grant.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert not grant.fields

    # still up: the registry sees it connected, and a heartbeat is fine
    stream.send(heartbeat=pb.Heartbeat())
    got = wait_for(lambda: (r := admin.get(f"/v1/runners/{runner['id']}").body)["status"] == "RUNNER_STATUS_AVAILABLE"
                   and r, what="runner available")
    assert got["processors"] == ["echo"] and got["maxConcurrentJobs"] == 2 and got["version"] == "test"
    await stream.close()
    wait_for(lambda: admin.get(f"/v1/runners/{runner['id']}").body["status"] == "RUNNER_STATUS_OFFLINE",
             what="runner offline after its stream closed")


async def test_first_message_must_be_hello(stack: Stack, admin: Client) -> None:
    _, token = _runner(admin)
    stream = Stream(stack, token)
    stream.send(message_id="x", heartbeat=pb.Heartbeat())
    error = (await stream.read()).error
    assert error.fatal and "HELLO_REQUIRED" in error.status.message and error.message_id == "x"
    await stream.close()


async def test_invalid_hello_is_fatal_and_names_the_field(stack: Stack, admin: Client) -> None:
    _, token = _runner(admin)
    stream = Stream(stack, token)
    stream.send(hello=pb.Hello(max_concurrent_jobs=0))
    error = (await stream.read()).error
    assert error.fatal and "INVALID_SLOTS" in error.status.message
    await stream.close()


async def test_a_hello_holding_jobs_beyond_its_slots_is_checked(stack: Stack, admin: Client) -> None:
    _, token = _runner(admin)
    for hello, reason in ((pb.Hello(max_concurrent_jobs=1, prefetch=-1), "INVALID_PREFETCH"),
                          (pb.Hello(max_concurrent_jobs=1, prefetch=2, free_slots=4), "INVALID_SLOTS")):
        stream = Stream(stack, token)
        stream.send(hello=hello)
        error = (await stream.read()).error
        assert error.fatal and reason in error.status.message
        await stream.close()


async def test_silence_past_the_heartbeat_timeout_ends_the_session(stack: Stack, admin: Client) -> None:
    runner, token = _runner(admin)
    stream = Stream(stack, token)
    stream.hello()
    await stream.read_kind("welcome")
    error = (await stream.read_kind("error", seconds=15)).error
    assert error.fatal and "HEARTBEAT_TIMEOUT" in error.status.message
    wait_for(lambda: admin.get(f"/v1/runners/{runner['id']}").body["status"] == "RUNNER_STATUS_OFFLINE",
             what="silent runner offline")
    await stream.close()


async def test_a_newer_connection_supersedes_the_older(stack: Stack, admin: Client) -> None:
    _, token = _runner(admin)
    first = Stream(stack, token)
    first.hello()
    old = (await first.read_kind("welcome")).welcome
    second = Stream(stack, token)
    second.hello()
    new = (await second.read_kind("welcome")).welcome
    assert new.session_id != old.session_id
    error = (await first.read_kind("error")).error
    assert error.fatal and "SUPERSEDED" in error.status.message
    await first.close()
    await second.close()


async def test_rotating_the_token_closes_the_stream_and_refuses_the_old_token(stack: Stack, admin: Client) -> None:
    runner, token = _runner(admin)
    stream = Stream(stack, token)
    stream.hello()
    await stream.read_kind("welcome")
    rotated = admin.post(f"/v1/runners/{runner['id']}:rotateToken", {})
    assert rotated.status == 200 and rotated.body["token"].startswith("isr_") and rotated.body["token"] != token
    error = (await stream.read_kind("error")).error
    assert error.fatal and "RUNNER_REVOKED" in error.status.message
    await stream.close()
    old = Stream(stack, token)
    old.hello()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await old.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await old.close()
    fresh = Stream(stack, rotated.body["token"])
    fresh.hello()
    assert (await fresh.read_kind("welcome")).welcome.runner.id == runner["id"]
    await fresh.close()


async def test_a_customer_runner_is_refused_processors_for_types_the_customer_lacks(stack: Stack,
                                                                                 admin: Client) -> None:
    customer = admin.post("/v1/customers", {"name": "Stream Co", "email": "stream@example.com"}).body
    as_customer = admin.as_key(customer["apiKey"])
    project = as_customer.post(f"/v1/customers/{customer['customer']['id']}/projects", {"name": "p"}).body
    made = as_customer.post(f"/v1/projects/{project['id']}/jobTypes", {"name": "mine"})
    assert made.status == 200, made.body
    _, token = _runner(as_customer)
    stream = Stream(stack, token)
    stream.hello(processors=("mine", "someone-elses"))
    welcome = (await stream.read_kind("welcome")).welcome
    assert list(welcome.refused_processors) == ["someone-elses"]
    assert list(welcome.runner.processors) == ["mine"]
    await stream.close()




async def test_a_duplicate_result_is_rejected_and_the_job_charged_once(stack: Stack, admin: Client) -> None:


    t = tenant(admin)
    echo = t.job_type("echo")
    _, token = _runner(admin)
    stream = Stream(stack, token)
    stream.hello(processors=(echo["name"],))
    await stream.read_kind("welcome")
    before = t.balance()
    job = t.submit(echo, {"n": 1})
    assignment = (await stream.read_kind("assignment")).assignment
    assert assignment.seq == 1 and assignment.lease.job_id == job["id"] and assignment.lease.attempt == 1
    # secure access is relayed to the keys service; its refusal (the job is not encrypted, or the
    # keys service cannot serve it) comes back as a grant with an error, never as decrypted data
    stream.send(secure_access_open=pb.SecureAccessOpen(request_id="sa1", job_id=job["id"],
                                                       lease_id=assignment.lease.lease_id, fields=["payload.n"]))
    grant = (await stream.read_kind("secure_access_grant")).secure_access_grant
    assert grant.request_id == "sa1" and grant.error.code != 0 and not grant.fields
    result = pb.JobResult(job_id=job["id"], lease_id=assignment.lease.lease_id, result=jobs_pb2.AttemptResult(
        outcome=jobs_pb2.AttemptOutcome.ATTEMPT_OUTCOME_SUCCEEDED))
    stream.send(message_id="first", result=result)
    ack = (await stream.read_kind("result_ack")).result_ack
    assert not ack.HasField("error") and ack.job_status == job_types_pb2.JobStatus.JOB_STATUS_SUCCEEDED
    stream.send(message_id="again", result=result)
    duplicate = (await stream.read_kind("error")).error
    assert duplicate.message_id == "again" and "DUPLICATE_RESULT" in duplicate.status.message
    assert not duplicate.fatal
    wait_for(lambda: t.balance() == before - BASE_COST, what="charged")
    assert t.job(job["id"])["attemptCount"] == 1
    await stream.close()


async def test_a_result_after_the_lease_expired_is_rejected(stack: Stack, admin: Client) -> None:


    t = tenant(admin)
    echo = t.job_type("echo", max_attempts=1, timeout_seconds=1)
    _, token = _runner(admin)
    stream = Stream(stack, token)
    stream.hello(processors=(echo["name"],))
    await stream.read_kind("welcome")
    job = t.submit(echo)
    lease = (await stream.read_kind("assignment")).assignment.lease
    # keep the stream alive past the attempt's timeout: the lease expires, the job fails
    deadline = asyncio.get_running_loop().time() + 20
    while t.job(job["id"])["status"] != "JOB_STATUS_FAILED":
        assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
        stream.send(heartbeat=pb.Heartbeat())
        await asyncio.sleep(0.2)
    stream.send(message_id="late", result=pb.JobResult(job_id=job["id"], lease_id=lease.lease_id,
                                                       result=jobs_pb2.AttemptResult(
                                                           outcome=jobs_pb2.AttemptOutcome.ATTEMPT_OUTCOME_SUCCEEDED)))
    while True:
        answer = await stream.read()
        kind = answer.WhichOneof("kind")
        if kind == "error" and answer.error.message_id == "late":
            assert "LEASE_NOT_HELD" in answer.error.status.message
            break
        if kind == "result_ack" and answer.result_ack.job_id == job["id"]:
            assert answer.result_ack.HasField("error")
            break
    assert t.job(job["id"])["status"] == "JOB_STATUS_FAILED"
    await stream.close()
