"""The issue's "Done when" and its fault tests, through the gateway against real processes
(tenancy, billing, jobs, gateway) on their own Valkey; the internal lease API plays the runner."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis as sync_redis

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1 import jobs_pb2_grpc
from innosystem.kit.clients import channel
from innosystem.stack import Stack
from tests.conftest import running_stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e

FAST = {
    "INNOSYSTEM_LOG_FORMAT": "json",
    "INNOSYSTEM_JOBS_RECOVERY_INTERVAL_SECONDS": "0.5",
    # a submit gives its holds back if it cannot commit within half of this (batches of 1,000 included)
    "INNOSYSTEM_JOBS_ORPHAN_HOLD_GRACE_SECONDS": "6",
    "INNOSYSTEM_JOBS_REAPER_INTERVAL_SECONDS": "0.5",
    "INNOSYSTEM_JOBS_LEASE_TTL_SECONDS": "30",
}


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, own_valkey: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, own_valkey.url, tmp_path_factory.mktemp("jobs-e2e-logs"),
                       services=("tenancy", "billing", "jobs"), extra_env=FAST) as running:
        yield running


@dataclass
class Tenant:
    client: Client
    customer_id: str
    project_id: str
    job_types: dict[str, str] = field(default_factory=dict)


def _wallet(t: Tenant) -> dict[str, Any]:
    for _ in range(200):
        resp = t.client.get(f"/v1/customers/{t.customer_id}/wallet")
        if resp.status == 200:
            return dict(resp.body)
        time.sleep(0.05)
    raise AssertionError(f"no wallet: {resp.body}")


def _cents(wallet: dict[str, Any], key: str) -> int:
    return int(wallet.get(key, 0))


def tenant(stack: Stack, name: str, funds: int, types: dict[str, dict[str, Any]]) -> Tenant:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    made = admin.post("/v1/customers", {"name": name, "email": f"{uuid.uuid4().hex[:8]}@example.com"})
    assert made.status == 200, made.body
    cid = made.body["customer"]["id"]
    me = admin.as_key(made.body["apiKey"])
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "main"})
    assert project.status == 200, project.body
    t = Tenant(me, cid, project.body["id"])
    _wallet(t)
    topped = admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": funds, "requestId": f"fund-{cid}"})
    assert topped.status == 200, topped.body
    for type_name, body in types.items():
        t.job_types[type_name] = catalog_type(admin, type_name, body)
    return t


def catalog_type(admin: Client, name: str, body: dict[str, Any]) -> str:
    """A catalog type (the shared runner these tests play serves only those) priced flat at the
    body's `baseCostCents` in USD; the first tenant to name it creates it, the others share it."""
    fields = {k: v for k, v in body.items() if k != "baseCostCents"}
    made = admin.post("/v1/jobTypes", {"name": name, **fields})
    if made.status == 409:
        return str(admin.get(f"/v1/jobTypes?name={name}").body["jobTypes"][0]["id"])
    assert made.status == 200, made.body
    priced = admin.post(f"/v1/jobTypes/{made.body['id']}/prices",
                        {"currencyCode": "USD", "unitPriceCents": int(body.get("baseCostCents", 0))})
    assert priced.status == 200, priced.body
    return str(made.body["id"])


@pytest.fixture
async def jobs_stub(stack: Stack) -> AsyncIterator[jobs_pb2_grpc.JobServiceStub]:
    async with channel(stack.address("jobs"), service="runners", secret=stack.internal_secret.encode()) as ch:
        yield jobs_pb2_grpc.JobServiceStub(ch)


