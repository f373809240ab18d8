"""What an exchange costs when it comes alone: the same work back to back and spaced out.

    .venv/bin/python scripts/probe_idle.py [--count 600] [--gaps 0,5,20] [--in-flight 64 --calls 8000]

Starts the embedded PostgreSQL and Valkey and a bare gRPC server in a process of its own (grpc.aio,
the standard health service), and runs, from one asyncio process, a small ledger-like transaction
(BEGIN, SELECT … FOR UPDATE, UPDATE, COMMIT), a Valkey call and a gRPC unary call (health Check)
`--count` times for each gap between them, printing this process's CPU per operation
(`time.process_time`, the wait in between included: the "(the gap)" row is that alone), for gRPC
the server process's too (/proc), and the wall time of one, p50 and p90. Back to back, each operation finds
the processes awake and their caches warm; spaced out, as at 50 jobs/s, every one of them (this
process, the PostgreSQL backend, Valkey) has gone to sleep in between. The ratio is what the
platform's exchanges pay at light load for the same work (docs/performance.md, session 7).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psycopg
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey, free_port

# A process serving only grpc.aio's health service: a gRPC server with nothing of ours in it.
_GRPC_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2_grpc
async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(what: str, op: Callable[[], Awaitable[object]], gap: float, count: int,
                   server: int | None = None) -> None:
    for _ in range(50):  # warm the statement cache and the connection
        await op()
    walls: list[float] = []
    cpu = time.process_time()
    served = _cpu_seconds(server) if server else 0.0
    for _ in range(count):
        began = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - began)
        if gap:
            await asyncio.sleep(gap)
    per_op = (time.process_time() - cpu) / count
    cuts = statistics.quantiles(walls, n=10)
    beside = f" (+ the server {(_cpu_seconds(server) - served) / count * 1e6:5.0f})" if server else ""
    print(f"{what:<12} gap {gap * 1000:4.0f} ms: CPU {per_op * 1e6:6.0f} µs per operation{beside}, "
          f"wall p50 {cuts[4] * 1e6:6.0f} µs, p90 {cuts[8] * 1e6:6.0f} µs", flush=True)


async def _throughput(check: Callable[[], Awaitable[object]], calls: int, in_flight: int, server: int) -> None:
    """`calls` unary calls from `in_flight` concurrent callers: calls/s and each end's CPU per call."""
    for _ in range(200):
        await check()
    left = iter(range(calls))

    async def caller() -> None:
        for _ in left:
            await check()

    cpu, served, began = time.process_time(), _cpu_seconds(server), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    seconds = time.perf_counter() - began
    print(f"gRPC, {in_flight} in flight: {calls / seconds:,.0f} calls/s, CPU per call: the caller "
          f"{(time.process_time() - cpu) / calls * 1e6:.0f} µs, the server "
          f"{(_cpu_seconds(server) - served) / calls * 1e6:.0f} µs", flush=True)


async def _probe(pg_url: str, valkey_url: str, gaps: list[float], count: int, grpc_addr: str, grpc_pid: int,
                 in_flight: int = 0, calls: int = 0) -> None:
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
        channel = grpc.aio.insecure_channel(grpc_addr)
        check = health_pb2_grpc.HealthStub(channel).Check
        try:
            for gap in gaps:
                await _measure("(the gap)", nothing, gap, count)  # what the wait itself costs
                await _measure("PostgreSQL", transaction, gap, count)
                await _measure("Valkey", lambda: valkey.incr("probe"), gap, count)
                await _measure("gRPC", lambda: check(health_pb2.HealthCheckRequest()), gap, count, grpc_pid)
            if in_flight:
                await _throughput(lambda: check(health_pb2.HealthCheckRequest()), calls, in_flight, grpc_pid)
        finally:
            await valkey.aclose()
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=600, help="operations per gap (default 600)")
    parser.add_argument("--gaps", default="0,5,20", help="milliseconds between operations (default 0,5,20)")
    parser.add_argument("--in-flight", type=int, default=0, help="then calls/s with this many concurrent callers")
    parser.add_argument("--calls", type=int, default=8000, help="calls for --in-flight (default 8000)")
    args = parser.parse_args()
    gaps = [float(g) / 1000 for g in args.gaps.split(",") if g]
    with tempfile.TemporaryDirectory() as folder:
        pg, valkey = EmbeddedPostgres(Path(folder) / "pg"), EmbeddedValkey(Path(folder) / "valkey")
        url = pg.start().replace("postgresql+psycopg://", "postgresql://")
        addr = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen([sys.executable, "-c", _GRPC_SERVER, addr], stdout=subprocess.PIPE)
        try:
            valkey.start()
            assert server.stdout is not None
            server.stdout.readline()  # "ready"
            asyncio.run(_probe(url, valkey.url, gaps, args.count, addr, server.pid, args.in_flight, args.calls))
        finally:
            server.kill()
            server.wait()
            valkey.stop()
            pg.stop()


if __name__ == "__main__":
    main()
