"""`innosystem up --demo`: the seeded tenants, the shared runner, and the printed curl line's job."""

from __future__ import annotations

import json
import shlex
import subprocess
import time

from innosystem.demo import JOB_TYPES, seed
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.e2e.conftest import watch_until_final


def test_the_printed_curl_runs_a_job_on_the_demo_runner_and_charges_the_wallet(stack: Stack) -> None:
    admin = Rest(stack.gateway_url, stack.admin_api_key)
    demo = seed(admin, label="demo-test")
    # A second start finds the same tenants; keys and tokens are rotated, never stored.
    again = seed(admin, label="demo-test")
    assert (again.customer_id, again.project_id, again.runner_id) == (demo.customer_id, demo.project_id,
                                                                       demo.runner_id)
    assert again.job_type_ids == demo.job_type_ids and set(demo.job_type_ids) == {t[0] for t in JOB_TYPES}
    assert again.api_key != demo.api_key and again.runner_token != demo.runner_token

    customer = admin.as_key(again.api_key)
    wallet = f"/v1/customers/{demo.customer_id}/wallet"
    before = int(customer("GET", wallet)["balanceCents"])

    runner = stack.spawn("runner-demo-test", ["runner", "--target", stack.address("runners"), "--slots", "2"],
                         {"INNOSYSTEM_RUNNER_TOKEN": again.runner_token})
    try:
        # Exactly what `innosystem up --demo` prints, run by a shell.
        curl = again.curl(stack.gateway_url)
        submitted = json.loads(subprocess.run(shlex.split(curl), capture_output=True, check=True, timeout=30).stdout)
        assert submitted["status"] in ("JOB_STATUS_PENDING", "JOB_STATUS_RUNNING", "JOB_STATUS_SUCCEEDED")

        assert watch_until_final(stack.gateway_url, again.api_key, submitted["id"]) == "JOB_STATUS_SUCCEEDED"
        job = customer("GET", f"/v1/jobs/{submitted['id']}?view=JOB_VIEW_FULL")
        assert job["status"] == "JOB_STATUS_SUCCEEDED", job
        assert job["result"] == {"hello": "world"} and job["runnerId"] == demo.runner_id
        assert [c["status"] for c in job["statusHistory"]] == [
            "JOB_STATUS_PENDING", "JOB_STATUS_RUNNING", "JOB_STATUS_SUCCEEDED"]
        charged = int(job["costCents"])
        assert charged == dict((t[0], t[3][1]) for t in JOB_TYPES)["echo"]  # the catalog's flat price
        assert job["priceId"]  # settled at the price version it was submitted under
        deadline = time.monotonic() + 10  # billing settles after the ending (leases._settle_soon)
        while int(customer("GET", wallet)["balanceCents"]) != before - charged and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(customer("GET", wallet)["balanceCents"]) == before - charged
    finally:
        stack.stop_process("runner-demo-test")
    assert runner.returncode == 0  # SIGTERM drains and exits cleanly
