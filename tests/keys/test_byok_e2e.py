"""BYOK end to end through the gateway with real processes: the reference key manager, the five
services, the gateway and a runner whose processor reads one field through secure access.

A unique canary in the payload must appear in no log line, no database row and no Redis value.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.keys.keymanager_process import KeyManagerProcess, start_keymanager

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def world(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, KeyManagerProcess, Path]]:
    km = start_keymanager(tmp_path_factory.mktemp("byok-km"), "cmk-demo")
    logs = tmp_path_factory.mktemp("byok-logs")
    try:
        # No cached project keys: the key manager's policy applies to the very next access. The
        # reference key manager is plain grpc:// on loopback: the operator allow-lists exactly it.
        with running_stack(pg_server, fresh_redis(valkey_server), logs,
                           extra_env={"INNOSYSTEM_KEYS_KEY_CACHE_SECONDS": "0",
                                      "INNOSYSTEM_EGRESS_ALLOW_HOSTS": f"127.0.0.1:{km.grpc_port}"}) as stack:
            yield stack, km, logs
    finally:
        km.stop()


def _wait_final(customer: Rest, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = customer("GET", f"/v1/jobs/{job_id}?view=JOB_VIEW_FULL")
        if job["status"] in ("JOB_STATUS_SUCCEEDED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def _top_up(admin: Rest, customer_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        status, body = admin.call("POST", f"/v1/customers/{customer_id}/wallet:topUp",
                                  {"amountCents": 10_000, "requestId": f"byok-{customer_id}"})
        if status == 200:
            return
        assert status == 404 and time.monotonic() < deadline, body
        time.sleep(0.2)


def _recomputed_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's proto3 JSON without `hash` and without default values, keys sorted, compact."""
    body = {k: v for k, v in record.items()
            if k != "hash" and v not in ("", 0, "0", False, [], {}) and not str(v).endswith("_UNSPECIFIED")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode()).hexdigest()


def _everything_stored(stack: Stack) -> str:
    parts = []
    with psycopg.connect(stack.database_url) as conn:
        tables = conn.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN "
                              "('tenancy', 'billing', 'jobs', 'runners', 'keys')").fetchall()
        for schema, table in tables:
            parts += [str(r[0]) for r in conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t').fetchall()]
    client = redis.Redis.from_url(stack.redis_url)
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value: Any = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                      "list": lambda k: client.lrange(k, 0, -1), "zset": lambda k: client.zrange(k, 0, -1),
                      "stream": lambda k: client.xrange(k)}.get(kind, lambda k: b"")(key)
        parts.append(repr(key) + repr(value))
    client.close()
    return "\n".join(parts)


