"""What a single submit's exchanges cost with nothing of ours in them: the floor of the gateway's
submit at light load on this machine.

    .venv/bin/python scripts/probe_floor.py [--rate 50] [--seconds 10]

Starts the embedded PostgreSQL and Valkey, a bare gRPC server (grpc.aio, one generic unary method)
and a bare HTTP server (aiohttp, one route that makes that gRPC call), each in a process of its
own, and calls the HTTP route at `--rate` calls a second with a kept-open connection, as `make
bench`'s gateway submit phase does. Three shapes of the gRPC method, each its own phase:

- `nothing`: answers at once (HTTP and gRPC hops alone);
- `store`: one PostgreSQL transaction (an insert and its COMMIT sent together, as the jobs service
  stores a lone submit) and one Valkey call, in turn;
- `submit`: a Valkey read, that transaction, then a Valkey script call: the exchanges a lone
  submit crosses (its change tokens, its commit, its enqueue).

Prints p50 / p90 / p99 of each call's wall time (docs/performance.md, session 29).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey, free_port

_GRPC_SERVER = """
import asyncio, sys
import grpc, psycopg, redis.asyncio as aioredis
pg_url, valkey_url, addr = sys.argv[1:4]
async def main():
    db = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    await db.execute("CREATE TABLE IF NOT EXISTS floor_jobs (id bigserial PRIMARY KEY, payload jsonb)")
    valkey = aioredis.Redis.from_url(valkey_url)
    script = valkey.register_script("return redis.call('LPUSH', KEYS[1], ARGV[1])")
    async def store():
        async with db.pipeline():
            await db.execute("BEGIN")
            await db.execute("INSERT INTO floor_jobs (payload) VALUES (%s)", ['{"n": 1}'])
            await db.execute("COMMIT")
    async def nothing(request, context):
        return b""
    async def stored(request, context):
        await store()
        await valkey.incr("floor")
        return b""
    async def submit(request, context):
        await valkey.get("token")
        await store()
        await script(keys=["floor:queue"], args=["1"])
        return b""
    handlers = {name: grpc.unary_unary_rpc_method_handler(f) for name, f in
                (("Nothing", nothing), ("Store", stored), ("Submit", submit))}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", handlers)])
    server.add_insecure_port(addr)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""

_HTTP_SERVER = """
import sys
import grpc
from aiohttp import web
grpc_addr, port = sys.argv[1], int(sys.argv[2])
async def on_startup(app):
    channel = grpc.aio.insecure_channel(grpc_addr)
    app["calls"] = {name: channel.unary_unary(f"/floor.Floor/{name}") for name in ("Nothing", "Store", "Submit")}
async def call(request):
    await request.read()
    await request.app["calls"][request.match_info["name"]](b"")
    return web.json_response({"ok": True})
app = web.Application()
app.on_startup.append(on_startup)
app.router.add_post("/{name}", call)
print("ready", flush=True)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


def _started(args: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def _phase(port: int, name: str, rate: float, seconds: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = b'{"jobTypeId": "x", "payload": {"n": 1}}'
    for _ in range(50):  # warm
        conn.request("POST", f"/{name}", body, {"Content-Type": "application/json"})
        conn.getresponse().read()
    walls: list[float] = []
    began = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = began + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        start = time.perf_counter()
        conn.request("POST", f"/{name}", body, {"Content-Type": "application/json"})
        conn.getresponse().read()
        walls.append(time.perf_counter() - start)
    conn.close()
    cuts = statistics.quantiles(walls, n=100)
    print(f"{name:<8} at {rate:g}/s: p50 {cuts[49] * 1e3:5.2f} ms, p90 {cuts[89] * 1e3:5.2f} ms, "
          f"p99 {cuts[98] * 1e3:5.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50, help="calls a second (default 50)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds a phase (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pg, valkey = EmbeddedPostgres(Path(folder) / "pg"), EmbeddedValkey(Path(folder) / "valkey")
        url = pg.start().replace("postgresql+psycopg://", "postgresql://")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            valkey.start()
            grpc_addr, port = f"127.0.0.1:{free_port()}", free_port()
            procs.append(_started([_GRPC_SERVER, url, valkey.url, grpc_addr]))
            procs.append(_started([_HTTP_SERVER, grpc_addr, str(port)]))
            time.sleep(0.5)  # the HTTP server listens once its app has started
            for name in ("Nothing", "Store", "Submit"):
                _phase(port, name, args.rate, args.seconds)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            valkey.stop()
            pg.stop()


if __name__ == "__main__":
    main()
