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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import sqlalchemy.ext.asyncio
from sqlalchemy import MetaData, text
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
