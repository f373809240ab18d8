"""Planner statistics kept up with a service's fast-growing tables, so that cached plans follow.

Measured (docs/performance.md, session 5): psycopg prepares a statement after five uses, and
PostgreSQL keeps a generic plan made while the table was a page or two: a hash join over a
sequential scan. Nothing replans it until an ANALYZE, and autovacuum's first one on a new
database can come minutes later; during `make bench`'s drain of 24,000 jobs `jobs.job_attempts`
was read whole 581 times (6 million rows). So a service analyzes its hot tables itself once one
has grown fourfold since PostgreSQL last measured it (an ANALYZE also drops the cached plans that
depend on the table). Past the first minutes that is rare, and autovacuum keeps the statistics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy import text

from innosystem.kit.db import Database

log = logging.getLogger(__name__)

GROWTH = 4  # analyze a table at this many times the pages PostgreSQL last measured
MIN_PAGES = 8  # smaller tables are read whole whatever the plan
INTERVAL_SECONDS = 2.0  # one query of pg_class per pass

_SIZES = text(
    "SELECT c.oid::regclass::text AS name, c.relpages AS measured, "
    "pg_relation_size(c.oid) / current_setting('block_size')::int AS pages "
    "FROM pg_class AS c WHERE c.oid = ANY(CAST(:tables AS regclass[]))")


async def analyze_grown(db: Database, tables: Sequence[str]) -> list[str]:
    """ANALYZE each of `tables` (schema-qualified names) that has grown `GROWTH`-fold since its
    statistics were taken; returns those analyzed."""
    async with db.session() as s:
        sizes = (await s.execute(_SIZES, {"tables": list(tables)})).all()
    grown = [r.name for r in sizes if r.pages >= MIN_PAGES and r.pages >= GROWTH * max(r.measured, 1)]
    for name in grown:  # a name PostgreSQL itself printed, not input: safe to splice
        async with db.session() as s:
            await s.execute(text(f"ANALYZE {name}"))
        log.info("analyzed %s: it has grown since its statistics were taken", name)
    return grown


async def follow_growth(db: Database, tables: Sequence[str], interval: float = INTERVAL_SECONDS) -> None:
    """Background loop: `analyze_grown` every `interval` seconds."""
    while True:
        try:
            await analyze_grown(db, tables)
        except Exception as exc:  # the database is away: the next pass tries again
            log.warning("table statistics not checked: %s", exc)
        await asyncio.sleep(interval)
