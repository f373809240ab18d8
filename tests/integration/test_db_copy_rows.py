"""`kit.db.copy_rows`: a few rows go in with one INSERT, a batch with COPY; both store the same
values and fail with the error classes an ORM insert would raise, so callers need not care which."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, MetaData, SmallInteger, String, Table, select, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.exc import DataError, IntegrityError

from innosystem.kit import db as db_module
from innosystem.kit.config import to_async_url
from innosystem.kit.db import SMALL_INSERT_ROWS, Database, copy_rows

TABLE = Table("copy_rows_probe", MetaData(schema="public"),
              Column("id", UUID, primary_key=True), Column("name", String(50)), Column("doc", JSONB),
              Column("rank", SmallInteger), Column("at", DateTime(timezone=True)), Column("tags", ARRAY(String)))


def _rows(n: int) -> list[dict[str, Any]]:
    at = datetime(2026, 12, 6, 5, 0, 0, 123456, tzinfo=UTC)
    return [{"id": uuid.uuid4(), "name": f"row {k}", "doc": {"k": k, "nested": [k, None, "x"]} if k % 3 else None,
             "rank": (-1) ** k * k, "at": at + timedelta(seconds=k) if k % 2 else None,
             "tags": [f"t{k}", "é"] if k % 4 else []}
            for k in range(n)]


@pytest.mark.parametrize("n", [1, SMALL_INSERT_ROWS, SMALL_INSERT_ROWS + 1, 200])
async def test_rows_are_stored_as_given_and_errors_keep_their_class(database_url: str, n: int) -> None:
    db = Database(to_async_url(database_url), pool_size=1)
    try:
        async with db.session() as s:
            await s.execute(text("CREATE TABLE IF NOT EXISTS public.copy_rows_probe (id uuid PRIMARY KEY, "
                                 "name varchar(50), doc jsonb, rank smallint, at timestamptz, tags varchar[])"))
            await s.execute(text("TRUNCATE public.copy_rows_probe"))
        rows = _rows(n)
        async with db.session() as s:
            await copy_rows(s, TABLE, rows)
        if n > SMALL_INSERT_ROWS:  # went by binary COPY, with the types the catalog gives
            assert db_module._COPY_TYPES[TABLE.fullname] == {
                "id": "uuid", "name": "character varying", "doc": "jsonb", "rank": "smallint",
                "at": "timestamp with time zone", "tags": "character varying[]"}
        async with db.session() as s:
            stored = {r.id: (r.name, r.doc, r.rank, r.at, r.tags) for r in await s.execute(select(TABLE))}
        assert stored == {r["id"]: (r["name"], r["doc"], r["rank"], r["at"], r["tags"]) for r in rows}
        with pytest.raises(IntegrityError):  # a duplicate key
            async with db.session() as s:
                await copy_rows(s, TABLE, [*_rows(n - 1), rows[0]])
        with pytest.raises(DataError):  # a value PostgreSQL refuses (too long)
            async with db.session() as s:
                await copy_rows(s, TABLE, [*_rows(n - 1), {**_rows(1)[0], "id": uuid.uuid4(), "name": "x" * 51}])
        with pytest.raises(DataError, match="out of range"):  # a number its column cannot hold, never cut to fit
            async with db.session() as s:
                await copy_rows(s, TABLE, [*_rows(n - 1), {**_rows(1)[0], "id": uuid.uuid4(), "rank": 70000}])
        async with db.session() as s:
            assert (await s.execute(text("SELECT count(*) FROM public.copy_rows_probe"))).scalar() == n
    finally:
        await db.close()
