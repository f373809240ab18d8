"""Two replicas of the runners service on one PostgreSQL and Redis: any replica holds any stream;
a newer connection on one supersedes the older on the other; registry changes made through one
(delete, maintenance) reach streams held by the other; dispatch and cancellation work on both."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from innosystem.embedded import free_port
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import FAST, RunnerProcess, wait_for
from tests.runners.world import serve, shared_runner, tenant

pytestmark = pytest.mark.e2e

Spawn = Callable[..., RunnerProcess]
LEASE_WAIT_SECONDS = int(FAST["INNOSYSTEM_RUNNERS_LEASE_WAIT_MS"]) / 1000


@pytest.fixture(scope="module")
def second_replica(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("replica") / "runners-2.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "innosystem.cli", "serve", "runners"],
                            env={**stack.env(), "INNOSYSTEM_LISTEN": f"127.0.0.1:{port}",
                                 "INNOSYSTEM_METRICS_PORT": "0"}, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"

    def serving() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    wait_for(serving, 60, what="second runners replica serving")
    yield address
    proc.terminate()
    proc.wait(20)
    log.close()


def _spawn_on(stack: Stack, address: str, token: str, args: list[str], log: Path) -> RunnerProcess:
    runner = RunnerProcess.__new__(RunnerProcess)
    original = stack.address
    stack.address = lambda name: address if name == "runners" else original(name)  # type: ignore[method-assign]
    try:
        RunnerProcess.__init__(runner, stack, token, args, log)
    finally:
        del stack.address
    return runner


def test_two_replicas_share_runners_sessions_and_control(stack: Stack, admin: Client, second_replica: str,
                                                        tmp_path: Path) -> None:
    t = tenant(admin)
    sleep, echo = t.job_type("sleep"), t.job_type("echo")
    runner_id, token = shared_runner(admin)
    started: list[RunnerProcess] = []
    try:
        on_first = _spawn_on(stack, stack.address("runners"), token, [*serve(sleep), *serve(echo)],
                             tmp_path / "a.log")
        started.append(on_first)
        t.wait_status(t.submit(echo)["id"], "JOB_STATUS_SUCCEEDED")
        # the same runner connects to the other replica: the older session is superseded there
        on_second = _spawn_on(stack, second_replica, token, [*serve(sleep), *serve(echo)], tmp_path / "b.log")
        started.append(on_second)
        wait_for(lambda: "SUPERSEDED" in on_first.text(), what="first connection superseded")
        assert on_first.proc.wait(20) == 3  # another process holds its token now: it stops, not flaps
        # The first replica lets the superseded session's long poll run out (cancelling it could drop
        # a job leased meanwhile) and gives back, unstarted, whatever it brings: wait it out, so the
        # job below is the second replica's from the start.
        time.sleep(LEASE_WAIT_SECONDS + 0.5)
        # work and cancellation flow through the second replica
        job = t.submit(sleep, {"seconds": 120})["id"]
        t.wait_status(job, "JOB_STATUS_RUNNING")
        assert t.client.post(f"/v1/jobs/{job}:cancel", {}).status == 200
        cancelled = t.wait_status(job, "JOB_STATUS_CANCELLED")
        history = [(c["status"], c.get("reason")) for c in t.job(job).get("statusHistory", [])]
        assert cancelled["attempts"][-1]["outcome"] == "ATTEMPT_OUTCOME_CANCELLED", history  # the runner stopped it
        wait_for(lambda: "CANCEL_REQUESTED" in on_second.text(), 10, what=f"the runner told to stop: {history}")
        # maintenance set through the gateway (another replica) reaches the stream
        admin.patch(f"/v1/runners/{runner_id}?updateMask=status", {"status": "RUNNER_STATUS_MAINTENANCE"})
        admin.patch(f"/v1/runners/{runner_id}?updateMask=status", {"status": "RUNNER_STATUS_AVAILABLE"})
        assert t.wait_status(t.submit(echo)["id"], "JOB_STATUS_SUCCEEDED")["runnerId"] == runner_id
        # deleting it closes its stream, wherever it is held
        assert admin.delete(f"/v1/runners/{runner_id}").status == 200
        wait_for(lambda: "RUNNER_REVOKED" in on_second.text() or on_second.proc.poll() is not None,
                 what="deleted runner's stream closed")
        assert on_second.proc.wait(30) == 3  # refused for good: it does not reconnect
    finally:
        for runner in started:
            runner.stop(9, timeout=5)
