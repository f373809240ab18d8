"""Per-service Alembic migrations, each service in its own schema with its own version table.

`innosystem migrate` calls `upgrade(url, service)` for every service. All services share one
Alembic environment (kit/alembic: env.py and the revision template); a service contributes
only its ORM metadata (`services.<name>.models.Base`) and its revisions
(`services/<name>/migrations/versions`). An advisory lock per schema makes concurrent runs
(two `migrate` jobs, or a test and a dev stack) wait for each other instead of racing.
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


def has_migrations(service: str) -> bool:
    return _versions(service).is_dir()


def _versions(service: str) -> Path:
    # Found by naming convention, so the common library imports no service package.
    package = importlib.import_module(f"services.{service}")
    return Path(package.__file__ or "").parent / "migrations" / "versions"


def alembic_config(url: str, service: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "alembic"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(_versions(service)))
    cfg.set_main_option("sqlalchemy.url", to_async_url(url))
    cfg.attributes["schema"] = service
    cfg.attributes["metadata"] = importlib.import_module(f"services.{service}.models").Base.metadata
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


def run_env() -> None:
    """Body of kit/alembic/env.py (online mode only; we always have a database)."""
    cfg = context.config
    schema = cfg.attributes["schema"]
    metadata: MetaData = cfg.attributes["metadata"]
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
