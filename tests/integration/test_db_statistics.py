"""`kit.statistics`: a hot table is analyzed once it has grown past what PostgreSQL last measured,
and the cached plan of a prepared statement follows (a sequential scan turns into an index scan)."""

from __future__ import annotations

import psycopg
from sqlalchemy import text

from innosystem.kit import statistics
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database

TABLE = "statistics_probe.runs"  # in a schema of its own, as a service's tables are


def _cached_plan(conn: psycopg.Connection) -> str:
    return "\n".join(r[0] for r in conn.execute("EXPLAIN EXECUTE probe_update('{1,2}', '{1,1}')").fetchall())


async def test_a_grown_table_is_analyzed_and_its_prepared_plan_follows(database_url: str) -> None:
    db = Database(to_async_url(database_url), pool_size=1)
    try:
        async with db.session() as s:
            await s.execute(text("DROP SCHEMA IF EXISTS statistics_probe CASCADE"))
            await s.execute(text("CREATE SCHEMA statistics_probe"))
            await s.execute(text(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, n int, pad text)"))
            await s.execute(text(f"INSERT INTO {TABLE} SELECT g, 0, repeat('x', 100) FROM generate_series(1, 20) g"))
        assert await statistics.analyze_grown(db, [TABLE]) == []  # one page: read whole whatever the plan
        with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            # what psycopg does with a statement used five times: prepared, one generic plan kept
            conn.execute("SET plan_cache_mode = force_generic_plan")
            conn.execute(f"PREPARE probe_update(int[], int[]) AS UPDATE {TABLE} AS t SET n = v.n "
                         "FROM unnest($1, $2) AS v(id, n) WHERE t.id = v.id")
            assert "Seq Scan on runs" in _cached_plan(conn)  # planned for a one-page table
            conn.execute(f"INSERT INTO {TABLE} SELECT g, 0, repeat('x', 100) FROM generate_series(21, 50000) g")
            assert "Seq Scan on runs" in _cached_plan(conn)  # kept as the table grew
            assert await statistics.analyze_grown(db, [TABLE]) == [TABLE]
            assert await statistics.analyze_grown(db, [TABLE]) == []  # measured now: nothing to do
            assert "Index Scan using runs_pkey" in _cached_plan(conn)
    finally:
        async with db.session() as s:
            await s.execute(text("DROP SCHEMA IF EXISTS statistics_probe CASCADE"))
        await db.close()