def test_encrypted_job_end_to_end_with_canary_and_a_refusing_key_manager(
        world: tuple[Stack, KeyManagerProcess, Path]) -> None:
    stack, km, logs = world
    admin = Rest(stack.gateway_url, stack.admin_api_key)
    created = admin("POST", "/v1/customers", {"name": "BYOK Co", "email": "byok@example.com"})
    customer_id, api_key = created["customer"]["id"], created["apiKey"]
    _top_up(admin, customer_id)
    customer = admin.as_key(api_key)
    project = customer("POST", f"/v1/customers/{customer_id}/projects", {"name": "cards"})

    # 1. register the key at the reference key manager (verified first), 2. turn on encryption
    key = customer("POST", f"/v1/customers/{customer_id}/keys", {
        "endpointUrl": km.grpc_url, "externalKeyId": "cmk-demo", "hmacSecrets": [km.secret],
        "description": "demo CMK"})
    assert key["state"] == "CLIENT_KEY_STATE_ACTIVE" and not key.get("hmacSecrets") and km.secret not in str(key)
    customer("PATCH", f"/v1/projects/{project['id']}", {"encryptionKeyId": key["id"]})
    job_type = admin("POST", "/v1/jobTypes", {  # a catalog type: the shared runner serves it
        "name": "card-check", "processorType": "PROCESSOR_TYPE_ASYNC", "timeoutSeconds": 60,
        "sensitiveFields": ["payload.card.number"]})
    admin("POST", f"/v1/jobTypes/{job_type['id']}/prices", {"currencyCode": "USD", "unitPriceCents": 1})
    runner = admin("POST", "/v1/runners", {"name": "byok-runner", "scope": "RUNNER_SCOPE_SHARED"})
    stack.spawn("runner-byok", ["runner", "--target", stack.address("runners"),
                                "--processor", "card-check=tests.keys.byok_processor:card_check"],
                {"INNOSYSTEM_RUNNER_TOKEN": runner["token"]})

    canary = f"4111{uuid.uuid4().hex[:12]}CANARY"
    submitted = customer("POST", f"/v1/projects/{project['id']}/jobs", {
        "jobTypeId": job_type["id"], "payload": {"card": {"number": canary}, "amount": 5}})
    job = _wait_final(customer, submitted["id"])
    assert job["status"] == "JOB_STATUS_SUCCEEDED", job
    assert job["result"]["valid_length"] is True and job["result"]["encrypted_in_lease"] == "isk1."
    assert job["payload"]["card"]["number"].startswith("isk1.") and job["payload"]["amount"] == 5
    assert job["encryption"]["encryptedFields"] == ["payload.card.number"]

    # the customer's log: pre-access then completion, purpose and fields; the chain verifies
    records = customer("GET", f"/v1/customers/{customer_id}/accessLogs?jobId={job['id']}&oldestFirst=true")["records"]
    assert [(r["type"], r["outcome"]) for r in records] == [
        ("ACCESS_RECORD_TYPE_ACCESS_REQUESTED", "ACCESS_OUTCOME_PENDING"),
        ("ACCESS_RECORD_TYPE_ACCESS_COMPLETED", "ACCESS_OUTCOME_GRANTED")]
    assert all(r["purpose"] == "PURPOSE_CODE_CUSTOMER_INITIATED_JOB" for r in records)
    assert records[0]["requestedFields"] == ["payload.card.number"] == records[1]["returnedFields"]
    assert records[1]["processingSucceeded"] is True and records[1]["processorId"] == runner["runner"]["id"]
    for record in records:  # a customer recomputes each hash from the JSON it reads, as docs/keys.md says
        assert _recomputed_hash(record) == record["hash"]
    verification = customer("GET", f"/v1/customers/{customer_id}/accessLogs:verify")
    assert verification["ok"] is True and int(verification["recordsChecked"]) == 3  # registered, requested, completed

    # the live feed (SSE through the gateway) replays from a sequence, then follows
    request = urllib.request.Request(f"{stack.gateway_url}/v1/customers/{customer_id}/accessLogs:watch"
                                     f"?afterSequence=1&jobId={job['id']}",
                                     headers={"Authorization": f"Bearer {api_key}"})
    events = []
    with urllib.request.urlopen(request, timeout=30) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        while len(events) < 2:
            line = stream.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["sequence"] for e in events] == [r["sequence"] for r in records]

    # key-access decisions are metrics by outcome and purpose
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports['keys']}/metrics", timeout=10) as resp:
        exposition = resp.read().decode()
    assert any(line.startswith("keys_access_decisions") and 'outcome="GRANTED"' in line
               and 'purpose="PURPOSE_CODE_CUSTOMER_INITIATED_JOB"' in line for line in exposition.splitlines())

    # the key manager now refuses job accesses: the next job's access is denied and recorded
    km.allow("PLATFORM_SYSTEM_OPERATION")
    second = customer("POST", f"/v1/projects/{project['id']}/jobs", {
        "jobTypeId": job_type["id"], "payload": {"card": {"number": canary}, "amount": 6}})
    refused = _wait_final(customer, second["id"])
    assert refused["status"] == "JOB_STATUS_FAILED", refused
    denied = customer("GET", f"/v1/customers/{customer_id}/accessLogs?jobId={second['id']}"
                             "&type=ACCESS_RECORD_TYPE_ACCESS_COMPLETED")["records"]
    assert [(r["outcome"], r["reason"]) for r in denied] == [("ACCESS_OUTCOME_DENIED", "KEY_MANAGER_REFUSED")]
    assert customer("GET", f"/v1/customers/{customer_id}/accessLogs:verify")["ok"] is True

    # the canary: in no database row, no Redis value, no log line (services, gateway, runner, key manager)
    stack.stop_process("runner-byok")
    stored = _everything_stored(stack)
    assert canary not in stored
    assert project["id"] in stored and job["payload"]["card"]["number"] in stored  # the scan does see the data
    log_files = [*logs.glob("*.log"), km.folder / "keymanager.log"]
    assert {p.name for p in log_files} >= {"keys.log", "jobs.log", "gateway.log", "runner-byok.log", "keymanager.log"}
    for path in log_files:
        assert canary not in path.read_text(errors="replace"), path.name
    assert f"job={second['id']}" in (km.folder / "keymanager.log").read_text()  # the refusal was the KM's


