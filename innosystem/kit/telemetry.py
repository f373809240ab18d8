"""OpenTelemetry set up once per process.

The exporter is chosen by the standard variables: `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`
(`otlp`, `console`, `none`) and `OTEL_EXPORTER_OTLP_ENDPOINT`; the sampler by `OTEL_TRACES_SAMPLER`
(e.g. `parentbased_traceidratio` with `OTEL_TRACES_SAMPLER_ARG=0.01` to trace 1% of jobs under
load). With no trace exporter, spans are still created (so trace ids reach the logs and travel
on) but none is recorded, and SQL statements and Redis calls get no spans.
With a metrics port, the process also serves its metrics as Prometheus text at `/metrics`.
SQLAlchemy and Redis calls are traced by the contrib instrumentations.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Link, SpanContext, TraceFlags

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

# A histogram of seconds is made with these bucket bounds (`explicit_bucket_boundaries_advisory`):
# the SDK's default bounds (0, 5, 10, 25, … 10,000) suit milliseconds, and put every latency under
# 5 s in one bucket, where no quantile can be read.
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 1800.0, 3600.0)

_configured = False
# False once setup() found that no span is ever recorded in this process (see the module docstring).
_spans_recorded = True


def spans_recorded() -> bool:
    """Whether spans may be recorded here: a tracer provider is set (by `setup`, or by the
    application that embeds a runner) and `setup` did not find that nothing receives them (no
    exporter, no sampler configured). With no provider set, every span is a no-op."""
    return _spans_recorded and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def trace_carrier() -> dict[str, str]:
    """The current trace context (`traceparent`, …, as the configured propagators write it)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def inject_trace(metadata: list[tuple[str, str]]) -> None:
    """Append the current trace context to outgoing gRPC metadata."""
    metadata.extend(trace_carrier().items())


def _exporter_choice(signal: str) -> str:
    explicit = os.environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower()
    if explicit:
        return explicit
    return "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"


def setup(service: str, extra_span_processors: list[SpanProcessor] | None = None, metrics_port: int = 0) -> None:
    global _configured, _spans_recorded
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"innosystem-{service}")})

    choice = _exporter_choice("TRACES")
    exported = choice in ("otlp", "console") or bool(extra_span_processors)
    if exported or os.environ.get("OTEL_TRACES_SAMPLER"):
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER, else parent-based
    else:
        # Nothing would receive a span: record none. Spans still carry their context (trace ids
        # reach the logs and the next process), at a fraction of a recorded span's cost.
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
        _spans_recorded = False
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif choice == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    for processor in extra_span_processors or []:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)

    if readers := _metric_readers(metrics_port):
        from opentelemetry.sdk.metrics import MeterProvider

        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    # else nothing reads metrics here (a runner, unless told to export them): the API's no-op
    # instruments (0.1 µs a recording against the SDK's 6 to 12), and the metrics SDK never loaded

    if exported:  # a span per statement and Redis call costs on every hot path: only when they go somewhere
        # Imported here, not before: they import SQLAlchemy and redis-py, which a runner process
        # has no use for (0.4 s of its start).
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # Its declared range stops at SQLAlchemy < 2.1; the engine events it hooks are unchanged in
        # 2.1, and tests/integration/test_telemetry.py proves the spans still appear.
        SQLAlchemyInstrumentor().instrument(enable_commenter=False, skip_dep_check=True)
        RedisInstrumentor().instrument()


def links_to(carriers: Iterable[Mapping[str, str] | None]) -> list[Link]:
    """A batch span's links to its jobs' traces (each job's stored W3C context). None where no
    span is recorded: an unrecorded span drops its links, and reading a context per job was about
    a thirtieth of the jobs process's CPU in a drain (docs/performance.md, session 19)."""
    if not spans_recorded():
        return []
    return [Link(c) for c in map(span_context_of, carriers) if c is not None]


def span_context_of(carrier: Mapping[str, str] | None) -> SpanContext | None:
    """The span context of a W3C `traceparent` stored with a job, read directly (cheaper than a
    propagator's extract, for a link per job of a batch)."""
    parts = (carrier or {}).get("traceparent", "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        return SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True,
                           trace_flags=TraceFlags(int(parts[3], 16) & 0xFF))
    except ValueError:
        return None


def _metric_readers(metrics_port: int) -> list[MetricReader]:
    """The exporter `OTEL_METRICS_EXPORTER` names, and Prometheus text on `metrics_port`."""
    readers: list[MetricReader] = []
    choice = _exporter_choice("METRICS")
    if choice in ("otlp", "console"):
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

        if choice == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        else:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    if metrics_port:
        readers.append(_prometheus(metrics_port))
    return readers


def _prometheus(port: int) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    start_http_server(port, addr="0.0.0.0")  # all interfaces: scraped from outside the pod
    return reader


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    stop = getattr(metrics.get_meter_provider(), "shutdown", None)  # the SDK's provider, where setup set one
    if stop is not None:
        stop()
