"""One trace shows a job's whole life across processes: the client's request at the gateway, the
submit in jobs, the hold in billing, the wait in the queue, the assignment by the runners service,
the processing span in the runner process, and the completion and capture back in jobs and billing.

Every process exports by OTLP to a small collector process this test runs (the real exporter, the
real protocol), so nothing is mocked: the spans are what an operator's Jaeger would receive.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from innosystem.demo import seed
from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.kit.telemetry import SECONDS_BUCKETS
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import watch_until_final
from tests.support.metrics import bucket_bounds

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@dataclass
class Collector:
    """The spans a collector process received, read from the file it appends to."""

    spans_file: Path

    def in_trace(self, trace_id: str) -> list[tuple[str, str]]:
        if not self.spans_file.exists():
            return []
        rows = [json.loads(line) for line in self.spans_file.read_text().splitlines() if line.endswith("]")]
        return [(service, name) for service, name, trace in rows if trace == trace_id]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, int]]:
    folder = tmp_path_factory.mktemp("otlp")
    port_file, spans_file = folder / "port", folder / "spans.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.otlp_sink", str(port_file), str(spans_file)])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the OTLP collector did not start"
            time.sleep(0.05)
        yield Collector(spans_file), int(port_file.read_text())
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def traced_stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey, collector: tuple[Collector, int],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _, port = collector
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "100",
            "INNOSYSTEM_JOBS_RECOVERY_INTERVAL_SECONDS": "1"}  # the queue gauges refresh with it
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("traced-stack-logs"),
                       extra_env=otel) as stack:
        yield stack


def test_a_jobs_life_is_one_trace_across_gateway_services_and_runner(
        traced_stack: Stack, collector: tuple[Collector, int]) -> None:
    sink, _ = collector
    admin = Rest(traced_stack.gateway_url, traced_stack.admin_api_key)
    demo = seed(admin, label="traced")
    traced_stack.spawn("runner-traced", ["runner", "--target", traced_stack.address("runners")],
                       {"INNOSYSTEM_RUNNER_TOKEN": demo.runner_token})
    try:
        # The client's own trace: the gateway continues it.
        request = urllib.request.Request(
            f"{traced_stack.gateway_url}/v1/projects/{demo.project_id}/jobs", method="POST",
            data=json.dumps({"jobTypeId": demo.job_type_ids["echo"], "payload": {"traced": True}}).encode(),
            headers={"Authorization": f"Bearer {demo.api_key}", "Content-Type": "application/json",
                     "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            job_id = json.loads(resp.read())["id"]
        assert watch_until_final(traced_stack.gateway_url, demo.api_key, job_id) == "JOB_STATUS_SUCCEEDED"

        # The whole life, in order: the client's request at the gateway, the submit and its hold,
        # the wait in the queue, the processing in the runner process, the completion and capture.
        expected = {
            "gateway request": lambda s, n: s == "innosystem-gateway" and n == "POST /v1/projects/{project_id}/jobs",
            "submit": lambda s, n: s == "innosystem-jobs" and n == "/innosystem.jobs.v1.JobService/SubmitJob",
            "hold": lambda s, n: s == "innosystem-billing" and n.endswith("Reserve"),
            "wait": lambda s, n: s == "innosystem-jobs" and n == "queued echo",
            "assignment": lambda s, n: s == "innosystem-runners" and n == "assign echo",
            "processing": lambda s, n: s == "innosystem-runner" and n.startswith("process echo"),
            "completion": lambda s, n: s == "innosystem-jobs" and n == "complete echo",
            "capture": lambda s, n: s == "innosystem-billing" and n.endswith("Capture"),
        }

        def missing() -> list[str]:
            names = set(sink.in_trace(TRACE_ID))
            return [what for what, found in expected.items() if not any(found(s, n) for s, n in names)]

        deadline = time.monotonic() + 30
        while missing() and time.monotonic() < deadline:
            time.sleep(0.2)  # each process's exporter flushes on its own schedule
        assert not missing(), (missing(), sorted(set(sink.in_trace(TRACE_ID))))

        # The same life in each process's metrics (Prometheus text on its metrics port).
        named = {
            "gateway": ["innosystem_gateway_requests", "http_server_request_duration"],
            "jobs": ["jobs_submitted", "jobs_started", "jobs_succeeded", "jobs_dispatch_latency",
                     "jobs_attempt_duration", "jobs_queue_depth", "jobs_queue_oldest_age"],
            "billing": ["billing_hold_operations", "billing_hold_amount"],
            "runners": ["runners_online", "runners_slots_free", "runners_dispatch_latency"],
        }
        for process, names in named.items():
            url = f"http://127.0.0.1:{traced_stack.metrics_ports[process]}/metrics"
            deadline = time.monotonic() + 30  # the queue gauges are refreshed by the next recovery pass
            while True:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    text = resp.read().decode()
                absent = [n for n in names if not any(line.startswith(n) for line in text.splitlines())]
                if not absent or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert not absent, f"{process} /metrics lacks {absent}"
        # a latency in buckets of seconds (the SDK's default bounds are for milliseconds)
        with urllib.request.urlopen(f"http://127.0.0.1:{traced_stack.metrics_ports['gateway']}/metrics",
                                    timeout=5) as resp:
            bounds = bucket_bounds(resp.read().decode(), "http_server_request_duration_seconds")
        assert bounds == {repr(b) for b in SECONDS_BUCKETS} | {"+Inf"}
    finally:
        traced_stack.stop_process("runner-traced")
