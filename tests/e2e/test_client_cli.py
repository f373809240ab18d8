"""The `innosystem` client commands, run as real processes against the real stack."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from innosystem.demo import Demo
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.support.client_world import cli, served_customer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Iterator[Demo]:
    with served_customer(stack, "client-cli", slots=16) as seeded:
        yield seeded


def test_submit_1000_jobs_from_a_jsonl_file_and_wait_for_them(stack: Stack, demo: Demo, tmp_path: Path) -> None:
    echo = demo.job_type_ids["echo"]
    lines = [json.dumps({"n": n}) if n % 2 else json.dumps({"jobTypeId": echo, "payload": {"n": n}})
             for n in range(1000)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    done = cli(stack, demo.api_key, "jobs", "submit", demo.project_id, "--type", echo,
               "--file", str(tmp_path / "jobs.jsonl"), "--batch-size", "400", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)
    assert len(jobs) == 1000 and {j["status"] for j in jobs} == {"JOB_STATUS_SUCCEEDED"}
    assert "submitted [" in done.stderr and "1000/1000" in done.stderr  # the progress line

    got = cli(stack, demo.api_key, "jobs", "get", jobs[7]["id"], "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["result"] == {"n": 7}
    table = cli(stack, demo.api_key, "jobs", "get", jobs[7]["id"])
    assert "SUCCEEDED" in table.stdout and jobs[7]["id"] in table.stdout
    # money in a table names its unit: 1 cent is not "1 USD"
    assert "cost (cents)  1" in table.stdout and "1 USD" not in table.stdout


def test_list_wallet_and_tenancy_commands(stack: Stack, demo: Demo) -> None:
    listed = cli(stack, demo.api_key, "jobs", "list", demo.project_id, "--limit", "3", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3
    wallet = cli(stack, demo.api_key, "wallet", "--json")
    assert wallet.returncode == 0 and json.loads(wallet.stdout)["customerId"] == demo.customer_id
    shown = cli(stack, demo.api_key, "wallet")
    assert shown.returncode == 0 and "available (cents)" in shown.stdout
    tx = cli(stack, demo.api_key, "wallet", "transactions", "--limit", "2")
    assert tx.returncode == 0 and len(tx.stdout.strip().splitlines()) == 3  # header and two rows
    projects = cli(stack, demo.api_key, "projects", "list", "--json")
    assert demo.project_id in {p["id"] for p in json.loads(projects.stdout)}
    types = cli(stack, demo.api_key, "job-types", "catalog")  # the demo's types are the operator's
    assert types.returncode == 0 and "echo" in types.stdout
    made = cli(stack, demo.api_key, "projects", "create", f"cli-{uuid.uuid4().hex[:8]}", "--tag", "cli", "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["tags"] == ["cli"]


def test_exit_codes_say_what_happened(stack: Stack, demo: Demo) -> None:
    failed = cli(stack, demo.api_key, "jobs", "submit", demo.project_id, "--type", demo.job_type_ids["fail"],
                 "--payload", '{"retryable": false}', "--wait")
    assert failed.returncode == 1 and "FAILED" in failed.stdout
    assert cli(stack, demo.api_key, "jobs", "get", str(uuid.uuid4())).returncode == 4
    refused = cli(stack, demo.api_key, "jobs", "submit", demo.project_id, "--type", "")
    assert refused.returncode == 2  # --type is required: refused before anything is sent
    bad = cli(stack, demo.api_key, "jobs", "submit", demo.project_id, "--type", demo.job_type_ids["echo"],
              "--payload", "[1]")
    assert bad.returncode == 2 and "--payload" in bad.stderr
    forbidden = cli(stack, demo.api_key, "customers", "create", "X", "x@example.com")
    assert forbidden.returncode == 3 and "HTTP 403" in forbidden.stderr
    nobody = cli(stack, "isk_not_a_key", "wallet")
    assert nobody.returncode == 3 and "HTTP 401" in nobody.stderr
    bad_line = cli(stack, demo.api_key, "jobs", "submit", demo.project_id, "--file", "-", stdin='{"n": 1}\nnope\n',
                   )
    assert bad_line.returncode == 2 and "-:1" in bad_line.stderr  # line 1 has no type: nothing sent


def test_watch_prints_events_and_exits_by_the_final_status(stack: Stack, demo: Demo) -> None:
    job = Rest(stack.gateway_url, demo.api_key)("POST", f"/v1/projects/{demo.project_id}/jobs",
                                                {"jobTypeId": demo.job_type_ids["echo"], "payload": {}})
    watched = cli(stack, demo.api_key, "jobs", "watch", job["id"])
    assert watched.returncode == 0 and watched.stdout.strip().splitlines()[-1].endswith("SUCCEEDED")
