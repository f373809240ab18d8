"""Async SQLAlchemy on psycopg 3, one PostgreSQL schema per service.

Each service declares its ORM classes on a base whose metadata is `schema_metadata(schema)`,
so every table is schema-qualified and no service can see another's tables by accident:

    class Base(DeclarativeBase):
        metadata = schema_metadata("tenancy")

A use case opens one transaction with `async with db.session() as s:` (commit on success, rollback on
error); repositories receive that session. The hot paths (a lease's start, an attempt's end, a
submit's rows) open theirs with `async with db.transaction() as conn:` instead, a psycopg
connection of a pool of their own, and run set-oriented statements through `pipelined`,
`copy_rows` and `Writes`, which take either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import sqlalchemy.ext.asyncio
from psycopg import pq, sql
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import JSON, MetaData, Table, TextClause, event, text
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

from innosystem.kit import roundtrip

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


def json_loads(data: str | bytes) -> Any:
    """A JSON or JSONB column's value, for every connection (psycopg's loader, set below): orjson,
    a sixth of the json module's CPU (a job's row holds three documents, read on every lease and
    ending). Where orjson refuses what PostgreSQL can hold (a number beyond a double's range), the
    json module reads it as before. orjson reads an integer beyond 64 bits as a float; JSON numbers
    reach these columns as doubles (protobuf's Struct), so that float is the value that was sent."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


set_json_loads(json_loads)


# Up to this many rows go in as one multi-row INSERT: one round trip, where COPY takes two.
SMALL_INSERT_ROWS = 8


# A transaction's handle for the statement helpers below: a session, or a connection of the hot
# paths' own pool (`Database.transaction`).
Conn = AsyncSession | psycopg.AsyncConnection[Any]


async def driver_of(conn: Conn) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under the transaction (for COPY and pipelines). A session's is read
    from its sync session's connection: `AsyncSession.connection()` would also build (and register)
    an asyncio proxy of it that nobody uses, on every hot-path transaction."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    connection = await greenlet_spawn(conn.sync_session.connection)
    return connection.connection.driver_connection  # type: ignore[return-value]


@dataclass(frozen=True)
class Rows:
    """Rows to insert as sequences of values in the order of `names` (column keys), each JSON value
    already as it is stored (`Jsonb`, or None): what a hot path builds without a dict per row,
    which the insert would only take apart again (a 1,000-job batch's rows: 8.1 ms of CPU
    as dicts, 3.3 as lists)."""

    names: tuple[str, ...]
    values: Sequence[Sequence[Any]]

    def __len__(self) -> int:
        return len(self.values)


def keywords_init(names: tuple[str, ...]) -> Any:
    """`__init__(self, *, name=None, …)` storing each of `names`, for the plain row objects of the
    hot paths (a new job, a hold: `__slots__` named after a table's columns), generated as
    dataclasses generate theirs: one attribute store a column, where a loop of `setattr` and
    `dict.get` took 6.7 µs a job (1.4 so), for each of a batch's thousand."""
    scope: dict[str, Any] = {}
    exec(f"def __init__(self, *, {', '.join(f'{n}=None' for n in names)}):\n"  # our own column names
         + "".join(f"    self.{n} = {n}\n" for n in names), scope)
    return scope["__init__"]


# Rows to insert: dicts naming the same columns (JSON columns take Python values; a value already
# wrapped in `Jsonb`, its text serialized beforehand, is stored as it is), or `Rows`.
Inserted = Sequence[Mapping[str, Any]] | Rows


def _names(rows: Inserted) -> tuple[str, ...]:
    return rows.names if isinstance(rows, Rows) else tuple(rows[0])


def _insert(table: Table, rows: Inserted) -> tuple[str, Sequence[Any], bool]:
    """(statement, parameters, is it COPY) inserting `rows`: a multi-row INSERT for a few rows (with
    PostgreSQL's own `$n` placeholders, for a raw cursor: see `_values_insert`), a COPY (the
    parameters are then the rows' values) for more."""
    columns, keys, json, copy = _shape(table, _names(rows))
    values: Sequence[Sequence[Any]]
    if isinstance(rows, Rows):
        values = rows.values
    else:
        values = [[Jsonb(row[k]) if k in json and row[k] is not None and not isinstance(row[k], Jsonb) else row[k]
                   for k in keys] for row in rows]
    if len(rows) > SMALL_INSERT_ROWS:
        return copy, values, True
    return _values_insert(table, columns, len(rows)), [v for row in values for v in row], False


_SHAPES: dict[tuple[str, tuple[str, ...]], tuple[list[Any], list[str], frozenset[str], str]] = {}


def _shape(table: Table, names: tuple[str, ...]) -> tuple[list[Any], list[str], frozenset[str], str]:
    """A row shape's columns, their keys, the JSON ones among them and its `COPY … FROM STDIN`,
    worked out once per shape: a batch of one job (light load) paid the lookups as a batch of a
    thousand does, and coalesced single submits COPY a few rows each, where composing the
    statement cost about as much as the rows."""
    key = (table.fullname, names)
    shape = _SHAPES.get(key)
    if shape is None:
        columns = [table.columns[k] for k in names]
        copy = sql.SQL("COPY {} ({}) FROM STDIN").format(_table_name(table), _column_names(columns)).as_string()
        shape = _SHAPES[key] = (columns, [c.key for c in columns],
                                frozenset(c.key for c in columns if isinstance(c.type, JSON)), copy)  # JSONB is a JSON
    return shape


def _table_name(table: Table) -> sql.Identifier:
    return sql.Identifier(*([table.schema] if table.schema else []), table.name)


def _column_names(columns: Sequence[Any]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)


_INSERTS: dict[tuple[str, tuple[str, ...], int], str] = {}


def _values_insert(table: Table, columns: Sequence[Any], count: int) -> str:
    """`INSERT … VALUES ($1, …), …` for `count` rows of `columns`, built once per shape. Run by a
    raw cursor, it skips psycopg's per-execution placeholder conversion, which is not cached for
    statements of more than 50 parameters (a job row alone has more)."""
    key = (table.fullname, tuple(c.name for c in columns), count)
    statement = _INSERTS.get(key)
    if statement is None:
        width = len(columns)
        rows = ", ".join("(" + ", ".join(f"${r * width + i + 1}" for i in range(width)) + ")" for r in range(count))
        head = sql.SQL("INSERT INTO {} ({}) VALUES ").format(_table_name(table), _column_names(columns))
        statement = _INSERTS[key] = head.as_string() + rows
    return statement


def as_sqlalchemy_error(exc: psycopg.Error, what: str) -> Exception:
    """The SQLAlchemy error class a statement would have raised (IntegrityError for a duplicate
    key, DataError for a value PostgreSQL refuses), without the statement's parameters."""
    return DBAPIError.instance(what, None, exc, psycopg.Error)


async def copy_rows(session: Conn, table: Table, rows: Inserted) -> None:
    """Insert `rows` (each names the same columns of `table`) in the session's transaction: a batch
    with one COPY, several times cheaper than a multi-row INSERT on both sides (no parameter
    processing per row here, no statement per row in PostgreSQL); a few rows (a single submit's)
    with one INSERT, which saves COPY's extra round trip. A failure raises the SQLAlchemy error
    class an INSERT would have raised."""
    if not rows:
        return
    statement, params, is_copy = _insert(table, rows)
    driver = await driver_of(session)
    try:
        if not is_copy:
            async with psycopg.AsyncRawCursor(driver) as raw:
                await raw.execute(statement, params)
            return
        types = await _copy_types(driver, table)
        names = _names(rows)
        binary = types is not None and all(n in types for n in names)
        if binary:
            assert types is not None
            _check_ranges(params, [types[n] for n in names], names)
            statement += " (FORMAT BINARY)"
        async with driver.cursor() as cursor, cursor.copy(statement) as copy:
            if binary:
                copy.set_types([types[n] for n in names])  # type: ignore[index]
            for row in params:
                await copy.write_row(row)
    except psycopg.Error as exc:
        raise as_sqlalchemy_error(exc, f"INSERT INTO {table.fullname}") from exc


_INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}


def _check_ranges(rows: Sequence[Sequence[Any]], types: Sequence[str], names: Sequence[str]) -> None:
    """A binary COPY sends an integer in its column's width, and psycopg truncates one that does
    not fit (70000 into a smallint arrives as 4464): refuse it here as PostgreSQL would a text one."""
    columns = [(k, _INT_RANGES[t]) for k, t in enumerate(types) if t in _INT_RANGES]
    for row in rows:
        for k, bound in columns:
            value = row[k]
            if value is not None and not -bound <= value < bound:
                raise psycopg.errors.NumericValueOutOfRange(f"{types[k]} out of range: column {names[k]}")


# Per table, its columns' types as PostgreSQL names them; None where one has no type psycopg knows.
_COPY_TYPES: dict[str, dict[str, str] | None] = {}


async def _copy_types(driver: psycopg.AsyncConnection[Any], table: Table) -> dict[str, str] | None:
    """The column types a binary COPY into `table` declares, read from the catalog once per process.
    Binary COPY spares the text form's formatting and escaping of every value: half the client's CPU
    for a batch of job rows (a UUID goes as its 16 bytes, a time as one integer)."""
    name = table.fullname
    if name not in _COPY_TYPES:
        async with driver.cursor() as cursor:
            await cursor.execute("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                                 "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", [name])
            found = dict(await cursor.fetchall())
        known = all(driver.adapters.types.get(t) is not None for t in found.values())
        _COPY_TYPES[name] = found if found and known else None
    return _COPY_TYPES[name]


_COMPILED: dict[str, str] = {}


# An array parameter cast to its type: sent in binary (`%(name)b`), which psycopg dumps several
# times faster than the text form (for 64 timestamps, 8 µs instead of 145; for 64 UUIDs, 9 instead
# of 54), and which the cast converts whatever element type psycopg picked (text[] to uuid[], …).
_ARRAY_CAST = re.compile(r"CAST\(%\((\w+)\)s AS (\w+(?: \w+)?)\[\]\)")


def _psycopg_text(statement: TextClause) -> str:
    """A `text()` statement as psycopg takes it (`:name` → `%(name)s`, an array cast's `%(name)b`),
    compiled once per SQL."""
    done = _COMPILED.get(statement.text)
    if done is None:
        compiled = str(statement.compile(dialect=postgresql_psycopg.dialect()))
        done = _COMPILED[statement.text] = _ARRAY_CAST.sub(r"CAST(%(\1)b AS \2[])", compiled)
    return done


_IDLE = pq.TransactionStatus.IDLE
_OPEN = frozenset({pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR})  # a transaction to roll back


async def pipelined(session: Conn, *steps: tuple[TextClause, Mapping[str, Any]],
                    commit: bool = False, rows: bool = True, before: Writes | None = None) -> list[Any]:
    """Run module-level `text()` statements in one round trip (`kit.roundtrip`): the last one's
    rows (none with `rows=False`), with attribute access like SQLAlchemy's; the transaction's BEGIN
    with them when they are its first, and with `commit` (for a use case whose last statement
    decides nothing more) its COMMIT. An error at any statement, COMMIT included (a deferred
    constraint, a serialization failure), skips the rest: nothing of the transaction commits, and
    the session rolls it back as for any error. psycopg then finds the transaction over, so
    SQLAlchemy's commit that follows is a no-op. `before`: another use case's queued writes, sent
    first in the same round trip (and sent only with it)."""
    driver = await driver_of(session)
    queued = before.take() if before is not None else []
    try:
        results = await roundtrip.run(driver, [*queued, *((_psycopg_text(st), params, False) for st, params in steps)],
                                      commit=commit)
    except psycopg.Error as exc:
        raise as_sqlalchemy_error(exc, "pipelined statements") from exc
    return roundtrip.rows(driver, results[-1]) if rows and results else []


class Writes:
    """Statements whose answers nobody reads, sent with the COMMIT in one round trip
    (`kit.roundtrip`) rather than one round trip each: a ledger batch's updates and inserts. Rows to
    insert beyond `SMALL_INSERT_ROWS` go in at once by COPY (not allowed in a pipeline), which a
    large batch amortizes. The session's own commit then finds nothing left to commit."""

    def __init__(self) -> None:
        # (statement, parameters, how: "one", "many", or "raw" for `$n` placeholders)
        self._steps: list[tuple[sql.Composed | sql.SQL | str, Any, str]] = []

    def execute(self, statement: sql.Composed | sql.SQL | str, params: Any = None) -> None:
        self._steps.append((statement, params, "one"))

    def executemany(self, statement: sql.Composed | sql.SQL | str, params: Sequence[Any]) -> None:
        if params:
            self._steps.append((statement, params, "many"))

    async def insert(self, session: Conn, table: Table, rows: Inserted) -> None:
        if len(rows) > SMALL_INSERT_ROWS:
            await copy_rows(session, table, rows)
        elif rows:
            statement, params, _ = _insert(table, rows)
            self._steps.append((statement, params, "raw"))

    async def commit(self, session: Conn, query: str | None = None) -> list[tuple[Any, ...]]:
        """The steps and the COMMIT in one round trip, with the BEGIN too when nothing ran before
        in the transaction (a submit's few rows). `query`: a statement run after the steps, in the
        transaction, whose rows are returned."""
        driver = await driver_of(session)
        if not self._steps and query is None and driver.pgconn.transaction_status == _IDLE:
            return []  # nothing ran, nothing to commit
        steps = self.take()
        if query is not None:
            steps.append((query, None, False))
        try:
            results = await roundtrip.run(driver, steps, commit=True)
        except psycopg.Error as exc:
            raise as_sqlalchemy_error(exc, "a pipelined write") from exc
        return roundtrip.rows(driver, results[-1], "tuple") if query is not None else []

    def take(self) -> list[roundtrip.Step]:
        """The queued statements as one round trip's steps, in order; none are left queued."""
        steps: list[roundtrip.Step] = []
        for statement, params, how in self._steps:
            if how == "many":
                steps += [(statement, p, False) for p in params]
            else:
                steps.append((statement, params, how == "raw"))
        self._steps.clear()
        return steps


def utcnow() -> datetime:
    return datetime.now(UTC)


_VERSION_7 = (0x7 << 76) | (0b10 << 62)  # RFC 9562's version and variant bits
_RANDOM_A = 0xFFF << 64
_RANDOM_B = (1 << 62) - 1


def new_id() -> uuid.UUID:
    """A row's id: a UUIDv7 (RFC 9562), the milliseconds since the epoch, then 74 random bits. A
    new row's key lands at the right edge of its indexes (PostgreSQL's fast path for the rightmost
    leaf), not on a random page: a job row with its indexes went in 8-16 µs instead of 20-28
    (docs/performance.md, session 31). `billing.ordered_uuid()` makes the same in SQL."""
    rand = int.from_bytes(os.urandom(10))
    return uuid.UUID(int=(time.time_ns() // 1_000_000) << 80 | _VERSION_7 | rand << 48 & _RANDOM_A
                     | rand & _RANDOM_B)


def _no_autocommit(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Every checkout starts with autocommit off, whatever way the connection came back to the pool
    (a caller that turned it on). One that cannot be turned off is dropped: the pool then hands
    out another connection."""
    if record.driver_connection.autocommit:
        try:
            dbapi_connection.autocommit = False  # no I/O on an idle connection
        except Exception as exc:
            raise DisconnectionError("connection left in autocommit") from exc


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
        event.listen(self.engine.sync_engine, "checkout", _no_autocommit)
        # The hot paths' own pool (`transaction`), opened on first use (it needs a running loop).
        self._conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._opening = asyncio.Lock()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends normally, rolled back otherwise."""
        async with self.sessionmaker.begin() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction on a connection of the hot paths' own pool (psycopg_pool), for
        statements run with `pipelined`, `copy_rows` and `Writes`, which take it as they take a
        session: what `session()` does without SQLAlchemy's session and pool around the
        connection, which cost about 0.35 ms of CPU and as much latency per transaction at light
        load (docs/performance.md, session 11). Committed when the block ends normally (nothing is
        left to commit when its last pipeline committed), rolled back otherwise; a connection left
        broken or mid-statement (a cancellation) is discarded by the pool."""
        pool = self._pool or await self._open_pool()
        try:
            conn = await pool.getconn()
        except psycopg.Error as exc:  # none free in time (PoolTimeout), or none can connect
            raise as_sqlalchemy_error(exc, "a connection of the hot paths' pool") from exc
        try:
            if conn.autocommit:  # left on by a caller
                await conn.set_autocommit(False)  # no I/O on an idle connection
            try:
                yield conn
            except BaseException:
                if conn.pgconn.transaction_status in _OPEN:
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()
                raise
            if conn.pgconn.transaction_status != _IDLE:
                try:
                    await conn.commit()
                except psycopg.Error as exc:
                    raise as_sqlalchemy_error(exc, "COMMIT") from exc
        finally:
            broken = conn.broken
            if conn.pgconn.transaction_status == _IDLE:
                await pool.putconn(conn)  # inline, without a pause: back in the pool at once
            else:  # the pool rolls it back, or discards it (broken, or mid-statement): not cut by a cancel
                await asyncio.shield(pool.putconn(conn))
            if broken:  # the server restarted, say: its idle siblings are likely dead too
                with contextlib.suppress(Exception):  # the caller's own outcome stands
                    await pool.check()

    async def _open_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        async with self._opening:
            if self._pool is None:
                # No check on checkout (a round trip each, as the engine's pre-ping would be): a
                # connection that died fails its one transaction, and the pool drops it. No
                # `reset` either: with one, the pool hands every returned connection to a worker
                # task, a wake-up of the loop per transaction; autocommit goes off at checkout.
                # psycopg prepares nothing here: `kit.roundtrip` prepares the statements it runs.
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                    self._conninfo, min_size=1, max_size=self._pool_size, open=False, name="hot",
                    kwargs={"autocommit": False, "prepare_threshold": None})
                await pool.open()
                self._pool = pool
        return self._pool

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        await self.engine.dispose()
