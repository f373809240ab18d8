"""Where spans go nowhere, the hot paths skip building them (`kit.telemetry`): a batch span's
links to its jobs' traces are read only where spans are recorded (an unrecorded span drops its
links), and a process with no tracer provider at all (an application embedding the runner SDK
without OpenTelemetry) records nothing, so the runner makes the job's trace context current
(its logs keep the trace id) without a tracer's span."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import telemetry
from services.jobs import tracing

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_each_readable_context_gets_a_link_where_spans_are_recorded(span_exporter: InMemorySpanExporter) -> None:
    assert telemetry.spans_recorded()
    lease = jobs_pb2.JobLease(trace_context={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    links = telemetry.links_to([lease.trace_context, {"traceparent": "garbage"}, None, {}])
    assert [(format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) for link in links] == [
        (TRACE, SPAN)]
    assert links[0].context.is_remote and links[0].context.trace_flags.sampled


def test_no_link_is_built_where_no_span_is_recorded(span_exporter: InMemorySpanExporter,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_spans_recorded", False)  # as setup() leaves it with no exporter
    assert telemetry.links_to([{"traceparent": f"00-{TRACE}-{SPAN}-01"}]) == []


_NO_PROVIDER = f"""
from opentelemetry import trace
from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import telemetry
from innosystem.runner import client
from innosystem.runner.processors import Job

assert not telemetry.spans_recorded()  # nobody set a tracer provider
job = Job(jobs_pb2.JobLease(job_id="j", trace_context={{"traceparent": "00-{TRACE}-{SPAN}-01"}}))
with client._span(job):
    current = trace.get_current_span()
    print(type(current).__name__, format(current.get_span_context().trace_id, "032x"))
trace.set_tracer_provider(trace.NoOpTracerProvider())
print(telemetry.spans_recorded())  # a provider is set now: spans may be recorded
"""


def test_with_no_tracer_provider_the_runner_makes_the_jobs_context_current_without_a_span() -> None:
    done = subprocess.run([sys.executable, "-c", _NO_PROVIDER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NonRecordingSpan", TRACE, "True"]


_SYNCHRONOUS_PROCESSOR = f"""
import asyncio
from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import logs
from innosystem.runner import Registry, Runner, client
from innosystem.runner.processors import Job

registry = Registry()

@registry.processor("traced")
def traced(job):  # on one of the runner's threads
    return {{"trace": logs.current_trace_id()}}

async def main():
    runner = Runner("127.0.0.1:1", "isr_x", registry)
    job = Job(jobs_pb2.JobLease(job_id="j", trace_context={{"traceparent": "00-{TRACE}-{SPAN}-01"}}))
    with client._span(job):
        print((await runner._call(registry.get("traced"), job))["trace"])

asyncio.run(main())
"""


def test_a_synchronous_processor_runs_in_its_jobs_trace() -> None:
    """Its logs carry the job's trace id (and the spans it starts are the job's) though it runs on
    another thread than the one that made the job's context current."""
    done = subprocess.run([sys.executable, "-c", _SYNCHRONOUS_PROCESSOR], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [TRACE]


def test_a_batch_span_links_to_every_jobs_trace_where_spans_are_recorded(span_exporter: InMemorySpanExporter) -> None:
    traces = [f"{n:032x}" for n in range(1, 4)]
    jobs: list[Any] = [SimpleNamespace(id=f"job-{n}", job_type_name="echo", attempt_count=1,
                                       trace_context={"traceparent": f"00-{t}-{SPAN}-01"})
                       for n, t in enumerate(traces)]
    (span,) = tracing.for_batch(jobs, "complete")
    span.end()
    (done,) = [s for s in span_exporter.get_finished_spans() if s.name == "complete batch"]
    assert sorted(format(link.context.trace_id, "032x") for link in done.links) == traces


_RUNNER_SETUP = """
import sys
import innosystem.runner.cli
from innosystem.kit import telemetry
telemetry.setup("runner")
print(" ".join(m for m in ("sqlalchemy", "redis", "opentelemetry.sdk.metrics") if m in sys.modules))
telemetry.shutdown()
"""


@pytest.mark.parametrize(("traces", "metrics", "loaded", "unloaded"), [
    ("none", "none", set(), {"sqlalchemy", "redis", "opentelemetry.sdk.metrics"}),
    ("console", "none", {"sqlalchemy", "redis"}, set()),
    ("none", "console", {"opentelemetry.sdk.metrics"}, {"sqlalchemy", "redis"}),
])
def test_a_runners_telemetry_loads_only_what_its_exporters_need(traces: str, metrics: str, loaded: set[str],
                                                                unloaded: set[str]) -> None:
    """With nothing receiving spans or metrics (a runner's default), its set-up leaves SQLAlchemy,
    redis-py and the metrics SDK unloaded (0.4 s of its start); where spans are exported, their
    SQL and Redis instrumentations are set up, and where metrics are, the metrics SDK."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", _RUNNER_SETUP], capture_output=True, text=True, timeout=60,
                          env={**env, "OTEL_TRACES_EXPORTER": traces, "OTEL_METRICS_EXPORTER": metrics})
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.splitlines()[0].split())
    assert loaded <= modules and not unloaded & modules, modules
