"""End to end with real runner processes: a job goes Pending → Running → Succeeded and is
charged; compatibility (tags, customer-owned runners) and capacity."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import RunnerProcess, wait_for
from tests.runners.world import BASE_COST, serve, shared_runner, tenant

pytestmark = pytest.mark.e2e

Spawn = Callable[..., RunnerProcess]


def test_a_job_runs_on_a_runner_and_is_charged(stack: Stack, admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    echo, digest = t.job_type("echo"), t.job_type("sha256")
    runner_id, token = shared_runner(admin)
    spawn_runner(token, *serve(echo), *serve(digest), "--slots", "2")
    before = t.balance()
    job = t.submit(echo, {"hello": "world"})
    done = t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED")
    assert done["result"] == {"hello": "world"} and done["runnerId"] == runner_id
    hashed = t.wait_status(t.submit(digest, {"data": "abc"})["id"], "JOB_STATUS_SUCCEEDED")
    assert hashed["result"]["sha256"].startswith("ba7816bf")
    wait_for(lambda: t.balance() == before - 2 * BASE_COST, what="both jobs charged")
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports['runners']}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    for name in ("runners_online", "runners_slots_free", "runners_dispatch_latency", "runners_results_batch_size"):
        assert name in metrics, name
    seen = admin.get(f"/v1/runners/{runner_id}").body
    assert seen["status"] == "RUNNER_STATUS_AVAILABLE" and seen["hostname"]
    assert sorted(seen["processors"]) == sorted([echo["name"], digest["name"]])


def test_a_job_needing_gpu_never_goes_to_a_runner_without_it(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    gpu = t.job_type("echo", tags=("gpu",))
    plain = t.job_type("echo")
    _, plain_token = shared_runner(admin)
    spawn_runner(plain_token, *serve(gpu), *serve(plain), "--slots", "4")
    waiting = [t.submit(gpu, {"i": i})["id"] for i in range(3)]
    # the plain runner is alive and taking work, yet leaves the gpu jobs alone
    for _ in range(3):
        t.wait_status(t.submit(plain)["id"], "JOB_STATUS_SUCCEEDED")
    assert {t.job(j)["status"] for j in waiting} == {"JOB_STATUS_PENDING"}
    gpu_id, gpu_token = shared_runner(admin)
    spawn_runner(gpu_token, *serve(gpu), "--tags", "gpu")
    for job_id in waiting:
        assert t.wait_status(job_id, "JOB_STATUS_SUCCEEDED")["runnerId"] == gpu_id


def test_a_customer_runner_never_gets_another_customers_job(admin: Client, spawn_runner: Spawn) -> None:
    owner, other = tenant(admin), tenant(admin)
    mine = owner.job_type("echo", own=True)
    # the other customer has a type of the same name: each customer's jobs wait for its own runners
    theirs = other.client.post(f"/v1/projects/{other.project_id}/jobTypes", {"name": mine["name"]}).body
    created = owner.client.post("/v1/runners", {"name": "owned"})
    assert created.status == 200, created.body
    owned_id, token = created.body["runner"]["id"], created.body["token"]
    spawn_runner(token, *serve(mine))
    foreign = other.submit(theirs)["id"]
    own = owner.submit(mine)["id"]
    assert owner.wait_status(own, "JOB_STATUS_SUCCEEDED")["runnerId"] == owned_id
    for _ in range(3):  # more of its own jobs pass while the foreign one waits
        owner.wait_status(owner.submit(mine)["id"], "JOB_STATUS_SUCCEEDED")
    assert other.job(foreign)["status"] == "JOB_STATUS_PENDING"
    assert other.client.post(f"/v1/jobs/{foreign}:cancel", {}).status == 200


def test_a_runner_with_two_slots_never_runs_three_jobs(admin: Client, spawn_runner: Spawn) -> None:
    """Two slots: never three processors at once (each run says when it started and ended). A
    result frees its slot when it reaches the service, so a job may still show Running for the
    moment its result takes to commit while the next one starts."""
    t = tenant(admin)
    sleep = t.job_type("sleep")
    runner_id, token = shared_runner(admin)
    spawn_runner(token, *serve(sleep), "--slots", "2")
    jobs = [t.submit(sleep, {"seconds": 0.6})["id"] for _ in range(6)]
    while True:
        listed = t.client.get(f"/v1/projects/{t.project_id}/jobs?pageSize=50").body.get("jobs", [])
        runner = admin.get(f"/v1/runners/{runner_id}").body
        assert runner.get("currentJobCount", 0) <= 2, runner
        if all(j["status"] == "JOB_STATUS_SUCCEEDED" for j in listed if j["id"] in jobs):
            break
        time.sleep(0.05)
    runs = [t.client.get(f"/v1/jobs/{j}?view=JOB_VIEW_FULL").body["result"] for j in jobs]
    edges = sorted([(r["started"], 1) for r in runs] + [(r["ended"], -1) for r in runs])
    at_once, most = 0, 0
    for _, step in edges:  # an end sorts before a start at the same instant
        at_once += step
        most = max(most, at_once)
    assert most == 2  # it did run two at once, never three


def test_maintenance_stops_new_jobs_and_available_resumes(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    echo = t.job_type("echo")
    runner_id, token = shared_runner(admin)
    spawn_runner(token, *serve(echo))
    t.wait_status(t.submit(echo)["id"], "JOB_STATUS_SUCCEEDED")
    patched = admin.patch(f"/v1/runners/{runner_id}?updateMask=status", {"status": "RUNNER_STATUS_MAINTENANCE"})
    assert patched.body["status"] == "RUNNER_STATUS_MAINTENANCE"
    held = t.submit(echo)["id"]
    time.sleep(1.0)  # give a wrongly dispatching service the chance to be wrong
    assert t.job(held)["status"] == "JOB_STATUS_PENDING"
    admin.patch(f"/v1/runners/{runner_id}?updateMask=status", {"status": "RUNNER_STATUS_AVAILABLE"})
    assert t.wait_status(held, "JOB_STATUS_SUCCEEDED")["runnerId"] == runner_id


def test_customer_sees_shared_runners_per_job_type(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    echo, gpu = t.job_type("echo"), t.job_type("echo", tags=("gpu",))
    _, token = shared_runner(admin)
    spawn_runner(token, *serve(echo), *serve(gpu), "--slots", "3")

    def summary() -> dict[str, Any] | None:
        rows = {s["jobTypeName"]: s for s in t.client.get("/v1/runners").body.get("sharedRunners", [])}
        return rows if rows.get(echo["name"], {}).get("onlineRunners") else None

    rows = wait_for(summary, what="shared runner listed for the customer")
    assert rows[echo["name"]]["onlineRunners"] == 1 and rows[echo["name"]]["freeSlots"] == 3
    assert rows[gpu["name"]].get("onlineRunners", 0) == 0  # lacks the gpu tag