def test_a_key_disabled_mid_run_fails_only_its_own_customers_results(
        world: tuple[Stack, KeyManagerProcess, Path]) -> None:
    """Customer A's encrypted project loses its key while A's and B's jobs run on one shared
    runner: the results of A's jobs cannot be encrypted and fail those attempts alone
    (RESULT_NOT_STORED); every one of B's jobs, completed in the same batches, succeeds on its
    first attempt. Before, one unstorable result failed the whole CompleteJobs batch."""
    stack, km, _ = world
    admin = Rest(stack.gateway_url, stack.admin_api_key)
    tenants = []
    for label in ("a", "b"):
        created = admin("POST", "/v1/customers", {"name": f"Mid-run {label}", "email": f"{label}@example.com"})
        _top_up(admin, created["customer"]["id"])
        customer = admin.as_key(created["apiKey"])
        project = customer("POST", f"/v1/customers/{created['customer']['id']}/projects", {"name": "naps"})
        tenants.append((created["customer"]["id"], customer, project))
    (a_id, a, a_project), (_, b, b_project) = tenants
    key = a("POST", f"/v1/customers/{a_id}/keys", {
        "endpointUrl": km.grpc_url, "externalKeyId": "cmk-demo", "hmacSecrets": [km.secret]})
    a("PATCH", f"/v1/projects/{a_project['id']}", {"encryptionKeyId": key["id"]})
    once = {"maxAttempts": 1, "initialIntervalSeconds": 0, "backoffMultiplier": 1, "maxIntervalSeconds": 0}
    nap = admin("POST", "/v1/jobTypes", {  # one catalog type for both: the shared runner serves it
        "name": "nap", "timeoutSeconds": 60, "defaultRetryPolicy": once, "sensitiveFields": ["result.ended"]})
    admin("POST", f"/v1/jobTypes/{nap['id']}/prices", {"currencyCode": "USD", "unitPriceCents": 1})
    types = [nap, nap]
    runner = admin("POST", "/v1/runners", {"name": "mid-run-runner", "scope": "RUNNER_SCOPE_SHARED"})
    stack.spawn("runner-mid-run", ["runner", "--target", stack.address("runners"), "--slots", "20",
                                   "--processor", "nap=innosystem.runner.builtin:sleep"],
                {"INNOSYSTEM_RUNNER_TOKEN": runner["token"]})
    a_jobs = [a("POST", f"/v1/projects/{a_project['id']}/jobs",
                {"jobTypeId": types[0]["id"], "payload": {"seconds": 2}})["id"] for _ in range(4)]
    b_jobs = [b("POST", f"/v1/projects/{b_project['id']}/jobs",
                {"jobTypeId": types[1]["id"], "payload": {"seconds": 2}})["id"] for _ in range(8)]
    deadline = time.monotonic() + 30
    while any(a("GET", f"/v1/jobs/{j}")["status"] != "JOB_STATUS_RUNNING" for j in a_jobs):
        assert time.monotonic() < deadline, "A's jobs never ran"
        time.sleep(0.05)
    a("POST", f"/v1/keys/{key['id']}:disable", {"acknowledgeDataLoss": True})  # mid-run
    for job_id in b_jobs:
        done = _wait_final(b, job_id)
        assert done["status"] == "JOB_STATUS_SUCCEEDED" and done["attemptCount"] == 1, done
    for job_id in a_jobs:
        done = _wait_final(a, job_id)
        assert done["status"] == "JOB_STATUS_FAILED" and done["errorType"] == "RESULT_NOT_STORED", done
        assert "result" not in done or not done["result"]  # no plaintext result was stored
