"""A quick loop for the run path at a steady rate: `make bench`'s dispatch phase, taken apart.

    .venv/bin/python scripts/probe_dispatch.py [--rate 200] [--count 1600] [--profile DIR] [--loop-profile]
                                               [--env K=V ...] [--sql STATEMENT ...]
                                               [--apart | --together NAMES] [--beside NAMES]

Starts the embedded stack as `make bench` does (PostgreSQL, Valkey, the five services in four
processes and the gateway) with two runner processes of 32 slots, then submits `--count` echo jobs
over gRPC at `--rate` per second, open-loop, and prints:

- each job's time from the submit call's start to its answer, to its attempt's start (the lease)
  and to its processor's start (p50 / p90 / max);
- the CPU per job of each process over the submits (/proc utime+stime, as `make bench`);
- Valkey commands per job (`INFO commandstats`) and PostgreSQL commits and row writes per job
  (`pg_stat_database`): the exchanges a job costs at that rate;
- the row writes per job by table (`pg_stat_user_tables`: inserted, updated and how many of those
  were HOT, deleted).

`--apart` runs every service in a process of its own (as compose does; by default jobs and runners
share one with a billing replica beside them, as `innosystem up` runs them; `--together` and
`--beside` choose other arrangements, e.g. `--beside ''` for no billing replica). `--env K=V`
passes settings to the services (e.g. to compare a knob's two values in one hour), `--sql`
runs statements before the first submit (`--sql "UPDATE jobs.job_type_prices SET unit_price_cents
= 0, cap_cents = 0"`: jobs that cost nothing, so no hold and no capture, billing's share priced),
`--profile DIR` samples the jobs, billing and runners services with py-spy for 6 s (raw stacks
into DIR; py-spy from $PY_SPY, default `py-spy`). `--loop-profile` times every event-loop callback
of the services over the submits (`scripts/loopprofile/sitecustomize.py`) and prints, per process,
the callbacks per job and the CPU per job of the tasks that spend the most. Compare runs made one
after the other: figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as bench  # a sibling script

from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1 import jobs_pb2_grpc

_PG_TOTALS = ("SELECT sum(xact_commit), sum(tup_inserted), sum(tup_updated), sum(tup_deleted) "
              "FROM pg_stat_database")
_PG_TABLES = ("SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
              "FROM pg_stat_user_tables")


def _pct(values: list[float]) -> str:
    v = sorted(values)
    return (f"p50 {v[len(v) // 2] * 1000:6.1f}  p90 {v[int(len(v) * 0.9)] * 1000:6.1f}  max {v[-1] * 1000:6.1f} ms"
            if v else "no samples")


async def _submit(p: bench.Platform, rate: float, count: int) -> dict[str, tuple[float, float]]:
    """Open-loop single submits: job id → (call start, answer), epoch seconds."""
    metadata = bench.grpc_metadata(p)
    out: dict[str, tuple[float, float]] = {}
    async with grpc.aio.insecure_channel(p.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        async def one(i: int) -> None:
            message = pb.SubmitJobRequest(project_id=p.demo.project_id, job_type_id=p.echo)
            message.payload.update(bench.payload(i))
            began = time.time()
            job = await stub.SubmitJob(message, metadata=metadata, timeout=30)
            out[job.id] = (began, time.time())

        tasks, start = [], time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return out


async def _timings(p: bench.Platform, sent: dict[str, tuple[float, float]]) -> list[tuple[float, float, float]]:
    """Per job: (answer, attempt start, processor start), each from the submit call's start."""
    metadata = bench.grpc_metadata(p)
    rows: list[tuple[float, float, float]] = []
    async with grpc.aio.insecure_channel(p.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        pending = dict(sent)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for job_id in list(pending)[:500]:
                job = await stub.GetJob(pb.GetJobRequest(job_id=job_id, view=pb.JOB_VIEW_FULL), metadata=metadata,
                                        timeout=10)
                if job.status != enums.JOB_STATUS_SUCCEEDED:
                    continue
                began, answered = pending.pop(job_id)
                leased = job.attempts[0].start_time.ToMicroseconds() / 1e6
                rows.append((answered - began, leased - began, job.result["processorStart"] - began))
            if pending:
                await asyncio.sleep(0.2)
    return rows


def probe(p: bench.Platform, pg_url: str, valkey_url: str, args: argparse.Namespace, log_dir: Path,
          loops: Path | None) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:  # before any submit reads what they change
        for statement in args.sql:
            admin.execute(statement)
    runners = bench.start_runners(p, bench.runner_tokens(p, 2), 32, log_dir)
    try:
        asyncio.run(_submit(p, args.rate, 100))  # warm caches, pools and the runners' streams
        time.sleep(2)
        valkey, db = redis.Redis.from_url(valkey_url), psycopg.connect(pg_url, autocommit=True)
        calls0 = {k: v["calls"] for k, v in valkey.info("commandstats").items()}
        pg0 = db.execute(_PG_TOTALS).fetchone()
        tables0 = {row[0]: row[1:] for row in db.execute(_PG_TABLES)}
        spies = []
        if args.profile:
            spies = [subprocess.Popen([os.environ.get("PY_SPY", "py-spy"), "record", "-d", "6", "-r", "100",
                                       "--nonblocking", "--format", "raw", "-o", f"{args.profile}/{name}.raw",
                                       "-p", str(p.stack.procs[name].pid)],  # type: ignore[union-attr]
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name in dict.fromkeys(p.stack.process_name(n) for n in ("jobs", "billing", "runners"))]
        before = p.meter.snapshot()
        if loops is not None:
            (loops / "start").touch()
            waited = time.monotonic() + 3
            while len(list(loops.glob("*.on"))) < len(p.stack.procs) and time.monotonic() < waited:  # type: ignore[union-attr]
                time.sleep(0.05)  # each process has begun timing its callbacks
        sent = asyncio.run(_submit(p, args.rate, args.count))
        usage = p.meter.diff(before)
        if loops is not None:
            (loops / "stop").touch()
        time.sleep(1.0)  # the last endings settle
        calls1 = {k: v["calls"] for k, v in valkey.info("commandstats").items()}
        pg1 = db.execute(_PG_TOTALS).fetchone()
        time.sleep(0.6)  # the statistics collector's flush (PGSTAT_MIN_INTERVAL is 1 s)
        tables1 = {row[0]: row[1:] for row in db.execute(_PG_TABLES)}
        for spy in spies:
            spy.wait()
        rows = asyncio.run(_timings(p, sent))
    finally:
        bench.stop_runners(runners)
    n = len(sent)
    bench.say(f"{n} jobs at {args.rate:g}/s, from the submit call's start:")
    bench.say(f"  answered            {_pct([r[0] for r in rows])}")
    bench.say(f"  attempt started     {_pct([r[1] for r in rows])}")
    bench.say(f"  processor started   {_pct([r[2] for r in rows])}")
    used = {name: seconds for name, seconds in usage.seconds.items() if seconds and seconds > 0.005}
    bench.say("  CPU per job, ms: " + ", ".join(f"{name} {seconds * 1000 / n:.2f}" for name, seconds in used.items()))
    commands = {k.removeprefix("cmdstat_"): (calls1[k] - calls0.get(k, 0)) / n for k in calls1}
    bench.say("  Valkey commands per job: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                       sorted(commands.items(), key=lambda kv: -kv[1]) if v >= 0.05))
    assert pg0 is not None and pg1 is not None
    commits, inserted, updated, deleted = ((int(b) - int(a)) / n for a, b in zip(pg0, pg1, strict=True))
    bench.say(f"  PostgreSQL per job: {commits:.2f} commits, {inserted:.1f} rows inserted, {updated:.1f} updated, "
              f"{deleted:.1f} deleted")
    if loops is not None:
        print_loops(loops, n)
    writes = {name: [(b - a) / n for a, b in zip(tables0.get(name, (0, 0, 0, 0)), counts, strict=True)]
              for name, counts in tables1.items()}
    bench.say("  row writes per job by table (inserted / updated, of which HOT / deleted):")
    for name, (ins, upd, hot, dele) in sorted(writes.items(), key=lambda kv: -sum(kv[1]) + kv[1][2]):
        if ins + upd + dele >= 0.05:
            bench.say(f"    {name:40} {ins:5.2f} / {upd:5.2f}, {hot:5.2f} / {dele:5.2f}")


STALL_SECONDS = 0.010  # a callback this long shows in a dispatch's p99


def loop_profile_env(folder: Path) -> dict[str, str]:
    """The services' settings that time their event loops' callbacks into `folder`
    (scripts/loopprofile/sitecustomize.py, between its `start` and `stop` files)."""
    root = Path(__file__).resolve().parent.parent
    return {"INNOSYSTEM_LOOP_PROFILE": str(folder), "PYTHONPATH": os.pathsep.join(
        [str(root / "scripts" / "loopprofile"), str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}


def print_loops(folder: Path, jobs: int) -> None:
    """Each service process's event-loop callbacks over the submits (`--loop-profile`)."""
    deadline = time.monotonic() + 5  # every process that began timing has written its report
    while time.monotonic() < deadline and len(list(folder.glob("*.json"))) < len(list(folder.glob("*.on"))):
        time.sleep(0.05)
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        stats = report["stats"]
        if not stats:
            continue
        calls, cpu = sum(c for c, *_ in stats.values()), sum(t for _, t, *_ in stats.values())
        if calls < jobs:  # a process the jobs do not pass through (tenancy, keys, an idle billing)
            continue
        name = " ".join(report["argv"][1:]) or path.stem
        bench.say(f"  event loop of `{name}`: {calls / jobs:.0f} callbacks and {cpu * 1000 / jobs:.2f} ms of CPU "
                  "per job; by what they ran (steps per job, CPU per step, CPU per job):")
        for what, (count, seconds, _) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:14]:
            per_step, per_job = seconds * 1e6 / count, seconds * 1000 / jobs
            bench.say(f"    {count / jobs:6.1f} {per_step:7.0f} µs {per_job:6.2f} ms  {what[:100]}")
        stalls = sorted(((longest, what) for what, (_, _, longest) in stats.items() if longest >= STALL_SECONDS),
                        reverse=True)[:8]
        if stalls:  # one callback that held the loop: every job behind it waited that long
            bench.say(f"    callbacks that held the loop {STALL_SECONDS * 1000:.0f} ms or more, the longest of each: "
                      + ", ".join(f"{what[:60]} {longest * 1000:.0f} ms" for longest, what in stalls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="submits per second (default 200)")
    parser.add_argument("--count", type=int, default=1600, help="jobs to submit (default 1600)")
    bench.add_topology(parser)
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="a setting for the services")
    parser.add_argument("--profile", help="sample jobs, billing and runners with py-spy, raw stacks into this folder")
    parser.add_argument("--sql", action="append", default=[],
                        help="a statement to run before the first submit (e.g. every price set to 0: no holds)")
    parser.add_argument("--loop-profile", action="store_true",
                        help="time the services' event-loop callbacks over the submits, by task")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="innosystem-probe-") as tmp:
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        loops = None
        if args.loop_profile:
            loops = Path(tmp) / "loops"
            loops.mkdir()
            extra.update(loop_profile_env(loops))
        with bench.embedded_platform(Path(tmp), log_dir, "probe", extra,
                                     bench.together_of(args), bench.beside_of(args)) as (p, pg_url, valkey_url):
            probe(p, pg_url, valkey_url, args, log_dir, loops)

if __name__ == "__main__":
    main()
