"""A quick loop for the submit path's per-request cost: `make bench`'s single-submit phases only.

    .venv/bin/python scripts/probe_submit.py [--singles 3000] [--batches 0] [--latency 6] [--profile DIR]
                                             [--env K=V ...] [--apart | --together NAMES] [--beside NAMES]

Starts the embedded stack as `make bench` does (scripts/bench_e2e.py: PostgreSQL, Valkey, the
services, jobs and runners together with a billing replica beside them, as `innosystem up` runs
them, or each apart with `--apart`, or other services together with `--together`/`--beside`, and
the gateway), warms up, then runs gRPC singles (64 in flight) and gateway singles (64 HTTP clients,
one job per request), and prints the same /proc CPU table: ms of CPU per submitted job, per
process. `--latency S` adds single gateway submits at 50/s for S
seconds (open-loop, no runner connected), p50/p95/p99 of the call. `--batches N` adds N jobs
submitted through the gateway in batches of 1,000 (2 clients, as `make bench`; `--batch-clients`). `--profile DIR`
samples the jobs and billing processes (gRPC singles), the gateway, jobs and billing (gateway singles) and
all three (batches) with py-spy, raw stacks into DIR (py-spy from $PY_SPY, default `py-spy`).
`--env K=V` passes a setting to the services and the gateway, to compare its values in one hour.

CPU per job is the figure to compare on a shared machine; it still moves with the machine's load
(a busy machine costs more CPU per request), so compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as bench  # a sibling script


def _spy(p: bench.Platform, names: list[str], folder: str | None, label: str,
         seconds: int) -> list[subprocess.Popen[bytes]]:
    if folder is None or p.stack is None:
        return []
    py_spy = os.environ.get("PY_SPY", "py-spy")
    return [subprocess.Popen([py_spy, "record", "-d", str(seconds), "-r", "100", "--nonblocking", "--format", "raw",
                              "-o", f"{folder}/{label}-{name}.raw", "-p", str(p.stack.procs[name].pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in dict.fromkeys(p.stack.process_name(n) for n in names)]


def probe(p: bench.Platform, args: argparse.Namespace) -> None:
    n = args.singles
    asyncio.run(bench.submit_grpc(p, 200, 10_000_000, batch=False, concurrency=64))  # warm caches and pools
    bench.submit_rest_single(p, 200, 10_100_000, workers=64)
    phases = []
    if n:  # `--singles 0`: the batches alone
        spies = _spy(p, ["jobs", "billing"], args.profile, "grpc", args.spy_seconds)
        before = p.meter.snapshot()
        seconds = asyncio.run(bench.submit_grpc(p, n, 0, batch=False, concurrency=64))
        phases.append(("grpc_single", "gRPC singles", p.meter.diff(before), n))
        bench.say(f"gRPC singles (64 in flight): {n / seconds:,.0f} jobs/s")
        for spy in spies:
            spy.wait()
        spies = _spy(p, ["gateway", "jobs", "billing"], args.profile, "gateway", args.spy_seconds)
        before = p.meter.snapshot()
        seconds = bench.submit_rest_single(p, n, n, workers=64)
        phases.append(("gateway_single", "gateway singles", p.meter.diff(before), n))
        bench.say(f"gateway singles (64 clients): {n / seconds:,.0f} jobs/s")
        for spy in spies:
            spy.wait()
    if args.batches:
        bench.submit_rest_batches(p, 2000, 10_200_000)  # warm up the batch path
        spies = _spy(p, ["gateway", "jobs", "billing"], args.profile, "batch", args.spy_seconds)
        before = p.meter.snapshot()
        seconds = bench.submit_rest_batches(p, args.batches, 2 * n, workers=args.batch_clients)
        phases.append(("gateway_batch", "gateway batches", p.meter.diff(before), args.batches))
        bench.say(f"gateway, batches of 1000 ({args.batch_clients} clients): {args.batches / seconds:,.0f} jobs/s")
        for spy in spies:
            spy.wait()
    if phases:  # `--singles 0 --latency S`: the latency phase alone
        bench.submit_cpu_table(phases)
    if args.latency:
        durations, refused = bench.submit_latency_gateway(p, 50, args.latency, 20_000_000)
        figures = bench.percentiles(durations)
        bench.say(f"one gateway submit at 50/s for {args.latency:g} s: "
                  + ", ".join(f"{k} {v}" for k, v in figures.items()) + (f"; refused {refused}" if refused else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=3000, help="submits per phase (default 3000)")
    parser.add_argument("--batches", type=int, default=0, help="jobs to submit in batches of 1000 (default none)")
    parser.add_argument("--batch-clients", type=int, default=2,
                        help="clients submitting batches at once (default 2, as `make bench`)")
    parser.add_argument("--latency", type=float, default=0, help="seconds of single gateway submits at 50/s")
    parser.add_argument("--profile", help="sample the processes with py-spy, raw stacks into this folder")
    bench.add_topology(parser)
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="a setting for the processes")
    parser.add_argument("--spy-seconds", type=int, default=6, help="py-spy sampling time per phase (default 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="innosystem-probe-") as tmp:
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        settings = dict(item.split("=", 1) for item in args.env)
        with bench.embedded_platform(Path(tmp), log_dir, "probe", settings,
                                     bench.together_of(args), bench.beside_of(args)) as (p, _, _):
            probe(p, args)

if __name__ == "__main__":
    main()
