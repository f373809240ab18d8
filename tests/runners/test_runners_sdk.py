"""The runner SDK: processor registration, built-ins, and the four processor types against the real
platform, including a runner started from Python code (RunnerThread) and trace propagation."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import egress
from innosystem.runner import Job, JobError, Kind, Registry, Runner, RunnerRejected, RunnerThread, builtin
from innosystem.runner.cli import load_processors
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import RunnerProcess, wait_for
from tests.runners.world import serve, shared_runner, tenant

Spawn = Callable[..., RunnerProcess]


def _job(payload: dict[str, Any], attempt: int = 1) -> Job:
    lease = jobs_pb2.JobLease(job_id="j1", lease_id="l1", attempt=attempt, job_type_name="t")
    lease.payload.update(payload)
    return Job(lease)


def test_registry_infers_the_kind_and_refuses_a_second_processor_for_a_type() -> None:
    registry = Registry()

    @registry.processor("plain")
    def plain(job: Job) -> dict[str, Any]:
        return {}

    @registry.processor()
    async def coro(job: Job) -> dict[str, Any]:
        return {}

    registry.external_api("remote")
    kinds = {p.name: p.kind for p in registry}
    assert kinds == {"plain": Kind.SYNC, "coro": Kind.ASYNC, "remote": Kind.EXTERNAL_API}
    with pytest.raises(ValueError, match="already registered"):
        registry.processor("plain")(plain)
    with pytest.raises(ValueError, match="max_batch_size"):
        registry.batch("b", max_batch_size=0)


def test_builtin_fail_fails_the_given_attempts_then_succeeds() -> None:
    payload = {"times": 2, "message": "boom", "error_type": "Flaky", "retryable": False}
    for attempt in (1, 2):
        with pytest.raises(JobError) as caught:
            builtin.fail(_job(payload, attempt))
        assert caught.value.type == "Flaky" and caught.value.message == "boom" and not caught.value.retryable
    assert builtin.fail(_job(payload, 3)) == {"attempt": 3}
    with pytest.raises(JobError):
        builtin.fail(_job({}, 99))  # no `times`: every attempt fails
    assert asyncio.run(builtin.sha256(_job({"data": ""})))["sha256"].startswith("e3b0c442")
    assert builtin.echo(_job({"a": [1, 2]})) == {"a": [1, 2]}


def test_cli_processor_specs() -> None:
    registry = load_processors(["echo", "x=innosystem.runner.builtin:sha256", "tests.runners.sample_processors"],
                               ["remote"])
    kinds = {p.name: p.kind for p in registry}
    assert kinds["echo"] == Kind.SYNC and kinds["x"] == Kind.ASYNC and kinds["remote"] == Kind.EXTERNAL_API
    assert kinds["sample-batch"] == Kind.BATCH and registry.get("sample-batch").max_batch_size == 3  # type: ignore[union-attr]
    assert set(load_processors([]).names()) == set(builtin.NAMES)
    with pytest.raises(SystemExit, match="no function"):
        load_processors(["innosystem.runner.builtin:nope"])


@pytest.mark.e2e
def test_a_failing_job_is_retried_then_succeeds(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    flaky = t.job_type("fail", max_attempts=3)
    fatal = t.job_type("fail", max_attempts=3)
    _, token = shared_runner(admin)
    spawn_runner(token, *serve(flaky), *serve(fatal), "--slots", "2")
    done = t.wait_status(t.submit(flaky, {"times": 2, "error_type": "Flaky"})["id"], "JOB_STATUS_SUCCEEDED")
    assert done["attemptCount"] == 3 and done["result"] == {"attempt": 3}
    assert [a["error"]["type"] for a in done["attempts"][:2]] == ["Flaky", "Flaky"]
    failed = t.wait_status(t.submit(fatal, {"retryable": False, "message": "bad input"})["id"], "JOB_STATUS_FAILED")
    assert failed["attemptCount"] == 1 and failed["error"] == "bad input"


@pytest.mark.e2e
def test_batch_processor_and_reported_units_from_a_module(admin: Client, spawn_runner: Spawn) -> None:
    t = tenant(admin)
    batched = t.job_type("batch")
    costly = admin.post("/v1/jobTypes", {"name": f"costly-{batched['name'][-8:]}"}).body  # a catalog type
    priced = admin.post(f"/v1/jobTypes/{costly['id']}/prices", {
        "currencyCode": "USD", "model": "PRICE_MODEL_PER_UNIT", "unitPriceCents": 2, "capCents": 9})
    assert priced.status == 200, priced.body
    _, token = shared_runner(admin)
    spawn_runner(token, "--processor", f"{batched['name']}=tests.runners.sample_processors:uppercase_batch",
                 "--processor", f"{costly['name']}=tests.runners.sample_processors:costly", "--slots", "4")
    jobs = [t.submit(batched, {"text": f"t{i}"})["id"] for i in range(5)]
    results = [t.wait_status(j, "JOB_STATUS_SUCCEEDED")["result"] for j in jobs]
    assert [r["upper"] for r in results] == [f"T{i}" for i in range(5)]
    assert all(1 <= r["batch_size"] <= 3 for r in results)
    wait_for(lambda: t.held() == 0, what="the first jobs' billing settled")  # it follows their endings
    before = t.balance()
    submitted = t.submit(costly, {"cost": 3})
    assert int(submitted["estimatedCostCents"]) == 9 and submitted["priceId"] == priced.body["id"]  # the cap held
    charged = t.wait_status(submitted["id"], "JOB_STATUS_SUCCEEDED")
    assert int(charged["attempts"][-1]["actualCostCents"]) == 3  # the runner's own figure, kept for the record
    wait_for(lambda: int(t.job(charged["id"]).get("costCents", 0)) == 6, what="3 units at 2 cents charged")
    wait_for(lambda: t.balance() == before - 6, what="the wallet charged the measured amount, not the hold")


@pytest.fixture
def http_endpoint() -> Iterator[tuple[str, list[int]]]:
    """A local HTTP endpoint for EXTERNAL_API: fails the first call of each job with 503."""
    seen: dict[str, int] = {}
    calls: list[int] = []
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        job_id = request.headers["X-Innosystem-Job-Id"]
        seen[job_id] = seen.get(job_id, 0) + 1
        calls.append(seen[job_id])
        if seen[job_id] == 1:
            return web.Response(status=503)
        if body.get("reject"):
            return web.json_response({"error": "no"}, status=422)
        return web.json_response({"doubled": body["n"] * 2})

    def serve_forever() -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/hook", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            holder["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
            started.set()
            await holder["stop"].wait()
            await runner.cleanup()
        asyncio.run(main())

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    started.wait(10)
    yield f"http://127.0.0.1:{holder['port']}/hook", calls
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(5)


@pytest.mark.e2e
def test_runner_from_python_code_with_external_api_and_trace_context(stack: Stack, admin: Client,
                                                                      http_endpoint: tuple[str, list[int]]) -> None:
    url, calls = http_endpoint
    t = tenant(admin)
    traced = t.job_type("traced")
    remote = admin.post("/v1/jobTypes", {  # a catalog type: the shared runner serves it
        "name": f"remote-{traced['name'][-8:]}",
        "defaultRetryPolicy": {"maxAttempts": 1, "initialIntervalSeconds": 0, "backoffMultiplier": 1.0,
                               "maxIntervalSeconds": 0}}).body
    assert admin.post(f"/v1/jobTypes/{remote['id']}/prices", {"currencyCode": "USD", "unitPriceCents": 1}).status == 200
    seen_traces: list[str] = []
    processors = Registry()

    @processors.processor(traced["name"])
    async def record_trace(job: Job) -> dict[str, Any]:
        seen_traces.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
        return {}

    processors.external_api(remote["name"], url=url, max_retries=2)  # the type's config would name https
    _, token = shared_runner(admin)
    # A plain http endpoint on loopback: this runner's operator allow-lists exactly it.
    allowed = egress.Policy(allow_hosts=egress.parse_allow_list([urllib.parse.urlsplit(url).netloc]))
    with RunnerThread(Runner(stack.address("runners"), token, processors, max_concurrent_jobs=2,
                             drain_grace_seconds=5, egress=allowed)) as thread:
        assert thread.wait_connected(30)
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {
            "jobTypeId": traced["id"], "traceContext": {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}}).body
        t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED")
        assert seen_traces == [trace_id]
        ok = t.wait_status(t.submit(remote, {"n": 21})["id"], "JOB_STATUS_SUCCEEDED")
        assert ok["result"] == {"doubled": 42}
        rejected = t.wait_status(t.submit(remote, {"n": 1, "reject": True})["id"], "JOB_STATUS_FAILED")
        assert rejected["error"].endswith("422") and rejected["errorType"] == "Http422"
        assert calls.count(1) == 2 and calls.count(2) == 2  # each job's first call got 503 and was retried
    assert thread.runner.completed >= 3


@pytest.mark.e2e
def test_a_revoked_token_stops_the_runner_with_an_error(stack: Stack, admin: Client) -> None:
    runner_id, token = shared_runner(admin)
    assert admin.delete(f"/v1/runners/{runner_id}").status == 200
    thread = RunnerThread(Runner(stack.address("runners"), token, builtin.registry())).start()
    with pytest.raises(RunnerRejected, match="UNAUTHENTICATED"):
        thread.join(30)


@pytest.fixture
def tcp_listener() -> Iterator[tuple[int, list[str]]]:
    """A local TCP port that records every connection made to it (and answers nothing)."""
    connections: list[str] = []
    started = threading.Event()
    holder: dict[str, Any] = {}

    def serve_forever() -> None:
        async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(str(writer.get_extra_info("peername")))
            writer.close()

        async def main() -> None:
            server = await asyncio.start_server(note, "127.0.0.1", 0)
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
            started.set()
            await holder["stop"].wait()
            server.close()
        asyncio.run(main())

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    started.wait(10)
    yield holder["port"], connections
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(5)


@pytest.mark.e2e
def test_a_job_types_external_url_reaches_only_what_the_runners_operator_allows(
        stack: Stack, admin: Client, spawn_runner: Spawn, tcp_listener: tuple[int, list[str]]) -> None:
    """Issue 14 item 6: a customer's EXTERNAL_API job type names an internal address; the runner
    process (its operator allow-listed nothing; the customer's own runner, the only kind that serves
    its own types) does not connect to it, and the job fails with EGRESS_BLOCKED. Once the operator
    allow-lists the host (--egress-allow-host) it does."""
    port, connections = tcp_listener
    t = tenant(admin)
    made = t.client.post(f"/v1/projects/{t.project_id}/jobTypes", {
        "name": f"internal-{uuid.uuid4().hex[:8]}",
        "processorType": "PROCESSOR_TYPE_EXTERNAL_API",
        "externalApi": {"url": f"https://127.0.0.1:{port}/admin", "maxRetries": 0, "timeoutSeconds": 5},
        "defaultRetryPolicy": {"maxAttempts": 1, "initialIntervalSeconds": 0, "backoffMultiplier": 1.0,
                               "maxIntervalSeconds": 0}})
    assert made.status == 200, made.body
    job_type = made.body
    owned = t.client.post("/v1/runners", {"name": f"own-{uuid.uuid4().hex[:6]}"})
    assert owned.status == 200, owned.body
    token = owned.body["token"]

    runner = spawn_runner(token, "--external-api", job_type["name"])
    failed = t.wait_status(t.submit(job_type, {"x": 1})["id"], "JOB_STATUS_FAILED", timeout=60)
    assert failed["errorType"] == "EGRESS_BLOCKED", failed
    assert "127.0.0.1 is a loopback address" in failed["error"] and "egress guard" in failed["error"]
    assert connections == []
    runner.stop()

    spawn_runner(token, "--external-api", job_type["name"], "--egress-allow-host", f"127.0.0.1:{port}")
    tried = t.wait_status(t.submit(job_type, {"x": 2})["id"], "JOB_STATUS_FAILED", timeout=60)
    assert connections, "the allow-listed host was not called"
    assert tried["errorType"] != "EGRESS_BLOCKED", tried  # it connected (this listener speaks no TLS)