async def drain(stub: jobs_pb2_grpc.JobServiceStub, names: list[str], expect: int, *, fail: Collection[str] = (),
                wait_ms: int = 2000, deadline_s: float = 90) -> list[pb.JobLease]:
    """Lease and complete (successfully, unless the job id is in `fail`) until `expect` attempts ran."""
    seen: list[pb.JobLease] = []
    deadline = time.monotonic() + deadline_s
    while len(seen) < expect and time.monotonic() < deadline:
        reply = await stub.LeaseJobs(pb.LeaseJobsRequest(runner_id="e2e-runner", session_id="s",
                                                         job_type_names=names, max_jobs=50, wait_ms=wait_ms))
        if not reply.leases:
            continue
        seen += reply.leases
        done = await stub.CompleteJobs(pb.CompleteJobsRequest(completions=[
            pb.JobCompletion(job_id=x.job_id, lease_id=x.lease_id, runner_id=x.runner_id, result=pb.AttemptResult(
                outcome=pb.ATTEMPT_OUTCOME_FAILED if x.job_id in fail else pb.ATTEMPT_OUTCOME_SUCCEEDED,
                error=pb.JobError(message="flaky", type="IOError") if x.job_id in fail else None))
            for x in reply.leases]))
        assert not [r for r in done.results if r.HasField("error")], done.results
    return seen


def _all_jobs(t: Tenant) -> list[dict[str, Any]]:
    out, token = [], ""
    while True:
        resp = t.client.get(f"/v1/projects/{t.project_id}/jobs?pageSize=1000&pageToken={token}")
        assert resp.status == 200, resp.body
        out += resp.body.get("jobs", [])
        token = resp.body.get("nextPageToken", "")
        if not token:
            return out


def _held_after(t: Tenant, seconds: float) -> int:
    """The wallet's held cents once nothing is held any more, or when `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while (held := _cents(_wallet(t), "heldCents")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def _captures(t: Tenant) -> list[str]:
    """Job ids of the wallet's capture transfers (the ledger)."""
    out, token = [], ""
    while True:
        resp = t.client.get(f"/v1/customers/{t.customer_id}/wallet/transactions?kind=TRANSFER_KIND_CAPTURE"
                            f"&pageSize=500&pageToken={token}")
        assert resp.status == 200, resp.body
        out += [x["jobId"] for x in resp.body.get("transactions", [])]
        token = resp.body.get("nextPageToken", "")
        if not token:
            return out


PRIORITIES = ["PRIORITY_LEVEL_CRITICAL", "PRIORITY_LEVEL_HIGH", "PRIORITY_LEVEL_MEDIUM", "PRIORITY_LEVEL_LOW"]


