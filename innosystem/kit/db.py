"""Async SQLAlchemy on psycopg 3, one PostgreSQL schema per service.

Each service declares its ORM classes on a base whose metadata is `schema_metadata(schema)`,
so every table is schema-qualified and no service can see another's tables by accident:

    class Base(DeclarativeBase):
        metadata = schema_metadata("tenancy")
 A use case
opens one transaction with `async with db.session() as s:` (commit on success, rollback on
error); repositories receive that session.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy.ext.asyncio
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import JSON, MetaData, Table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def schema_metadata(schema: str) -> MetaData:
    """Metadata whose tables all live in `schema`, with the shared naming convention."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


# Up to this many rows go in as one multi-row INSERT: one round trip, where COPY takes two.
SMALL_INSERT_ROWS = 8


async def copy_rows(session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (each names the same columns of `table`) in the session's transaction: a batch
    with one COPY, several times cheaper than a multi-row INSERT on both sides (no parameter
    processing per row here, no statement per row in PostgreSQL); a few rows (a single submit's)
    with one INSERT, which saves COPY's extra round trip. JSON columns take Python values. A
    failure raises the SQLAlchemy error class an INSERT would have raised (IntegrityError for a
    duplicate key, DataError for a value PostgreSQL refuses). A JSON value already wrapped in
    `Jsonb` (with its text serialized beforehand) is stored as it is."""
    if not rows:
        return
    columns = [table.columns[k] for k in rows[0]]
    keys = [c.key for c in columns]
    json = {c.key for c in columns if isinstance(c.type, JSON)}  # JSONB is a JSON
    name = sql.Identifier(*([table.schema] if table.schema else []), table.name)
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    connection = await (await session.connection()).get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = connection.driver_connection  # type: ignore[assignment]
    values = ([Jsonb(row[k]) if k in json and row[k] is not None and not isinstance(row[k], Jsonb) else row[k]
               for k in keys] for row in rows)
    try:
        async with driver.cursor() as cursor:
            if len(rows) <= SMALL_INSERT_ROWS:
                one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(keys)))
                await cursor.execute(sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
                    name, names, sql.SQL(", ").join([one] * len(rows))), [v for row in values for v in row])
                return
            async with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(name, names)) as copy:
                for row in values:
                    await copy.write_row(row)
    except psycopg.Error as exc:
        raise DBAPIError.instance(f"INSERT INTO {table.fullname}", None, exc, psycopg.Error) from exc


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 10, echo: bool = False) -> None:
        # Looked up at call time so that the SQLAlchemy instrumentation (see telemetry) applies.
        # No pre-ping: it is a round trip before every transaction, on every hot path. A connection
        # that died meanwhile (a database restart) fails its one transaction with a disconnect
        # error, which invalidates the whole pool: the callers retry, as for any unavailable
        # dependency, and the next transaction gets a fresh connection.
        # hide_parameters: a failing statement's error (and so the log line of an unhandled error)
        # would otherwise carry its bound values: job payloads, results, ciphertexts, descriptions.
        self.engine: AsyncEngine = sqlalchemy.ext.asyncio.create_async_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, echo=echo, pool_recycle=1800,
            hide_parameters=True,
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends normally, rolled back otherwise."""
        async with self.sessionmaker.begin() as session:
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
