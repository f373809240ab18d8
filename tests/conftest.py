"""Shared fixtures: one real embedded PostgreSQL and Valkey per test session.

Integration tests get a fresh, migrated database per module; end-to-end tests start the real
service processes and the gateway against it (see tests/e2e/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.kit.config import SERVICES
from innosystem.kit.migrate import has_migrations, upgrade


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


def fresh_database(pg: EmbeddedPostgres) -> str:
    url = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    for name in SERVICES:
        if has_migrations(name):
            upgrade(url, name)
    return url


@pytest.fixture(scope="module")
def database_url(pg_server: EmbeddedPostgres) -> str:
    """A fresh database with every service's migrations applied, for one test module."""
    return fresh_database(pg_server)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
