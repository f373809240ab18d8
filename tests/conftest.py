"""Shared fixtures: one real embedded PostgreSQL and Valkey per test session.

Integration tests get a fresh, migrated database per module; end-to-end tests start the real
service processes and the gateway against it (see tests/e2e/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from innosystem.kit import telemetry
from innosystem.kit.config import SERVICES
from innosystem.kit.migrate import has_migrations, upgrade
from innosystem.stack import Stack


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded") / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("embedded") / "valkey", persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """A Valkey of the module's own: for a module that flushes Redis, or counts the commands Valkey
    runs (the session's server also serves the service processes of other modules)."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("own") / "valkey", persist=False)
    server.start()
    yield server
    server.stop()


def fresh_database(pg: EmbeddedPostgres) -> str:
    url = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    for name in SERVICES:
        if has_migrations(name):
            upgrade(url, name)
    return url


# Logical databases of the session's Valkey handed to process stacks; 0 is for in-process tests and
# 7 for the queue engine's own tests.
_REDIS_DBS = iter([n for n in range(1, 16) if n != 7])


def fresh_redis(valkey: EmbeddedValkey) -> str:
    """An empty logical database of the session's Valkey, for one stack of service processes.

    Two stacks sharing one keyspace would take each other's jobs off the same queue keys (a job
    type's queue is named by the type, not the database the job lives in)."""
    try:
        db = next(_REDIS_DBS)
    except StopIteration:
        raise RuntimeError("more process stacks than Valkey databases: start another EmbeddedValkey") from None
    url = valkey.url.rsplit("/", 1)[0] + f"/{db}"
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@contextmanager
def running_stack(pg: EmbeddedPostgres, redis_url: str, logs: Path, services: tuple[str, ...] = SERVICES,
                  extra_env: dict[str, str] | None = None, gateway: bool = True,
                  together: tuple[str, ...] = (), beside: tuple[str, ...] = ()) -> Iterator[Stack]:
    """Service processes (and the gateway) on a fresh database, each in a process of its own as
    compose and Kubernetes run them (or `together`, with replicas of `beside` in that process, as
    `innosystem up` runs jobs and runners with billing); their logs are printed when they fail to
    start, and any traceback in them when the block ends."""
    stack = Stack(database_url=fresh_database(pg), redis_url=redis_url, http_port=free_port(), fixed_ports=False,
                  log_dir=logs, together=together, beside=beside,
                  extra_env={"INNOSYSTEM_LOG_FORMAT": "json", "INNOSYSTEM_LOG_ONE_TIME_LINKS": "1",
                             **(extra_env or {})})
    stack.start(services=services, gateway=gateway)
    try:
        try:
            stack.wait_ready(90)
        except Exception:
            for path in sorted(logs.glob("*.log")):
                print(f"--- {path.name}\n{path.read_text()[-3000:]}")
            raise
        yield stack
    finally:
        stack.stop()
    for path in sorted(logs.glob("*.log")):
        if "Traceback" in (text := path.read_text()):
            print(f"--- {path.name} (tail)\n{text[-4000:]}")


@pytest.fixture(scope="module")
def database_url(pg_server: EmbeddedPostgres) -> str:
    """A fresh database with every service's migrations applied, for one test module."""
    return fresh_database(pg_server)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def _session_spans() -> InMemorySpanExporter:
    # telemetry.setup configures the process once; every test then reads one shared exporter (an
    # exporter given to setup: without one, spans would not be recorded at all).
    exporter = InMemorySpanExporter()
    telemetry.setup("tests", extra_span_processors=[SimpleSpanProcessor(exporter)])
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "telemetry.setup installs the SDK tracer provider"
    return exporter


@pytest.fixture
def span_exporter(_session_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    """The spans this process finishes during one test."""
    _session_spans.clear()
    return _session_spans
