"""A quick loop for the drain: `make bench`'s drain phase alone, repeated on one stack.

    .venv/bin/python scripts/probe_drain.py [--jobs 20000] [--rounds 2] [--slots 32[,64…]] [--prefetch N[,M…]]
                                            [--profile DIR] [--loop-profile] [--env K=V ...]
                                            [--sql STATEMENT ...]
                                            [--apart | --together NAMES] [--beside NAMES]

Starts the embedded stack as `make bench` does, then, `--rounds` times: queues `--jobs` echo jobs
in gateway batches of 1,000 with no runner connected, starts two runner processes of `--slots`
slots holding `--prefetch` jobs beyond them (each a list alternating by round, to compare
settings on one stack) and waits until the wallet has paid for every job. Per round it prints
the drain's jobs/s, the CPU per job of each process (/proc utime+stime, as `make bench`),
PostgreSQL's commits and row writes per job by table (`pg_stat_database`, `pg_stat_user_tables`), its WAL
(records, full-page images, bytes; checkpoints begun: `pg_stat_wal`, `pg_stat_bgwriter`)
and Valkey's commands per job (`INFO commandstats`). `--profile DIR` samples the services and the runner
processes with py-spy over each drain's first 8 s; `--loop-profile` times the services' event-loop callbacks over
the first drain, by task (as `probe_dispatch.py --loop-profile`). `--sql` runs statements on the
database before the first round (e.g. to see what an index costs the drain:
`--sql 'DROP INDEX jobs.ix_jobs_create_time_id'`).
Compare rounds and runs made one after the other: figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as bench  # a sibling script
from probe_dispatch import _PG_TABLES, _PG_TOTALS, loop_profile_env, print_loops

# ANALYZE and VACUUM runs by table, whoever ran them (autovacuum or a service's own `kit.statistics`).
_PG_UPKEEP = ("SELECT schemaname || '.' || relname, analyze_count + autoanalyze_count, "
              "vacuum_count + autovacuum_count FROM pg_stat_user_tables")
# The write-ahead log: records, full-page images (each page's first change after a checkpoint
# logs the whole 8 kB page), bytes; and the checkpoints begun (by time or by WAL volume).
_PG_WAL = ("SELECT w.wal_records, w.wal_fpi, w.wal_bytes, b.checkpoints_timed + b.checkpoints_req "
           "FROM pg_stat_wal w, pg_stat_bgwriter b")


def _spy(profile: str, name: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` for 8 s, its raw stacks into `profile`/`name`.raw."""
    return subprocess.Popen([os.environ.get("PY_SPY", "py-spy"), "record", "-d", "8", "-r", "100", "--nonblocking",
                             "--format", "raw", "-o", f"{profile}/{name}.raw", "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain_round(p: bench.Platform, pg_url: str, valkey_url: str, jobs: int, k: int, slots: int, prefetch: str,
                log_dir: Path, profile: str | None, loops: Path | None = None) -> None:
    bench.submit_rest_batches(p, jobs, k * jobs)
    time.sleep(1.0)  # the submits' last commits and the statistics collector settle
    balance, _ = p.wallet()
    valkey, db = redis.Redis.from_url(valkey_url), psycopg.connect(pg_url, autocommit=True)
    calls0 = {cmd: v["calls"] for cmd, v in valkey.info("commandstats").items()}
    pg0 = db.execute(_PG_TOTALS).fetchone()
    tables0 = {row[0]: row[1:] for row in db.execute(_PG_TABLES)}
    upkeep0 = {row[0]: row[1:] for row in db.execute(_PG_UPKEEP)}
    wal0 = db.execute(_PG_WAL).fetchone()
    assert p.stack is not None
    spies = [_spy(profile, f"{name}.{k}", proc.pid) for name, proc in p.stack.procs.items()
             if proc is not None] if profile else []
    if loops is not None:  # the first round's drain only: its callbacks by task (`--loop-profile`)
        (loops / "start").touch()
    before = p.meter.snapshot()
    began, began_at = time.perf_counter(), time.time()
    if prefetch:
        os.environ["INNOSYSTEM_RUNNER_PREFETCH"] = prefetch  # the runners started next read it
    runners = bench.start_runners(p, bench.runner_tokens(p, 2), slots, log_dir)
    try:
        for n, proc in enumerate(runners):
            p.meter.track(f"runner-{k}.{n}", proc.pid)
            if profile:  # from its start: the drain is counted from there too
                spies.append(_spy(profile, f"runner-{k}.{n}", proc.pid))
        finished = bench.wait_charged(p, balance - jobs * bench.CENTS_PER_JOB, timeout=600)
        usage = p.meter.diff(before)
        drain = bench.finish_line(began_at, finished - began, p.wallet_changed())  # as `make bench` counts it
    finally:
        bench.stop_runners(runners)
        for spy in spies:
            spy.wait()
        if loops is not None:
            (loops / "stop").touch()
    calls1 = {cmd: v["calls"] for cmd, v in valkey.info("commandstats").items()}
    pg1 = db.execute(_PG_TOTALS).fetchone()
    wal1 = db.execute(_PG_WAL).fetchone()
    time.sleep(1.1)  # the statistics collector's flush
    tables1 = {row[0]: row[1:] for row in db.execute(_PG_TABLES)}
    upkeep1 = {row[0]: row[1:] for row in db.execute(_PG_UPKEEP)}
    held = f", prefetch {prefetch}" if prefetch else ""
    bench.say(f"drain of {jobs:,} ({slots} slots{held}): {jobs / drain:,.0f} jobs/s; CPU per job, "
              f"ms: total {usage.total * 1000 / jobs:.3f}; " + ", ".join(
                  f"{name} {seconds * 1000 / jobs:.3f}" for name, seconds in usage.seconds.items()
                  if seconds and seconds * 1000 / jobs >= 0.005))
    assert pg0 is not None and pg1 is not None
    commits, inserted, updated, deleted = ((int(b) - int(a)) / jobs for a, b in zip(pg0, pg1, strict=True))
    bench.say(f"  PostgreSQL per job: {commits:.3f} commits, {inserted:.2f} rows inserted, {updated:.2f} updated, "
              f"{deleted:.2f} deleted; by table (inserted / updated, of which HOT / deleted):")
    for name, counts in sorted(tables1.items()):
        ins, upd, hot, dele = ((b - a) / jobs for a, b in zip(tables0.get(name, (0, 0, 0, 0)), counts, strict=True))
        if ins + upd + dele >= 0.01:
            bench.say(f"    {name:40} {ins:5.2f} / {upd:5.2f}, {hot:5.2f} / {dele:5.2f}")
    assert wal0 is not None and wal1 is not None
    records, fpi, wal_bytes, checkpoints = (int(b) - int(a) for a, b in zip(wal0, wal1, strict=True))
    bench.say(f"  WAL per job: {records / jobs:.2f} records, {fpi / jobs:.3f} full-page images, "
              f"{wal_bytes / jobs:,.0f} bytes; checkpoints begun in the drain: {checkpoints}")
    upkeep = [f"{name} {a1 - a0}/{v1 - v0}" for name, (a1, v1) in sorted(upkeep1.items())
              for a0, v0 in [upkeep0.get(name, (0, 0))] if (a1, v1) != (a0, v0)]
    bench.say("  ANALYZE / VACUUM runs finished in the drain: " + (", ".join(upkeep) or "none"))
    commands = {cmd.removeprefix("cmdstat_"): (calls1[cmd] - calls0.get(cmd, 0)) / jobs for cmd in calls1}
    bench.say("  Valkey commands per job: " + ", ".join(
        f"{cmd} {v:.3f}" for cmd, v in sorted(commands.items(), key=lambda kv: -kv[1]) if v >= 0.005))
    if loops is not None:
        print_loops(loops, jobs)
    db.close()
    valkey.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per drain (default 20000)")
    parser.add_argument("--slots", default="32", help="slots per runner process (default 32); a list (32,64) "
                        "alternates by round")
    parser.add_argument("--prefetch", default="", help="the runners' prefetch (default theirs); a list (0,64) "
                        "alternates by round")
    parser.add_argument("--rounds", type=int, default=2, help="drains on the same stack (default 2)")
    bench.add_topology(parser)
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="a setting for the services")
    parser.add_argument("--profile", help="sample the services' and the runners' processes with py-spy for the "
                        "drain's first 8 s, raw stacks into this folder (py-spy from $PY_SPY, default `py-spy`)")
    parser.add_argument("--loop-profile", action="store_true",
                        help="time the services' event-loop callbacks over the first round's drain, by task")
    parser.add_argument("--sql", action="append", default=[], help="a statement to run before the first round")
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
            with psycopg.connect(pg_url, autocommit=True) as db:
                for statement in args.sql:
                    db.execute(statement)
            for k in range(args.rounds):
                slots, prefetch = [int(n) for n in args.slots.split(",")], args.prefetch.split(",")
                drain_round(p, pg_url, valkey_url, args.jobs, k, slots[k % len(slots)], prefetch[k % len(prefetch)],
                            log_dir, args.profile, loops if k == 0 else None)


if __name__ == "__main__":
    main()
