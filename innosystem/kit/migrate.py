"""Per-service Alembic migrations, each service in its own schema with its own version table.

`innosystem migrate` calls `upgrade(url, service)` for every service; a service's
`migrations/env.py` calls `run_env(metadata)`. An advisory lock per schema makes concurrent
runs (two `migrate` jobs, or a test and a dev stack) wait for each other instead of racing.
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Connection

from innosystem.kit.config import to_async_url

VERSION_TABLE = "alembic_version"


def alembic_config(url: str, service: str) -> Config:
    package = importlib.import_module(f"services.{service}")
    script_location = Path(package.__file__ or "").parent / "migrations"
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", to_async_url(url))
    cfg.attributes["schema"] = service
    return cfg


def upgrade(url: str, service: str, revision: str = "head") -> None:
    engine = create_engine(to_async_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(service.encode())})
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{service}"'))
            cfg = alembic_config(url, service)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def run_env(metadata: MetaData) -> None:
    """Body of every service's migrations/env.py (online mode only; we always have a database)."""
    cfg = context.config
    schema = cfg.attributes["schema"]
    conn: Connection | None = cfg.attributes.get("connection")
    if conn is None:  # invoked by the alembic CLI: make our own connection
        engine = create_engine(cfg.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as own:
            _configure_and_run(own, metadata, schema)
        engine.dispose()
    else:
        _configure_and_run(conn, metadata, schema)


def _configure_and_run(conn: Connection, metadata: MetaData, schema: str) -> None:
    context.configure(
        connection=conn,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        include_schemas=True,
        include_name=lambda name, type_, _parent: type_ != "schema" or name == schema,
    )
    with context.begin_transaction():
        context.run_migrations()
