"""A runner that does not read its stream, against the real stack (issue 14 item 11): the
service stops leasing for it once its outgoing queue is full, closes the stream when the queue
stays full past the slow-consumer timeout (RESOURCE_EXHAUSTED `SLOW_CONSUMER`), and its jobs go
back to the queue as for any lost runner, to run elsewhere. The test stack sets a 1 MiB queue
mark and a 3 s timeout (conftest.FAST). The runner that then reads holds 24 jobs (8 slots and 16
prefetched) of 450 kB: a lease batch of them is sent in messages that each stop at the mark, the
rest given back, never one message past the queue's hard bound (which would close its stream)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import RunnerProcess, wait_for
from tests.runners.world import serve, tenant
from tests.support.runner_stream import RunnerStream

pytestmark = pytest.mark.e2e

JOBS, PAYLOAD_BYTES = 24, 450_000  # ~11 MB of assignments: more than the transport and the mark together


def _own_send_failed(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.INTERNAL and "SendMessageOperation" in (error.debug_error_string() or "")


async def test_a_runner_that_does_not_read_gets_no_more_jobs_and_is_closed_as_a_slow_consumer(
        stack: Stack, admin: Client, spawn_runner: Callable[..., RunnerProcess]) -> None:
    t = tenant(admin)
    echo = t.job_type("echo", own=True)  # its own runners serve it
    made = t.client.post("/v1/runners", {"name": f"stuck-{uuid.uuid4().hex[:6]}"})
    assert made.status == 200, made.body
    runner_id = made.body["runner"]["id"]

    stuck = RunnerStream(stack.address("runners"), made.body["token"])
    stuck.hello([echo["name"]], slots=100)  # slots are not the limit here: its unread stream is
    assert (await stuck.read()).WhichOneof("kind") == "welcome"
    stuck.keep_alive(0.2)  # alive, just not reading

    def submit_all() -> list[str]:
        return [t.submit(echo, {"data": "x" * PAYLOAD_BYTES, "n": n})["id"] for n in range(JOBS)]

    def offline() -> bool:
        return bool(t.client.get(f"/v1/runners/{runner_id}").body["status"] == "RUNNER_STATUS_OFFLINE")

    try:
        ids = await asyncio.to_thread(submit_all)  # REST calls off the loop: heartbeats keep going
        await asyncio.to_thread(wait_for, offline, 60, "the stuck runner's stream closed")

        await stuck.stop_heartbeats()

        # What it had not read yet is still in its transport, then the status names the reason.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            messages = await stuck.read_to_end()
            assert messages and "SLOW_CONSUMER" in messages[-1].error.status.message, messages[-1:]
            raise AssertionError("the stream ended with a fatal SLOW_CONSUMER error, not a status")
        if _own_send_failed(caught.value):
            # A heartbeat sent between the server's close and `offline` failed in the client's
            # transport, and grpc-python reports that send's failure in place of the status still
            # waiting behind the unread data: the reason is then read where the server logged it.
            assert stack.log_dir is not None
            assert f"runner {runner_id}: stream ended with SLOW_CONSUMER: the runner does not read its stream" in (
                stack.log_dir / "runners.log").read_text()
        else:
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
            assert (caught.value.details() or "").startswith("SLOW_CONSUMER: the runner does not read its stream")
    finally:
        await stuck.close()

    jobs: list[dict[str, Any]] = await asyncio.to_thread(lambda: [t.job(i) for i in ids])
    taken = [j for j in jobs if j.get("attemptCount", 0) >= 1]
    untouched = [j for j in jobs if j.get("attemptCount", 0) == 0]
    # It got jobs until its queue was full, then none: the rest never left the queue.
    assert taken and untouched, [(j["status"], j.get("attemptCount")) for j in jobs]

    # Its leases are released as for a lost runner; every job runs on a runner that reads.
    helper = await asyncio.to_thread(lambda: t.client.post("/v1/runners", {"name": "reader"}).body["token"])
    spawn_runner(helper, *serve(echo), "--slots", "8")
    done = await asyncio.to_thread(lambda: [t.wait_status(i, "JOB_STATUS_SUCCEEDED", timeout=90) for i in ids])
    assert all(j["runnerId"] != runner_id for j in done)
    assert sorted(j["attemptCount"] for j in done) == sorted([2] * len(taken) + [1] * len(untouched))
