"""Tracing reaches the database and Redis: the contrib instrumentations are wired by telemetry.setup."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from innosystem.embedded import EmbeddedValkey
from innosystem.kit import redis as kit_redis
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database


async def test_sql_and_redis_calls_become_child_spans(database_url: str, valkey_server: EmbeddedValkey,
                                                      span_exporter: InMemorySpanExporter) -> None:
    exporter = span_exporter
    db = Database(to_async_url(database_url), pool_size=1)
    client = kit_redis.connect(valkey_server.url)
    try:
        with trace.get_tracer("test").start_as_current_span("use case") as parent:
            await db.ping()
            await client.set("{t:telemetry}:k", "v")
    finally:
        await client.aclose()
        await db.close()
    spans = exporter.get_finished_spans()
    trace_id = parent.get_span_context().trace_id
    children = [s for s in spans if s.context.trace_id == trace_id and s.parent is not None]
    assert any(s.attributes.get("db.system") == "postgresql" for s in children), [s.name for s in spans]
    assert any(s.attributes.get("db.system") == "redis" for s in children), [s.name for s in spans]