async def test_done_when_1000_jobs_two_customers(stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    name = "render"
    big = tenant(stack, "Big", 100_000, {name: {"baseCostCents": 3}})
    small = tenant(stack, "Small", 100_000, {name: {"baseCostCents": 3}})
    submitted: dict[str, tuple[str, str]] = {}  # job id → (customer, priority)
    for t, count in ((big, 900), (small, 100)):
        reqs = [{"jobTypeId": t.job_types[name], "priority": PRIORITIES[i % 4], "payload": {"i": i}}
                for i in range(count)]
        resp = t.client.post(f"/v1/projects/{t.project_id}/jobs:batchSubmit", {"requests": reqs})
        assert resp.status == 200, resp.body
        for job in resp.body["jobs"]:
            submitted[job["id"]] = (t.customer_id, job["priority"])
    assert _cents(_wallet(big), "heldCents") == 2700

    leases = await drain(jobs_stub, [name], 1000)
    order = [x.job_id for x in leases]
    assert sorted(order) == sorted(submitted)  # every job ran exactly once
    by_class = {p: [j for j in order if submitted[j][1] == p] for p in PRIORITIES}
    assert max(order.index(j) for j in by_class["PRIORITY_LEVEL_CRITICAL"]) < \
        min(order.index(j) for j in by_class["PRIORITY_LEVEL_LOW"])
    for jobs in by_class.values():  # round robin: the small customer's 25 come among the first ~50 of the class
        small_at = [i for i, j in enumerate(jobs) if submitted[j][0] == small.customer_id]
        assert len(small_at) == 25 and max(small_at) < 2 * len(small_at) + 2
    for t, count in ((big, 900), (small, 100)):
        stored = _all_jobs(t)
        assert len(stored) == count and {j["status"] for j in stored} == {"JOB_STATUS_SUCCEEDED"}
        assert await asyncio.to_thread(_held_after, t, 10) == 0  # billing settles after the endings
        captured = _captures(t)
        assert sorted(captured) == sorted(j["id"] for j in stored)  # each charged exactly once
        wallet = _wallet(t)
        assert _cents(wallet, "balanceCents") == 100_000 - 3 * count and _cents(wallet, "heldCents") == 0


async def test_fail_twice_then_succeed_shows_three_attempts_with_backoff(
        stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    t = tenant(stack, "Flaky", 1000, {"flaky": {"baseCostCents": 5, "defaultRetryPolicy": {
        "maxAttempts": 3, "initialIntervalSeconds": 1, "backoffMultiplier": 2, "maxIntervalSeconds": 10}}})
    job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": t.job_types["flaky"]}).body
    await drain(jobs_stub, ["flaky"], 2, fail={job["id"]})
    await drain(jobs_stub, ["flaky"], 1)
    full = t.client.get(f"/v1/jobs/{job['id']}").body
    assert full["status"] == "JOB_STATUS_SUCCEEDED"
    attempts = full["attempts"]
    assert [a["outcome"] for a in attempts] == ["ATTEMPT_OUTCOME_FAILED", "ATTEMPT_OUTCOME_FAILED",
                                                "ATTEMPT_OUTCOME_SUCCEEDED"]
    starts = [_epoch(a["startTime"]) for a in attempts]
    ends = [_epoch(a["endTime"]) for a in attempts]
    assert starts[1] - ends[0] >= 0.9 * 1 and starts[2] - ends[1] >= 0.9 * 2  # backoff 1 s, then 2 s
    assert any("retry in" in c["reason"] for c in full["statusHistory"])
    assert await asyncio.to_thread(_held_after, t, 10) == 0  # billing settles after the ending
    assert _captures(t) == [job["id"]]


async def test_cancelled_pending_job_never_runs_and_its_hold_is_gone(
        stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    t = tenant(stack, "Canceller", 1000, {"cancel-me": {"baseCostCents": 40}})
    job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": t.job_types["cancel-me"]}).body
    assert _cents(_wallet(t), "heldCents") == 40
    cancelled = t.client.post(f"/v1/jobs/{job['id']}:cancel", {"reason": "not needed"})
    assert cancelled.status == 200 and cancelled.body["status"] == "JOB_STATUS_CANCELLED", cancelled.body
    assert _cents(_wallet(t), "heldCents") == 0 and _cents(_wallet(t), "balanceCents") == 1000
    reply = await jobs_stub.LeaseJobs(pb.LeaseJobsRequest(runner_id="r", job_type_names=["cancel-me"], max_jobs=10,
                                                          wait_ms=300))
    assert list(reply.leases) == []
    assert t.client.get(f"/v1/jobs/{job['id']}").body.get("attempts", []) == []


def _epoch(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_redis_flushall_while_queued_and_leased_finishes_each_job_once(
        stack: Stack, own_valkey: EmbeddedValkey, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    t = tenant(stack, "Flushed", 10_000, {"flushed": {"baseCostCents": 2}})
    reqs = [{"jobTypeId": t.job_types["flushed"]} for _ in range(200)]
    ids = [j["id"] for j in t.client.post(f"/v1/projects/{t.project_id}/jobs:batchSubmit",
                                         {"requests": reqs}).body["jobs"]]
    held = await jobs_stub.LeaseJobs(pb.LeaseJobsRequest(runner_id="before", job_type_names=["flushed"],
                                                         max_jobs=50))
    assert len(held.leases) == 50
    sync_redis.Redis.from_url(own_valkey.url).flushall()
    done = await jobs_stub.CompleteJobs(pb.CompleteJobsRequest(completions=[
        pb.JobCompletion(job_id=x.job_id, lease_id=x.lease_id, runner_id=x.runner_id,
                         result=pb.AttemptResult(outcome=pb.ATTEMPT_OUTCOME_SUCCEEDED)) for x in held.leases]))
    assert not [r for r in done.results if r.HasField("error")]
    rest = await drain(jobs_stub, ["flushed"], 150)  # recovery re-enqueues the 150 queued ones from PostgreSQL
    assert sorted([x.job_id for x in held.leases] + [x.job_id for x in rest]) == sorted(ids)
    extra = await jobs_stub.LeaseJobs(pb.LeaseJobsRequest(runner_id="after", job_type_names=["flushed"],
                                                          max_jobs=50, wait_ms=1500))
    assert list(extra.leases) == []  # nothing runs twice
    assert {j["status"] for j in _all_jobs(t)} == {"JOB_STATUS_SUCCEEDED"}
    assert await asyncio.to_thread(_held_after, t, 10) == 0  # billing settles after the endings
    assert sorted(_captures(t)) == sorted(ids)
    wallet = _wallet(t)
    assert _cents(wallet, "balanceCents") == 10_000 - 2 * 200 and _cents(wallet, "heldCents") == 0


async def test_jobs_service_killed_during_a_submit_burst(stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    t = tenant(stack, "Bursty", 100_000, {"burst": {"baseCostCents": 1}})
    acked: list[str] = []
    lock = threading.Lock()
    stop, enough = threading.Event(), threading.Event()

    def submitter(n: int) -> None:
        i = 0
        while not stop.is_set():
            resp = t.client.post(f"/v1/projects/{t.project_id}/jobs",
                                 {"jobTypeId": t.job_types["burst"], "requestId": f"burst-{n}-{i}"})
            if resp.status == 200:
                with lock:
                    acked.append(resp.body["id"])
                    if len(acked) >= 40:
                        enough.set()
            i += 1

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    assert await asyncio.to_thread(enough.wait, 60)  # a burst is under way
    stack.stop_process("jobs", signal.SIGKILL)
    stop.set()
    for th in threads:
        th.join()
    stack.start(services=("jobs",), gateway=False)
    stack.wait_ready(60)
    await asyncio.sleep(2.5)  # recovery: missing queue entries
    async with channel(stack.address("jobs"), service="runners", secret=stack.internal_secret.encode()) as ch:
        stub = jobs_pb2_grpc.JobServiceStub(ch)
        existing = {j["id"] for j in _all_jobs(t)}
        assert set(acked) <= existing  # every acknowledged job exists
        ran = await drain(stub, ["burst"], len(existing))
        assert sorted(x.job_id for x in ran) == sorted(existing)  # ... and runs, exactly once
    assert {j["status"] for j in _all_jobs(t)} == {"JOB_STATUS_SUCCEEDED"}
    captured: list[str] = []
    for _ in range(120):  # billing settles an ending after its answer (within the settle window, or by the sweeper)
        if len(captured := _captures(t)) >= len(existing):
            break
        await asyncio.sleep(0.5)
    assert sorted(captured) == sorted(existing)  # one capture per job
    for _ in range(120):  # the holds of submits the kill cut short go once past their grace
        if not _cents(wallet := _wallet(t), "heldCents"):
            break
        await asyncio.sleep(0.5)
    assert _cents(wallet, "heldCents") == 0 and _cents(wallet, "balanceCents") == 100_000 - len(existing)


def _sse_events(url: str, api_key: str, out: list[dict[str, Any]], opened: threading.Event) -> None:
    """Read `data:` events of one SSE response until the server ends it."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        opened.set()
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: "):]))


async def test_watch_through_the_gateway_is_server_sent_events(
        stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    t = tenant(stack, "Watcher", 1000, {"watched": {"baseCostCents": 1}})
    job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": t.job_types["watched"]}).body
    events: list[dict[str, Any]] = []
    opened = threading.Event()
    reader = threading.Thread(target=_sse_events, args=(f"{stack.gateway_url}/v1/jobs/{job['id']}:watch",
                                                        t.client.api_key, events, opened))
    reader.start()
    assert await asyncio.to_thread(opened.wait, 10)
    await drain(jobs_stub, ["watched"], 1)
    await asyncio.to_thread(reader.join, 20)
    assert not reader.is_alive()  # the stream ended after the final status
    assert events[0]["type"] == "JOB_EVENT_TYPE_SNAPSHOT"
    changes = [e["statusChange"]["status"] for e in events if e["type"] == "JOB_EVENT_TYPE_STATUS_CHANGED"]
    assert changes[-2:] == ["JOB_STATUS_RUNNING", "JOB_STATUS_SUCCEEDED"]
    missing = t.client.get(f"/v1/jobs/{uuid.uuid4()}:watch")
    assert missing.status == 404


def test_metrics_count_jobs_by_type(stack: Stack) -> None:
    """Runs after the watch test (same module, file order) on the restarted jobs process."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports['jobs']}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    submitted = [line for line in text.splitlines() if line.startswith("jobs_submitted_total{")]
    assert any('job_type="watched"' in line for line in submitted), submitted  # since the restart
    assert "jobs_dispatch_latency_seconds_bucket" in text and "jobs_queue_depth" in text


async def test_cancel_of_a_running_job_reaches_watch_cancellations(
        stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    t = tenant(stack, "Stopper", 1000, {"long": {"baseCostCents": 7}})
    job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": t.job_types["long"]}).body
    (lease,) = (await jobs_stub.LeaseJobs(pb.LeaseJobsRequest(runner_id="stopper", job_type_names=["long"],
                                                               max_jobs=1, wait_ms=5000))).leases
    stream = jobs_stub.WatchCancellations(pb.WatchCancellationsRequest(replica="e2e"))  # signed as runners
    await asyncio.sleep(0.5)  # subscribed
    assert t.client.post(f"/v1/jobs/{job['id']}:cancel", {"reason": "stop"}).body["cancelRequested"] is True
    notice = await asyncio.wait_for(stream.read(), 10)
    assert (notice.job_id, notice.lease_id, notice.reason) == (lease.job_id, lease.lease_id, "stop")
    stream.cancel()
    done = await jobs_stub.CompleteJobs(pb.CompleteJobsRequest(completions=[pb.JobCompletion(
        job_id=lease.job_id, lease_id=lease.lease_id, runner_id="stopper",
        result=pb.AttemptResult(outcome=pb.ATTEMPT_OUTCOME_CANCELLED))]))
    assert done.results[0].status == types_pb.JOB_STATUS_CANCELLED
    # billing follows the answer (the hold is released from the outbox written with the ending)
    assert await asyncio.to_thread(_held_after, t, 10) == 0 and _captures(t) == []


def test_malformed_input_through_the_gateway_is_400_naming_the_field(stack: Stack) -> None:
    """Issue 14, items 2 and 19, through the real processes: a NUL in a payload (a value or a key),
    in a top-up, or a request id over 200 characters answers 400 naming the field, never 500."""
    t = tenant(stack, "Malformed", 1000, {"nul-check": {"baseCostCents": 10}})
    admin = Client(stack.gateway_url, stack.admin_api_key)

    def refusal(resp: Any) -> tuple[int, str, str]:
        details = resp.body.get("details", [])
        reason = next((d["reason"] for d in details if d["@type"].endswith("ErrorInfo")), "")
        fields = [v["field"] for d in details if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]
        return resp.status, reason, fields[0] if fields else ""

    jobs = f"/v1/projects/{t.project_id}/jobs"
    jt = t.job_types["nul-check"]
    assert refusal(t.client.post(jobs, {"jobTypeId": jt, "payload": {"x": "a\u0000b"}})) == \
        (400, "INVALID_CHARACTER", "payload.x")
    assert refusal(t.client.post(jobs, {"jobTypeId": jt, "payload": {"k\u0000": 1}}))[:2] == (400, "INVALID_CHARACTER")
    assert refusal(t.client.post(jobs, {"jobTypeId": jt, "requestId": "r" * 201})) == \
        (400, "INVALID_REQUEST_ID", "request_id")
    assert refusal(admin.post(f"/v1/customers/{t.customer_id}/wallet:topUp", {
        "amountCents": 5, "requestId": "nul-top-up", "description": "a\u0000"})) == \
        (400, "INVALID_CHARACTER", "description")
    assert _all_jobs(t) == [] and _cents(_wallet(t), "heldCents") == 0
    assert _cents(_wallet(t), "balanceCents") == 1000
