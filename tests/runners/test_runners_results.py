"""Results too large to store or to pass fail their own attempts (RESULT_TOO_LARGE) with real
runner processes; the results completed beside them are stored. Before, a ~20 MiB result pushed
the service's CompleteJobs batch past gRPC's limit and every result in it was refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import Client
from tests.runners.conftest import RunnerProcess
from tests.runners.world import FINAL, shared_runner, tenant

pytestmark = pytest.mark.e2e

Spawn = Callable[..., RunnerProcess]
MIB = 1024 * 1024


def test_oversized_results_fail_alone(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    sized = t.job_type("sized", max_attempts=1)
    _, token = shared_runner(admin)
    spawn_runner(token, "--processor", f"{sized['name']}=tests.runners.sample_processors:sized", "--slots", "16")
    sizes = [20 * MIB, 2 * MIB] + [10] * 12  # too large to pass the stream; to store; ordinary
    jobs = [t.submit(sized, {"size": size})["id"] for size in sizes]
    done = [t.wait_status(job_id, *FINAL, timeout=60) for job_id in jobs]
    for size, job in zip(sizes, done, strict=True):
        if size > MIB:
            assert job["status"] == "JOB_STATUS_FAILED" and job["errorType"] == "RESULT_TOO_LARGE", job
        else:
            assert job["status"] == "JOB_STATUS_SUCCEEDED" and job["attemptCount"] == 1, job
    stored = t.client.get(f"/v1/jobs/{jobs[-1]}?view=JOB_VIEW_FULL").body
    assert stored["result"] == {"blob": "x" * 10}
