"""End to end with real runner processes: cancellation, a runner killed mid-job, SIGTERM drain,
and the runners service restarted under running jobs."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import RunnerProcess, wait_for
from tests.runners.world import BASE_COST, Tenant, serve, shared_runner, tenant

pytestmark = pytest.mark.e2e

Spawn = Callable[..., RunnerProcess]


def _succeeded_attempts(t: Tenant, job_id: str) -> list[dict]:
    return [a for a in t.job(job_id).get("attempts", []) if a.get("outcome") == "ATTEMPT_OUTCOME_SUCCEEDED"]


def test_cancelling_a_running_sleep_job_stops_it(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    sleep = t.job_type("sleep")
    _, token = shared_runner(admin)
    runner = spawn_runner(token, *serve(sleep))
    job = t.submit(sleep, {"seconds": 120})
    t.wait_status(job["id"], "JOB_STATUS_RUNNING")
    # progress reported by the processor reaches the job (with the heartbeats' lease extensions)
    wait_for(lambda: t.job(job["id"]).get("progress", {}).get("percent", 0) > 0, what="progress")
    assert t.client.post(f"/v1/jobs/{job['id']}:cancel", {"reason": "changed my mind"}).status == 200
    done = t.wait_status(job["id"], "JOB_STATUS_CANCELLED")
    assert done["attempts"][-1]["outcome"] == "ATTEMPT_OUTCOME_CANCELLED"
    assert "CANCEL_REQUESTED" in runner.text()
    # the slot is free again: the next job runs on the same single-slot runner
    t.wait_status(t.submit(sleep, {"seconds": 0})["id"], "JOB_STATUS_SUCCEEDED")


def test_a_runner_killed_mid_job_loses_it_to_another_which_succeeds_once(admin: Client,
                                                                         spawn_runner: Spawn) -> None:
    t = tenant(admin)
    sleep = t.job_type("sleep")
    first_id, first_token = shared_runner(admin)
    victim = spawn_runner(first_token, *serve(sleep))
    before = t.balance()
    job = t.submit(sleep, {"seconds": 2})
    running = t.wait_status(job["id"], "JOB_STATUS_RUNNING")
    assert running["runnerId"] == first_id
    victim.stop(signal.SIGKILL)
    wait_for(lambda: admin.get(f"/v1/runners/{first_id}").body["status"] == "RUNNER_STATUS_OFFLINE",
             what="killed runner offline")
    second_id, second_token = shared_runner(admin)
    spawn_runner(second_token, *serve(sleep))
    done = t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED")
    assert done["runnerId"] == second_id and done["attemptCount"] == 2
    assert done["attempts"][0]["runnerId"] == first_id
    assert done["attempts"][0]["outcome"] in ("ATTEMPT_OUTCOME_RUNNER_LOST", "ATTEMPT_OUTCOME_TIMED_OUT")
    assert len(_succeeded_attempts(t, job["id"])) == 1
    wait_for(lambda: t.balance() == before - BASE_COST, what="charged once")
    time.sleep(0.5)
    assert t.balance() == before - BASE_COST and int(done.get("costCents", 0)) == BASE_COST


def test_sigterm_drains_running_jobs_then_exits(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    sleep = t.job_type("sleep")
    runner_id, token = shared_runner(admin)
    runner = spawn_runner(token, *serve(sleep), "--slots", "2", "--drain-grace", "30")
    jobs = [t.submit(sleep, {"seconds": 1.5})["id"] for _ in range(2)]
    for job_id in jobs:
        t.wait_status(job_id, "JOB_STATUS_RUNNING")
    runner.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: admin.get(f"/v1/runners/{runner_id}").body.get("draining"), what="runner draining")
    late = t.submit(sleep, {"seconds": 0})["id"]
    assert runner.proc.wait(30) == 0
    for job_id in jobs:
        done = t.wait_status(job_id, "JOB_STATUS_SUCCEEDED")
        assert done["runnerId"] == runner_id and done["attemptCount"] == 1
    assert t.job(late)["status"] == "JOB_STATUS_PENDING"  # a draining runner takes no new job
    assert admin.get(f"/v1/runners/{runner_id}").body["status"] == "RUNNER_STATUS_OFFLINE"
    _, other = shared_runner(admin)
    spawn_runner(other, *serve(sleep))
    t.wait_status(late, "JOB_STATUS_SUCCEEDED")


def test_runners_reconnect_after_the_service_restarts_and_nothing_is_lost(stack: Stack, admin: Client,
                                                                         spawn_runner: Spawn) -> None:
    t = tenant(admin)
    sleep = t.job_type("sleep")
    runner_id, token = shared_runner(admin)
    runner = spawn_runner(token, *serve(sleep), "--slots", "2")
    before = t.balance()
    job = t.submit(sleep, {"seconds": 3})
    t.wait_status(job["id"], "JOB_STATUS_RUNNING")
    stack.stop_process("runners")
    stack.start(services=("runners",), gateway=False)
    stack.wait_ready(60)
    done = t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED", timeout=60)
    assert done["runnerId"] == runner_id
    assert done["attemptCount"] == 1  # resumed on the new connection (Hello.running), not re-run
    assert "1 resumed" in runner.text()
    assert len(_succeeded_attempts(t, job["id"])) == 1
    # the runner is connected again and takes new work
    again = t.wait_status(t.submit(sleep, {"seconds": 0})["id"], "JOB_STATUS_SUCCEEDED", timeout=60)
    assert again["runnerId"] == runner_id
    assert runner.proc.poll() is None and "connected to" in runner.text()
    wait_for(lambda: t.balance() == before - 2 * BASE_COST, what="two jobs charged, once each")


def test_a_result_finished_while_the_service_was_down_is_delivered_once(stack: Stack, admin: Client,
                                                                        spawn_runner: Spawn) -> None:
    t = tenant(admin)
    sleep = t.job_type("sleep")
    runner_id, token = shared_runner(admin)
    runner = spawn_runner(token, *serve(sleep))
    before = t.balance()
    job = t.submit(sleep, {"seconds": 1})
    t.wait_status(job["id"], "JOB_STATUS_RUNNING")
    stack.stop_process("runners", signal.SIGKILL)  # no goodbye: the job finishes while nobody listens
    wait_for(lambda: "failed to connect" in runner.text(), what="runner noticed the service is gone")
    stack.start(services=("runners",), gateway=False)
    stack.wait_ready(60)
    done = t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED", timeout=60)
    assert done["runnerId"] == runner_id and done["attemptCount"] == 1
    assert "1 resumed" in runner.text()  # the unacknowledged result's lease, then the result again
    wait_for(lambda: t.balance() == before - BASE_COST, what="charged once")
    assert len(_succeeded_attempts(t, job["id"])) == 1
