"""The run path under faults: 20,000 jobs drained by two runner processes while the jobs service
is SIGKILLed and restarted twice, and then billing twice. Every job ends Succeeded, the ledger
holds exactly one capture per job, no hold is left, and the jobs' recorded costs add up to the
ledger's captures (the billing outbox settles what each kill interrupted)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import psycopg
import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client
from tests.runners.conftest import FAST, RunnerProcess
from tests.runners.world import BASE_COST, serve, shared_runner, tenant

pytestmark = pytest.mark.e2e

JOBS = 20_000
BATCH = 1000


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Recovery and the outbox sweeper pass often, so what a kill left behind is settled quickly.
    env = {**FAST, "INNOSYSTEM_JOBS_RECOVERY_INTERVAL_SECONDS": "1", "INNOSYSTEM_JOBS_ORPHAN_HOLD_GRACE_SECONDS": "5"}
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("drain-faults-logs"),
                       extra_env=env) as running:
        yield running


def _counts(stack: Stack, customer_id: str) -> dict[str, int]:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("""
            SELECT (SELECT count(*) FROM jobs.jobs WHERE customer_id = %(c)s),
                   (SELECT count(*) FROM jobs.jobs WHERE customer_id = %(c)s AND status = 3),
                   (SELECT coalesce(sum(cost_cents), 0) FROM jobs.jobs WHERE customer_id = %(c)s),
                   (SELECT count(*) FROM billing.transfers WHERE customer_id = %(c)s AND kind = 3),
                   (SELECT count(DISTINCT hold_id) FROM billing.transfers WHERE customer_id = %(c)s AND kind = 3),
                   (SELECT coalesce(sum(amount), 0) FROM billing.transfers WHERE customer_id = %(c)s AND kind = 3),
                   (SELECT count(*) FROM billing.holds WHERE customer_id = %(c)s AND status = 1)
        """, {"c": customer_id}).fetchone()
    assert row is not None
    keys = ("jobs", "succeeded", "job_costs", "captures", "captured_holds", "captured", "active_holds")
    return dict(zip(keys, (int(v) for v in row), strict=True))


def test_a_drain_survives_jobs_and_billing_killed_twice_each(stack: Stack, tmp_path_factory: pytest.TempPathFactory
                                                             ) -> None:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    t = tenant(admin, funds=JOBS * BASE_COST + 1000)
    echo = t.job_type("echo")
    for start in range(0, JOBS, BATCH):
        resp = t.client.post(f"/v1/projects/{t.project_id}/jobs:batchSubmit",
                             {"requests": [{"jobTypeId": echo["id"], "payload": {"n": start + i}}
                                           for i in range(BATCH)]})
        assert resp.status == 200, resp.body
    logs = tmp_path_factory.mktemp("drain-faults-runners")
    runners = [RunnerProcess(stack, shared_runner(admin)[1], [*serve(echo), "--slots", "32"], logs / f"r{k}.log")
               for k in range(2)]
    try:
        def succeeded() -> int:
            return _counts(stack, t.customer_id)["succeeded"]

        for victim, at in (("jobs", 0.1), ("jobs", 0.3), ("billing", 0.5), ("billing", 0.7)):
            deadline = time.monotonic() + 300
            while succeeded() < JOBS * at:  # well into the drain, with results and captures in flight
                assert time.monotonic() < deadline, f"drain stalled before killing {victim}"
                time.sleep(0.1)
            stack.stop_process(victim, signal.SIGKILL)
            stack.start(services=(victim,), gateway=False)
            stack.wait_ready(60)
        deadline = time.monotonic() + 600
        while True:
            counts = _counts(stack, t.customer_id)
            if counts["succeeded"] == JOBS and counts["active_holds"] == 0 and counts["captures"] == JOBS:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.5)
    finally:
        for runner in runners:
            runner.stop(9, timeout=5)
    counts = _counts(stack, t.customer_id)
    assert counts["jobs"] == JOBS and counts["succeeded"] == JOBS
    assert counts["captures"] == counts["captured_holds"] == JOBS  # exactly one capture per job
    assert counts["active_holds"] == 0
    assert counts["job_costs"] == counts["captured"] == JOBS * BASE_COST
    assert t.balance() == 1000
