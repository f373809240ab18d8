"""One trace shows a job's whole life across processes: the client's request at the gateway, the
submit in jobs, the hold in billing, the processing span in the runner process, and the
completion and capture back in jobs and billing.

Every process exports by OTLP to a small collector this test runs (the real exporter, the real
protocol), so nothing is mocked: the spans are what an operator's Jaeger would receive.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from innosystem.demo import seed
from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.conftest import fresh_database, fresh_redis
from tests.e2e.conftest import watch_until_final

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span as (service.name, span name, trace id hex, span kind)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, int]] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, s.name, s.trace_id.hex(), s.kind) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: str) -> list[tuple[str, str, str, int]]:
        return [s for s in list(self.spans) if s[2] == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    sink = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced_stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey, collector: tuple[Collector, int],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _, port = collector
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    logs: Path = tmp_path_factory.mktemp("traced-stack-logs")
    stack = Stack(database_url=fresh_database(pg_server), redis_url=fresh_redis(valkey_server), http_port=free_port(),
                  fixed_ports=False, log_dir=logs, extra_env=otel)
    stack.start()
    try:
        stack.wait_ready(90)
        yield stack
    finally:
        stack.stop()


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
            "processing": lambda s, n: s == "innosystem-runner" and n.startswith("process echo"),
            "completion": lambda s, n: s == "innosystem-jobs" and n == "complete echo",
            "capture": lambda s, n: s == "innosystem-billing" and n.endswith("Capture"),
        }

        def missing() -> list[str]:
            names = {(s[0], s[1]) for s in sink.in_trace(TRACE_ID)}
            return [what for what, found in expected.items() if not any(found(s, n) for s, n in names)]

        deadline = time.monotonic() + 30
        while missing() and time.monotonic() < deadline:
            time.sleep(0.2)  # each process's exporter flushes on its own schedule
        assert not missing(), (missing(), sorted({(s[0], s[1]) for s in sink.in_trace(TRACE_ID)}))
    finally:
        traced_stack.stop_process("runner-traced")
