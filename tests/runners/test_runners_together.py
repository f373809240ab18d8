"""Issue 12: the runner streams served where the queue lives, and a billing replica beside them.
`innosystem serve billing jobs runners` (what `innosystem up` and `make bench` run, billing's own
process beside it) answers leases and results inside the process (kit.inprocess), never by the
Relay stream or the unary calls, and at light load the holds too, never by billing's own process;
jobs run and are charged once, and when the process is killed mid-drain and started again, every
job still ends Succeeded with exactly one capture. Real processes: a stack of its own arranged as
`innosystem up` arranges it, real runner processes."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.kit.telemetry import SECONDS_BUCKETS
from innosystem.stack import BESIDE, TOGETHER, Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client
from tests.runners.conftest import FAST, RunnerProcess, wait_for
from tests.runners.world import BASE_COST, serve, shared_runner, tenant
from tests.support.metrics import bucket_bounds, metrics_text, rpc_calls

pytestmark = pytest.mark.e2e

JOBS = "/innosystem.jobs.v1.JobService/"
BILLING = "/innosystem.billing.v1.BillingService/"


@pytest.fixture(scope="module")
def together(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("together-logs"),
                       extra_env=dict(FAST), together=TOGETHER, beside=BESIDE) as stack:
        yield stack


def _relayed(stack: Stack) -> dict[str, int]:
    return {m: rpc_calls(stack, "jobs", JOBS + m) for m in ("Relay", "LeaseJobs", "CompleteJobs")}


def test_leases_and_results_never_leave_the_process(together: Stack, tmp_path: Path) -> None:
    assert together.process("jobs") is together.process("runners")
    admin = Client(together.gateway_url, together.admin_api_key)
    t = tenant(admin)
    echo = t.job_type("echo")
    runner_id, token = shared_runner(admin)
    runner = RunnerProcess(together, token, [*serve(echo), "--slots", "8"], tmp_path / "runner.log")
    try:
        before = t.balance()
        ids = [t.submit(echo, {"i": i})["id"] for i in range(40)]
        for i, job_id in enumerate(ids):
            done = t.wait_status(job_id, "JOB_STATUS_SUCCEEDED")
            assert done["result"] == {"i": i} and done["runnerId"] == runner_id
        wait_for(lambda: t.balance() == before - 40 * BASE_COST and t.held() == 0, what="every job charged once")
    finally:
        runner.stop()
    assert _relayed(together) == {"Relay": 0, "LeaseJobs": 0, "CompleteJobs": 0}
    assert rpc_calls(together, "jobs", JOBS + "SubmitJob") + rpc_calls(together, "jobs", JOBS + "BatchSubmitJobs") > 0
    # the latency histograms of the jobs that ran, in buckets of seconds (the SDK's default bounds
    # are for milliseconds: every latency under 5 s fell in one bucket)
    text = metrics_text(together, "jobs")
    seconds = {repr(b) for b in SECONDS_BUCKETS} | {"+Inf"}
    for histogram in ("jobs_dispatch_latency_seconds", "jobs_attempt_duration_seconds",
                      "runners_dispatch_latency_seconds", "rpc_server_duration_seconds"):
        assert bucket_bounds(text, histogram) == seconds, histogram


def _held_by_billing(stack: Stack) -> int:
    """Hold batches billing's own process answered."""
    return sum(rpc_calls(stack, "billing", BILLING + m) for m in ("BatchReserve", "BatchCapture"))


def test_light_load_holds_stay_in_the_process(together: Stack, tmp_path: Path) -> None:
    assert together.process("billing") is not together.process("jobs")  # billing's own process serves its port
    admin = Client(together.gateway_url, together.admin_api_key)
    t = tenant(admin)
    echo = t.job_type("echo")
    runner = RunnerProcess(together, shared_runner(admin)[1], [*serve(echo), "--slots", "2"], tmp_path / "runner.log")
    try:
        before, asked = t.balance(), _held_by_billing(together)
        for i in range(6):  # one at a time: the process is idle between them
            job_id = t.submit(echo, {"i": i})["id"]
            assert t.wait_status(job_id, "JOB_STATUS_SUCCEEDED")["result"] == {"i": i}
            wait_for(lambda: t.held() == 0, what="the job settled")
        assert t.balance() == before - 6 * BASE_COST
    finally:
        runner.stop()
    assert _held_by_billing(together) == asked  # reserved and captured by the replica beside the jobs service


def test_a_killed_process_of_both_loses_no_job_and_charges_each_once(together: Stack, tmp_path: Path) -> None:
    admin = Client(together.gateway_url, together.admin_api_key)
    t = tenant(admin, funds=10_000)
    nap = t.job_type("sleep")  # 20 ms each: the drain lasts long enough to be cut in the middle
    total = 600
    for start in range(0, total, 200):
        resp = t.client.post(f"/v1/projects/{t.project_id}/jobs:batchSubmit",
                             {"requests": [{"jobTypeId": nap["id"], "payload": {"seconds": 0.02, "n": start + i}}
                                           for i in range(200)]})
        assert resp.status == 200, resp.body
    runners = [RunnerProcess(together, shared_runner(admin)[1], [*serve(nap), "--slots", "16"],
                             tmp_path / f"r{k}.log") for k in range(2)]
    try:
        wait_for(lambda: t.balance() <= 10_000 - total // 4 * BASE_COST, 120, what="a quarter of the jobs charged")
        at_kill = t.balance()
        together.stop_process("runners", signal.SIGKILL)  # the runners service, and jobs with it
        assert at_kill > 10_000 - total * BASE_COST  # the drain was under way
        assert together.process_name("jobs") not in together.procs
        together.start(services=("runners",), gateway=False)  # both again
        together.wait_ready(60)
        deadline = time.monotonic() + 300
        while t.balance() != 10_000 - total * BASE_COST or t.held():
            assert time.monotonic() < deadline, (t.balance(), t.held())
            time.sleep(0.5)
    finally:
        for runner in runners:
            runner.stop(9, timeout=5)
    jobs, token = [], ""
    while True:
        page = t.client.get(f"/v1/projects/{t.project_id}/jobs?pageSize=500&pageToken={token}").body
        jobs += page["jobs"]
        if not (token := page.get("nextPageToken", "")):
            break
    assert len(jobs) == total
    assert {j["status"] for j in jobs} == {"JOB_STATUS_SUCCEEDED"}
    # the balance fell by exactly one price per job, and the jobs' recorded costs say the same
    assert sum(int(j.get("costCents", 0)) for j in jobs) == total * BASE_COST
