"""A customer that loses its access loses its runners at once, against the real stack (issue 14
item 15): the runners service authenticates runner tokens itself, so it now asks tenancy whether
the owning customer (and its reseller) is active at every Connect, and follows tenancy's
revocations to close the live streams of those that are not; its own API-key cache (direct gRPC
callers) drops revoked keys at once too."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from innosystem.kit.errors import from_rpc_error
from innosystem.runners.v1 import runners_pb2 as pb
from innosystem.runners.v1 import runners_pb2_grpc
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import RunnerProcess, wait_for
from tests.runners.world import serve, tenant
from tests.support.runner_stream import RunnerStream

pytestmark = pytest.mark.e2e


def _runner(client: Client) -> tuple[str, str]:
    made = client.post("/v1/runners", {"name": f"revoked-{uuid.uuid4().hex[:6]}"})
    assert made.status == 200, made.body
    return made.body["runner"]["id"], made.body["token"]


async def _refused_at_connect(stack: Stack, token: str) -> grpc.aio.AioRpcError:
    stream = RunnerStream(stack.address("runners"), token)
    stream.hello(["echo"])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        return caught.value
    finally:
        await stream.close()


async def _welcomed(stack: Stack, token: str, job_type: str) -> RunnerStream:
    stream = RunnerStream(stack.address("runners"), token)
    stream.hello([job_type])
    assert (await stream.read()).WhichOneof("kind") == "welcome"
    stream.keep_alive(0.2)
    return stream


async def _closed_with(stream: RunnerStream, seconds: float = 10) -> pb.StreamError:
    """The fatal StreamError the service ends the stream with (within `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        message = await stream.read(max(0.1, deadline - time.monotonic()))
        if message.WhichOneof("kind") == "error" and message.error.fatal:
            return message.error


def test_a_deactivated_customers_runner_is_closed_at_once_and_its_token_refused_until_reactivated(
        stack: Stack, admin: Client, spawn_runner: Callable[..., RunnerProcess]) -> None:
    t = tenant(admin)
    echo = t.job_type("echo", own=True)  # its own runner serves it
    runner_id, token = _runner(t.client)
    process = spawn_runner(token, *serve(echo))
    t.wait_status(t.submit(echo, {"n": 1})["id"], "JOB_STATUS_SUCCEEDED")

    # A key rotation is announced as a revocation too, but the customer stays active: its runner
    # keeps its stream and serves the next job.
    rotated = t.client.post(f"/v1/customers/{t.customer_id}:rotateApiKey")
    assert rotated.status == 200, rotated.body
    t.client = admin.as_key(rotated.body["apiKey"])
    after_rotation = t.wait_status(t.submit(echo, {"n": 2})["id"], "JOB_STATUS_SUCCEEDED")
    assert after_rotation["runnerId"] == runner_id and process.proc.poll() is None

    assert admin.patch(f"/v1/customers/{t.customer_id}?updateMask=active", {"active": False}).status == 200
    # The stream is closed with a fatal error the SDK takes as final: the process exits 3 (before,
    # the runner stayed connected, and its token kept working, for as long as it liked).
    assert process.proc.wait(timeout=15) == 3, process.text()[-2000:]
    assert "CUSTOMER_INACTIVE" in process.text()
    wait_for(lambda: t.admin.get(f"/v1/runners/{runner_id}").body["status"] == "RUNNER_STATUS_OFFLINE",
             what="the runner offline")

    refused = asyncio.run(_refused_at_connect(stack, token))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and from_rpc_error(refused).reason == "CUSTOMER_INACTIVE"
    assert (refused.details() or "").startswith(f"customer {t.customer_id}, the owner of this runner, is inactive")

    # Nothing was destroyed: reactivated, the customer's token connects again.
    assert admin.patch(f"/v1/customers/{t.customer_id}?updateMask=active", {"active": True}).status == 200
    again = spawn_runner(token, *serve(echo))
    t.wait_status(t.submit(echo, {"n": 3})["id"], "JOB_STATUS_SUCCEEDED")
    assert again.proc.poll() is None


async def test_a_deactivated_reseller_or_a_deleted_customer_closes_exactly_their_runners_streams(
        stack: Stack, admin: Client) -> None:
    def setup() -> dict[str, Any]:
        reseller = admin.post("/v1/resellers", {"name": "Revoking", "email": "rev@example.com"}).body
        as_reseller = admin.as_key(reseller["apiKey"])
        resold = as_reseller.post("/v1/customers", {"name": "Resold", "email": "resold@example.com"}).body
        direct = tenant(admin)
        return {"reseller": reseller["reseller"]["id"], "resold": admin.as_key(resold["apiKey"]),
                "resold_id": resold["customer"]["id"], "direct": direct}

    world = await asyncio.to_thread(setup)
    direct = world["direct"]
    resold_runner = await asyncio.to_thread(_runner, world["resold"])
    direct_runner = await asyncio.to_thread(_runner, direct.client)
    resold_stream = await _welcomed(stack, resold_runner[1], "echo")
    direct_stream = await _welcomed(stack, direct_runner[1], "echo")
    try:
        deactivated = await asyncio.to_thread(admin.patch, f"/v1/resellers/{world['reseller']}?updateMask=active",
                                              {"active": False})
        assert deactivated.status == 200
        error = await _closed_with(resold_stream)
        assert error.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert error.status.message.startswith(f"CUSTOMER_INACTIVE: customer {world['resold_id']}")

        # The other customer's stream is still up: its deletion, next, is what closes it.
        deleted = await asyncio.to_thread(admin.delete, f"/v1/customers/{direct.customer_id}?force=true")
        assert deleted.status == 200, deleted.body
        error = await _closed_with(direct_stream)
        assert error.status.message.startswith(f"CUSTOMER_INACTIVE: customer {direct.customer_id}")
    finally:
        await resold_stream.close()
        await direct_stream.close()
    refused = await _refused_at_connect(stack, direct_runner[1])
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and from_rpc_error(refused).reason == "CUSTOMER_INACTIVE"


def test_the_runners_service_forgets_a_deactivated_customers_api_key_at_once(stack: Stack, admin: Client) -> None:
    """Direct gRPC callers of the runners service authenticate API keys through a 5 s cache; before,
    a deactivated customer's key kept working there that long."""
    t = tenant(admin)
    with grpc.insecure_channel(stack.address("runners")) as channel:
        stub = runners_pb2_grpc.RunnerServiceStub(channel)
        metadata = (("authorization", f"Bearer {t.client.api_key}"),)

        def refused() -> grpc.RpcError | None:
            try:
                stub.ListRunners(pb.ListRunnersRequest(), metadata=metadata, timeout=5)
                return None
            except grpc.RpcError as exc:
                return exc

        assert refused() is None and refused() is None  # the second answer came from the cache
        assert admin.patch(f"/v1/customers/{t.customer_id}?updateMask=active", {"active": False}).status == 200
        error = wait_for(refused, timeout=1.5, what="the key refused well within the cache's 5 s")
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        assert "inactive" in (error.details() or "")
