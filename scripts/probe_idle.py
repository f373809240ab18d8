"""What an exchange costs when it comes alone: the same work back to back and spaced out.

    .venv/bin/python scripts/probe_idle.py [--count 600] [--gaps 0,5,20]

Starts the embedded PostgreSQL and Valkey (nothing else) and runs, from one asyncio process, a
small ledger-like transaction (BEGIN, SELECT … FOR UPDATE, UPDATE, COMMIT) and a Valkey call
`--count` times for each gap between them, printing this process's CPU per operation
(`time.process_time`, the wait in between included: the "(the gap)" row is that alone) and the
wall time of one, p50 and p90. Back to back, each operation finds
the processes awake and their caches warm; spaced out, as at 50 jobs/s, every one of them (this
process, the PostgreSQL backend, Valkey) has gone to sleep in between. The ratio is what the
platform's exchanges pay at light load for the same work (docs/performance.md, session 7).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import redis.asyncio as aioredis

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey


async def _measure(what: str, op: Callable[[], Awaitable[object]], gap: float, count: int) -> None:
    for _ in range(50):  # warm the statement cache and the connection
        await op()
    walls: list[float] = []
    cpu = time.process_time()
    for _ in range(count):
        began = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - began)
        if gap:
            await asyncio.sleep(gap)
    per_op = (time.process_time() - cpu) / count
    cuts = statistics.quantiles(walls, n=10)
    print(f"{what:<12} gap {gap * 1000:4.0f} ms: CPU {per_op * 1e6:6.0f} µs per operation, "
          f"wall p50 {cuts[4] * 1e6:6.0f} µs, p90 {cuts[8] * 1e6:6.0f} µs", flush=True)


async def _probe(pg_url: str, valkey_url: str, gaps: list[float], count: int) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
        await db.execute("CREATE TABLE IF NOT EXISTS probe_wallet (id int PRIMARY KEY, held bigint NOT NULL)")
        await db.execute("INSERT INTO probe_wallet VALUES (1, 0) ON CONFLICT DO NOTHING")

        async def transaction() -> None:
            async with db.transaction():
                await db.execute("SELECT held FROM probe_wallet WHERE id = 1 FOR UPDATE")
                await db.execute("UPDATE probe_wallet SET held = held + 1 WHERE id = 1")

        async def nothing() -> None:
            pass

        valkey = aioredis.Redis.from_url(valkey_url)
        try:
            for gap in gaps:
                await _measure("(the gap)", nothing, gap, count)  # what the wait itself costs
                await _measure("PostgreSQL", transaction, gap, count)
                await _measure("Valkey", lambda: valkey.incr("probe"), gap, count)
        finally:
            await valkey.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=600, help="operations per gap (default 600)")
    parser.add_argument("--gaps", default="0,5,20", help="milliseconds between operations (default 0,5,20)")
    args = parser.parse_args()
    gaps = [float(g) / 1000 for g in args.gaps.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        pg, valkey = EmbeddedPostgres(Path(folder) / "pg"), EmbeddedValkey(Path(folder) / "valkey")
        url = pg.start().replace("postgresql+psycopg://", "postgresql://")
        try:
            valkey.start()
            asyncio.run(_probe(url, valkey.url, gaps, args.count))
        finally:
            valkey.stop()
            pg.stop()


if __name__ == "__main__":
    main()
