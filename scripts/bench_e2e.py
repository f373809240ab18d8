"""End-to-end benchmark: submit, dispatch and drain through the real processes, beside a bare
Redis list queue doing the same work as a yardstick, and the CPU each process spends per job.

    python scripts/bench_e2e.py [--jobs 20000] [--rate 200] [--seconds 10] [--out bench-results-e2e.json]
    python scripts/bench_e2e.py --gateway http://127.0.0.1:8080 --admin-key isk_admin_… \\
        --jobs-addr 127.0.0.1:50053 --runners-addr 127.0.0.1:50054      # a running stack

Without --gateway it starts embedded PostgreSQL and Valkey in a temporary folder and the five
services and the gateway as processes (as `innosystem up` does; `--apart` as compose does, or
`--together NAMES --beside NAMES` another arrangement, to compare in the same hour). Runner
processes (one per core, `innosystem runner`) run an `echo` that stamps its start time.

  (a) drain: --jobs no-op jobs (~100-byte payload) submitted in batches of 1000 while no runner
      is connected, then the runners start: time until every job is Succeeded and charged
      (the wallet has paid for all of them and holds nothing). The finish line is the wallet's
      last change (its `update_time`, stamped by the last capture), read once the wallet is
      seen paid; the poll that sees it (every 0.25 s) is printed too (`*_polled` in the JSON).
      The yardstick's finish line is its last job's, likewise, and its poll's (every 10 ms).
  (b) submit throughput: batches and single calls, through the gateway and through gRPC (gateway
      single calls from --gateway-clients concurrent clients, 64 by default). The HTTP clients
      keep their connections open between calls, as client libraries do (httpx, requests'
      Session, the platform's SDK); the gateway's single calls are measured again with a new
      connection per call, as a one-off script makes (and as every phase did before 2026-12-06).
  (c) dispatch latency: single submits at a steady --rate (and a lighter --light-rate) to idle
      runners, submit call start → processor start, p50/p95/p99, and of it the submit call's own
      duration (`submit_call` in the JSON).
  (d) yardstick: LPUSH/BRPOP on one Redis list with the same payload and process count, for
      both the drain and the latency; the ratios ours/yardstick.
  (e) submit latency: single submits through the gateway (HTTP) at a steady --submit-rate
      (50/s by default), open-loop, runners connected: each call's duration from when it was
      due, p50/p95/p99; with connections kept open, then with a new connection per call.

CPU per job (`CpuMeter`): around the drain and each submit phase, utime + stime from
/proc/<pid>/stat of each service, the gateway, each runner process, PostgreSQL (the postmaster,
its live backends and, through its cutime/cstime, the backends that exited) and Valkey; the
drain as CPU seconds per 1,000 jobs with each process's peak RSS (VmHWM), the submit phases as
ms per submitted job. Against an external stack (--gateway) the processes are unknown, so it is
skipped. The benchmark's own CPU shows beside the total, not in it.

A benchmark measures and prints; it asserts nothing but that every job ended Succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import grpc
import redis

from innosystem.demo import Demo, seed
from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1 import jobs_pb2_grpc
from innosystem.kit.config import SERVICES
from innosystem.rest import Rest
from innosystem.stack import BESIDE, TOGETHER, Stack

SCRIPTS = Path(__file__).resolve().parent
PAYLOAD = {"text": "x" * 70, "n": 0}  # ~100 bytes as JSON with the index
BATCH = 1000
CENTS_PER_JOB = 1  # the seeded `echo` type's base cost


def payload(i: int) -> dict[str, Any]:
    return {**PAYLOAD, "n": i}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 2), "p95_ms": round(cuts[94] * 1000, 2),
            "p99_ms": round(cuts[98] * 1000, 2), "max_ms": round(max(values) * 1000, 2), "samples": len(values)}


def say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------ CPU per job

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DATA_SERVERS = ("postgres", "valkey")  # listed last, after the platform's own processes


def _proc_stats() -> dict[int, tuple[int, int]]:
    """Every process's (parent pid, CPU ticks) from /proc/<pid>/stat, where the ticks are its own
    utime + stime (all its threads) plus cutime + cstime: what its children that it has waited
    for used. A process that exits moves its whole count into its parent's cutime/cstime, so a
    tree's sum (root plus live descendants) misses nothing that exited in between."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # gone since the listing
            continue
        # After the command name (which may hold spaces and parentheses): proc(5)'s field 3 on, so
        # ppid (field 4) is [1], utime, stime, cutime, cstime (fields 14-17) are [11:15].
        fields = text[text.rindex(")") + 2:].split()
        stats[int(entry.name)] = int(fields[1]), sum(int(f) for f in fields[11:15])
    return stats


def _tree(root: int, stats: dict[int, tuple[int, int]]) -> list[int]:
    """`root` and its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process has had since it started."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # perf_counter
    seconds: dict[str, float | None]  # name -> CPU seconds of its process tree so far (None: gone)
    processes: dict[str, int]  # name -> processes in its tree
    client: float  # this script's own CPU seconds


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds each named process tree used between two snapshots (None: it ended in between)."""
    seconds: dict[str, float | None]
    processes: dict[str, int]
    wall: float
    client: float

    @property
    def total(self) -> float:
        return sum(s for s in self.seconds.values() if s is not None)


class CpuMeter:
    """CPU time per process of the platform, from /proc, around a phase:

        before = meter.snapshot(); …the phase…; usage = meter.diff(before)

    Each name stands for a process tree (its root's pid): its own utime + stime, its reaped
    children's, and its live descendants' (PostgreSQL's backends come and go under the
    postmaster). A name tracked after `before` was taken counts from zero (runners started in the
    phase). Without tracked processes (an external stack) there is nothing to measure."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def track(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    @property
    def enabled(self) -> bool:
        return bool(self.pids)

    @property
    def names(self) -> list[str]:
        """The platform's processes in the order tracked, then the data servers."""
        return sorted(self.pids, key=lambda n: n in DATA_SERVERS)

    def snapshot(self) -> CpuSnapshot:
        stats = _proc_stats()
        seconds: dict[str, float | None] = {}
        processes: dict[str, int] = {}
        for name in self.names:
            tree = _tree(self.pids[name], stats)
            seconds[name] = sum(stats[pid][1] for pid in tree) / CLOCK_TICKS if tree else None
            processes[name] = len(tree)
        own = os.times()
        return CpuSnapshot(time.perf_counter(), seconds, processes, own.user + own.system)

    def diff(self, before: CpuSnapshot, after: CpuSnapshot | None = None) -> CpuUsage:
        after = after or self.snapshot()
        seconds: dict[str, float | None] = {}
        for name, end in after.seconds.items():
            start = before.seconds.get(name, 0.0)
            seconds[name] = None if end is None or start is None else end - start
        return CpuUsage(seconds, after.processes, after.at - before.at, after.client - before.client)

    def peak_rss_mb(self) -> dict[str, float | None]:
        """Per name, the largest VmHWM among its tree's live processes (for PostgreSQL one backend:
        shared buffers count in every process that touched them, so a sum would overcount)."""
        stats = _proc_stats()
        peaks: dict[str, float | None] = {}
        for name in self.names:
            values = [v for v in map(_peak_rss_mb, _tree(self.pids[name], stats)) if v is not None]
            peaks[name] = round(max(values), 1) if values else None
        return peaks


def _label(name: str, usage: CpuUsage) -> str:
    count = usage.processes.get(name, 0)
    return f"{name} ({count} processes)" if count > 1 else name


def _cell(value: float | None, scale: float, width: int = 10) -> str:
    return f"{value * scale:{width}.2f}" if value is not None else f"{'—':>{width}}"


def drain_cpu_table(usage: CpuUsage, jobs: int, peaks: dict[str, float | None]) -> dict[str, Any]:
    """Print the drain's CPU seconds per 1,000 jobs per process and return them for the JSON."""
    per_1000 = 1000 / jobs
    total = usage.total
    say(f"    CPU per 1,000 jobs over the drain ({jobs:,} jobs, {usage.wall:.1f} s; /proc utime+stime):")
    width = max(28, *(len(_label(n, usage)) + 2 for n in usage.seconds))
    say(f"      {'process':<{width}}{'CPU s':>10}{'share':>9}{'peak RSS MB':>13}")
    for name, seconds in usage.seconds.items():
        share = f"{100 * seconds / total:8.1f}%" if seconds is not None and total else f"{'—':>9}"
        peak = peaks.get(name)
        say(f"      {_label(name, usage):<{width}}{_cell(seconds, per_1000)}{share}"
            + (f"{peak:13.1f}" if peak is not None else f"{'—':>13}"))
    say(f"      {'total':<{width}}{_cell(total, per_1000)}{100.0:8.1f}%"
        f"   = {total * per_1000:.2f} ms CPU per job; {total / usage.wall:.2f} cores busy on average")
    say(f"      {'bench client (not in total)':<{width}}{_cell(usage.client, per_1000)}")
    return {
        "per_1000_jobs_s": {n: None if s is None else round(s * per_1000, 3) for n, s in usage.seconds.items()},
        "total_ms_per_job": round(total * per_1000, 3),
        "peak_rss_mb": peaks,
        "processes": usage.processes,
        "cores_busy": round(total / usage.wall, 2),
        "client_ms_per_job": round(usage.client * per_1000, 3),
    }


def submit_cpu_table(phases: list[tuple[str, str, CpuUsage, int]]) -> dict[str, Any]:
    """Print the submit phases' ms of CPU per submitted job, a column per phase, and return them."""
    names = list(dict.fromkeys(n for _, _, usage, _ in phases for n in usage.seconds))
    width = max(28, *(len(n) + 2 for n in names))
    say("    CPU per submitted job, ms (/proc utime+stime over each phase):")
    say(f"      {'process':<{width}}" + "".join(f"{label:>18}" for _, label, _, _ in phases))
    for name in names:
        say(f"      {name:<{width}}" + "".join(_cell(usage.seconds.get(name), 1000 / jobs, 18)
                                          for _, _, usage, jobs in phases))
    say(f"      {'total':<{width}}" + "".join(_cell(usage.total, 1000 / jobs, 18) for _, _, usage, jobs in phases))
    say(f"      {'bench client (not in total)':<{width}}"
        + "".join(_cell(usage.client, 1000 / jobs, 18) for _, _, usage, jobs in phases))
    return {key: {"jobs": jobs, "seconds": round(usage.wall, 2),
                  "ms_per_job": {n: None if s is None else round(s * 1000 / jobs, 3) for n, s in usage.seconds.items()},
                  "total_ms_per_job": round(usage.total * 1000 / jobs, 3),
                  "client_ms_per_job": round(usage.client * 1000 / jobs, 3)}
            for key, _, usage, jobs in phases}


# ------------------------------------------------------------------------------------- ours


@dataclass
class Platform:
    gateway: Rest
    admin: Rest
    jobs_addr: str
    runners_addr: str
    demo: Demo
    stack: Stack | None
    meter: CpuMeter = field(default_factory=CpuMeter)  # empty for an external stack

    @property
    def customer(self) -> Rest:
        """The demo customer, a new connection per call (as a one-off script)."""
        return self.gateway.as_key(self.demo.api_key)

    @cached_property
    def client(self) -> Rest:
        """The demo customer over connections kept open, one per client thread (as HTTP libraries do)."""
        return self.customer.kept_alive()

    @property
    def echo(self) -> str:
        return self.demo.job_type_ids["echo"]

    def _wallet(self) -> dict[str, Any]:
        return self.customer("GET", f"/v1/customers/{self.demo.customer_id}/wallet")

    def wallet(self) -> tuple[int, int]:
        wallet = self._wallet()
        return int(wallet.get("balanceCents", 0)), int(wallet.get("heldCents", 0))

    def wallet_changed(self) -> float | None:
        """When the wallet last changed (epoch seconds): after a drain, its last capture."""
        stamp = self._wallet().get("updateTime")
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


# The gateway's per-account limit (500/s, burst 1000) would refuse the single-submit phases once
# they run faster than that; the limiter still runs (its Redis script on every request), only high.
UNLIMITED = {"INNOSYSTEM_GATEWAY_RATE_LIMIT_PER_SECOND": "1000000"}


@contextmanager
def embedded_platform(folder: Path, log_dir: Path, label: str, extra_env: dict[str, str] | None = None,
                      together: tuple[str, ...] = TOGETHER, beside: tuple[str, ...] = BESIDE
                      ) -> Iterator[tuple[Platform, str, str]]:
    """The embedded stack as `make bench` runs it (PostgreSQL, Valkey, the five services in four
    processes, jobs and runners together with a replica of each of `beside` (billing) as `innosystem
    up` runs them, and the gateway, in `folder`; with `together=()` every service in a process of
    its own, as compose runs them), a
    customer seeded, every process's CPU tracked; stopped on exit. Yields the platform,
    PostgreSQL's URL (for psycopg) and Valkey's."""
    pg, valkey = EmbeddedPostgres(folder / "pg"), EmbeddedValkey(folder / "valkey")
    url = pg.start()
    try:
        valkey.start()
        stack = Stack(database_url=url, redis_url=valkey.url, http_port=free_port(), fixed_ports=False,
                      log_dir=log_dir, together=together, beside=beside if together else (),
                      extra_env={"INNOSYSTEM_LOG_LEVEL": "WARNING", **UNLIMITED, **(extra_env or {})})
        try:
            stack.migrate()
            stack.start()
            stack.wait_ready(120)
            admin = Rest(stack.gateway_url, stack.admin_api_key)
            p = Platform(Rest(stack.gateway_url), admin, stack.address("jobs"), stack.address("runners"),
                         seed(admin, label=label, top_up_cents=10_000_000), stack)
            for name in dict.fromkeys(stack.process_name(n) for n in (*SERVICES, "gateway")):
                p.meter.track(name, stack.procs[name].pid)
            for name, server in (("postgres", pg), ("valkey", valkey)):
                if server.proc is not None:
                    p.meter.track(name, server.proc.pid)
            yield p, url.replace("postgresql+psycopg://", "postgresql://"), valkey.url
        finally:
            stack.stop()
    finally:
        valkey.stop()
        pg.stop()


def add_topology(parser: argparse.ArgumentParser) -> None:
    """The probes' choice of which services share a process (`together_of`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--apart", action="store_true", help="every service in a process of its own (as compose)")
    group.add_argument("--together", default=",".join(TOGETHER), metavar="NAMES",
                       help=f"the services sharing one process (default {','.join(TOGETHER)}, as `innosystem up`)")
    parser.add_argument("--beside", default=",".join(BESIDE), metavar="NAMES",
                        help=f"services that process runs a replica of (default {','.join(BESIDE)}; '' for none)")


def together_of(args: argparse.Namespace) -> tuple[str, ...]:
    return () if args.apart else tuple(n for n in args.together.split(",") if n)


def beside_of(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(n for n in args.beside.split(",") if n)


def grpc_metadata(p: Platform) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {p.demo.api_key}")]


def submit_rest_batches(p: Platform, count: int, start: int, workers: int = 2) -> float:
    """Seconds to submit `count` jobs through the gateway in batches of 1000."""
    project = p.demo.project_id

    def one(offset: int) -> None:
        size = min(BATCH, count - offset)
        p.client("POST", f"/v1/projects/{project}/jobs:batchSubmit",
                   {"requests": [{"jobTypeId": p.echo, "payload": payload(start + offset + i)} for i in range(size)]})

    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(0, count, BATCH)))
    return time.perf_counter() - began


def submit_rest_single(p: Platform, count: int, start: int, workers: int = 64, kept_alive: bool = True) -> float:
    """Seconds to submit `count` jobs through the gateway one call each, `workers` clients at once,
    each keeping its connection open (or opening one per call)."""
    project = p.demo.project_id
    customer = p.client if kept_alive else p.customer

    def one(i: int) -> None:
        customer("POST", f"/v1/projects/{project}/jobs", {"jobTypeId": p.echo, "payload": payload(start + i)})

    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - began


async def submit_grpc(p: Platform, count: int, start: int, *, batch: bool, concurrency: int) -> float:
    """Seconds to submit `count` jobs straight to the jobs service (the customer's API key)."""
    metadata = grpc_metadata(p)
    async with grpc.aio.insecure_channel(p.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        def request(i: int) -> pb.SubmitJobRequest:
            message = pb.SubmitJobRequest(project_id=p.demo.project_id, job_type_id=p.echo)
            message.payload.update(payload(start + i))
            return message

        if batch:
            calls = [pb.BatchSubmitJobsRequest(project_id=p.demo.project_id,
                                               requests=[request(i) for i in range(o, min(o + BATCH, count))])
                     for o in range(0, count, BATCH)]
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in (calls if batch else [request(i) for i in range(count)]):
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                if batch:
                    await stub.BatchSubmitJobs(item, metadata=metadata, timeout=120)
                else:
                    await stub.SubmitJob(item, metadata=metadata, timeout=60)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - began


def submit_latency_gateway(p: Platform, rate: float, seconds: float, start: int,
                           kept_alive: bool = True) -> tuple[list[float], dict[str, int]]:
    """Single submits through the gateway at a steady `rate`/s, open-loop: each call's duration from
    the moment it was due (so a call that had to wait for a free client thread counts its wait), and
    the count of calls refused, by HTTP status or error. Each client thread keeps its connection
    open (or opens one per call)."""
    project = p.demo.project_id
    customer = p.client if kept_alive else p.customer
    durations: list[float] = []
    refused: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int, due: float) -> None:
        try:
            status, _ = customer.call("POST", f"/v1/projects/{project}/jobs",
                                      {"jobTypeId": p.echo, "payload": payload(start + i)})
            outcome = None if 200 <= status < 300 else f"HTTP {status}"
        except OSError as err:
            outcome = type(err).__name__
        took = time.perf_counter() - due
        with lock:
            if outcome is None:
                durations.append(took)
            else:
                refused[outcome] = refused.get(outcome, 0) + 1

    began = time.perf_counter()
    with ThreadPoolExecutor(256) as pool:  # enough threads that calls do not wait for each other
        for i in range(int(rate * seconds)):
            due = began + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(one, i, due)
    return durations, refused


def start_runners(p: Platform, tokens: list[str], slots: int, log_dir: Path) -> list[Any]:
    """One `innosystem runner` process per token, serving the stamping `echo`."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
           "INNOSYSTEM_LOG_FORMAT": "json"}
    procs = []
    for k, token in enumerate(tokens):
        out = (log_dir / f"bench-runner-{k}.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "innosystem.cli", "runner", "--target", p.runners_addr, "--slots", str(slots),
             "--processor", "echo=bench_processors:echo"],
            env={**env, "INNOSYSTEM_RUNNER_TOKEN": token}, stdout=out, stderr=subprocess.STDOUT))
    return procs


def stop_runners(procs: list[Any]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def wait_charged(p: Platform, target_balance: int, timeout: float) -> float:
    """When the wallet has paid for every job and holds nothing (the drain's finish line)."""
    deadline = time.monotonic() + timeout
    while True:
        balance, held = p.wallet()
        if balance <= target_balance and held == 0:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not all charged: balance {balance}, target {target_balance}, held {held}")
        time.sleep(0.25)  # a light poll: the wallet read is not what we measure (`finish_line`)


def finish_line(began_at: float, polled: float, last: float | None) -> float:
    """A drain's length to its last job's end (`last`, epoch seconds, as the platform or the
    yardstick's consumers stamped it) from `began_at` (epoch seconds): the poll that saw the end
    comes up to a poll's interval later. The polled length where no stamp falls inside it."""
    return last - began_at if last is not None and 0 < last - began_at <= polled else polled


def runner_tokens(p: Platform, count: int) -> list[str]:
    tokens = []
    for k in range(count):
        made = p.admin("POST", f"/v1/runners?requestId=bench-runner-{k}",
                       {"name": f"bench-runner-{k}", "scope": "RUNNER_SCOPE_SHARED"})
        token = made.get("token") or p.admin("POST", f"/v1/runners/{made['runner']['id']}:rotateToken", {})["token"]
        tokens.append(token)
    return tokens


async def latency(p: Platform, rate: float, seconds: float) -> tuple[list[float], list[float], dict[str, int]]:
    """Single submits at `rate`/s; each job's processor start minus its submit call start, each
    submit call's own duration (how much of the delay is the submit's answer), and the count of
    submits refused by status code (an open-loop rate above what the stack absorbs makes calls
    queue, and past a point the server sheds some)."""
    metadata = grpc_metadata(p)
    count = int(rate * seconds)
    sent: dict[str, float] = {}
    calls: list[float] = []
    refused: dict[str, int] = {}
    async with grpc.aio.insecure_channel(p.jobs_addr) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        async def one(i: int) -> None:
            message = pb.SubmitJobRequest(project_id=p.demo.project_id, job_type_id=p.echo)
            message.payload.update(payload(i))
            began = time.time()
            try:
                job = await stub.SubmitJob(message, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as err:
                refused[err.code().name] = refused.get(err.code().name, 0) + 1
                return
            sent[job.id] = began
            calls.append(time.time() - began)

        tasks, start = [], time.perf_counter()
        for i in range(count):  # a steady open-loop rate: calls do not wait for each other
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

        delays: list[float] = []
        pending = dict(sent)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for job_id in list(pending)[:500]:
                job = await stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10)
                if job.status == enums.JOB_STATUS_SUCCEEDED:
                    delays.append(job.result["processorStart"] - pending.pop(job_id))
            if pending:
                await asyncio.sleep(0.2)
        if pending:
            raise TimeoutError(f"{len(pending)} latency jobs did not finish")
    return delays, calls, refused


# ------------------------------------------------------------------------------- yardstick


def _consumer(url: str, queue: str, done: str, stamps: str) -> None:
    client = redis.Redis.from_url(url)
    while True:
        item = client.brpop([queue], timeout=5)
        if item is None:
            return
        body = json.loads(item[1])
        if body.get("stop"):
            return
        started = time.time()
        result = json.dumps({**body, "processorStart": started})  # the same work as our echo
        if "sent" in body:
            client.rpush(stamps, started - body["sent"])
        client.rpush(done, result)


def yardstick(url: str, processes: int, jobs: int, rate: float, seconds: float) -> dict[str, Any]:
    """A bare Redis list queue: LPUSH, BRPOP, the same payload and process count."""
    client = redis.Redis.from_url(url)
    queue, done, stamps = (f"bench:yardstick:{uuid.uuid4().hex}:{n}" for n in ("q", "done", "stamps"))
    pipe = client.pipeline(transaction=False)
    for i in range(jobs):
        pipe.lpush(queue, json.dumps(payload(i)))
        if i % BATCH == BATCH - 1:
            pipe.execute()
    pipe.execute()
    workers = [multiprocessing.Process(target=_consumer, args=(url, queue, done, stamps)) for _ in range(processes)]
    began, began_at = time.perf_counter(), time.time()
    for w in workers:
        w.start()
    while client.llen(done) < jobs:
        time.sleep(0.01)
    polled = time.perf_counter() - began
    drain = finish_line(began_at, polled, max(json.loads(v)["processorStart"] for v in client.lrange(done, 0, -1)))

    count, start = int(rate * seconds), time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        client.lpush(queue, json.dumps({**payload(i), "sent": time.time()}))
    while client.llen(stamps) < count:
        time.sleep(0.01)
    delays = [float(v) for v in client.lrange(stamps, 0, -1)]
    for _ in workers:
        client.lpush(queue, json.dumps({"stop": True}))
    for w in workers:
        w.join(10)
    client.delete(queue, done, stamps)
    return {"drain_jobs_per_s": round(jobs / drain, 1), "drain_seconds": round(drain, 3),
            "drain_jobs_per_s_polled": round(jobs / polled, 1), "drain_seconds_polled": round(polled, 3),
            "latency": percentiles(delays)}


# ------------------------------------------------------------------------------------ main


def bench(p: Platform, redis_url: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    processes = args.runners or (os.cpu_count() or 1)
    tokens = runner_tokens(p, processes)
    balance0, _ = p.wallet()
    results: dict[str, Any] = {}

    meter = p.meter
    cpu: dict[str, Any] = {}
    results["cpu"] = cpu
    if not meter.enabled:
        cpu["skipped"] = "an external stack (--gateway): its process ids are unknown here"
        say("    (CPU per job per process skipped: an external stack's processes are not known here)")

    say("(b) submit throughput (no runner connected) …")
    n = args.jobs
    submit_cpu: list[tuple[str, str, CpuUsage, int]] = []
    before = meter.snapshot()
    seconds = submit_rest_batches(p, n, 0)
    submit_cpu.append(("gateway_batch", "gateway batches", meter.diff(before), n))
    results["submit_gateway_batch_jobs_per_s"] = round(n / seconds, 1)
    say(f"    gateway, batches of {BATCH}: {n / seconds:,.0f} jobs/s")
    small = max(1000, n // 10)
    before = meter.snapshot()
    seconds = asyncio.run(submit_grpc(p, small, n, batch=True, concurrency=2))
    submit_cpu.append(("grpc_batch", "gRPC batches", meter.diff(before), small))
    results["submit_grpc_batch_jobs_per_s"] = round(small / seconds, 1)
    say(f"    gRPC, batches of {BATCH}:    {small / seconds:,.0f} jobs/s")
    singles = max(500, n // 8)
    before = meter.snapshot()
    seconds = asyncio.run(submit_grpc(p, singles, n + small, batch=False, concurrency=64))
    submit_cpu.append(("grpc_single", "gRPC singles", meter.diff(before), singles))
    results["submit_grpc_single_jobs_per_s"] = round(singles / seconds, 1)
    say(f"    gRPC, single calls (64 in flight): {singles / seconds:,.0f} jobs/s")
    before = meter.snapshot()
    seconds = submit_rest_single(p, singles, n + small + singles, workers=args.gateway_clients)
    submit_cpu.append(("gateway_single", "gateway singles", meter.diff(before), singles))
    results["submit_gateway_single_jobs_per_s"] = round(singles / seconds, 1)
    results["submit_gateway_single_clients"] = args.gateway_clients
    say(f"    gateway, single calls ({args.gateway_clients} clients): {singles / seconds:,.0f} jobs/s")
    before = meter.snapshot()
    seconds = submit_rest_single(p, singles, n + small + 2 * singles, workers=args.gateway_clients, kept_alive=False)
    submit_cpu.append(("gateway_single_new_connections", "… new connections", meter.diff(before), singles))
    results["submit_gateway_single_new_connections_jobs_per_s"] = round(singles / seconds, 1)
    say(f"    gateway, single calls ({args.gateway_clients} clients), a new connection per call: "
        f"{singles / seconds:,.0f} jobs/s")
    if meter.enabled:
        cpu["submit"] = submit_cpu_table(submit_cpu)
    total = n + small + 3 * singles

    say(f"(a) drain: {total:,} queued echo jobs, {processes} runner processes, {args.slots} slots each …")
    before = meter.snapshot()
    began, began_at = time.perf_counter(), time.time()
    runners = start_runners(p, tokens, args.slots, log_dir)
    try:
        if meter.enabled:
            for k, proc in enumerate(runners):
                meter.track(f"runner-process-{k}", proc.pid)
        finished = wait_charged(p, balance0 - total * CENTS_PER_JOB, timeout=600)
        usage = meter.diff(before)
        polled = finished - began
        drain = finish_line(began_at, polled, p.wallet_changed())
        results["drain_jobs"] = total
        results["drain_seconds"] = round(drain, 3)
        results["drain_jobs_per_s"] = round(total / drain, 1)
        results["drain_seconds_polled"] = round(polled, 3)
        results["drain_jobs_per_s_polled"] = round(total / polled, 1)
        say(f"    {total / drain:,.0f} jobs/s ({drain:.2f} s from the runners' start to the last charge), "
            "every job charged once")
        say(f"    as the wallet poll saw it (every 0.25 s): {total / polled:,.0f} jobs/s ({polled:.2f} s)")
        if meter.enabled:
            cpu["drain"] = drain_cpu_table(usage, total, meter.peak_rss_mb())

        for label, rate in (("dispatch_latency", args.rate), ("dispatch_latency_light", args.light_rate)):
            say(f"(c) dispatch latency: {rate:.0f} jobs/s for {args.seconds:.0f} s to idle runners …")
            delays, calls, refused = asyncio.run(latency(p, rate, args.seconds))
            results[label] = {"rate": rate, **percentiles(delays), "refused": refused,
                              "submit_call": percentiles(calls)}
            say("    submit → processor start: " + ", ".join(f"{k} {v}" for k, v in results[label].items()
                                                          if k not in ("rate", "refused", "submit_call"))
                + (f"; refused {refused}" if refused else ""))
            say("    of which the submit call: " + ", ".join(f"{k} {v}" for k, v in percentiles(calls).items()
                                                          if k != "samples"))

        say(f"(e) submit latency: single gateway submits at {args.submit_rate:.0f}/s for {args.seconds:.0f} s, "
            "open-loop, runners connected …")
        balance, _ = p.wallet()
        submitted = 0
        for label, kept_alive, how in (("submit_latency_gateway", True, "connections kept open"),
                                       ("submit_latency_gateway_new_connections", False, "a new connection per call")):
            durations, refused = submit_latency_gateway(p, args.submit_rate, args.seconds, total + submitted,
                                                        kept_alive=kept_alive)
            submitted += int(args.submit_rate * args.seconds)
            results[label] = {"rate": args.submit_rate, **percentiles(durations), "refused": refused}
            say(f"    submit call duration, {how}: "
                + ", ".join(f"{k} {v}" for k, v in results[label].items() if k not in ("rate", "refused"))
                + (f"; refused {refused}" if refused else ""))
            balance -= len(durations) * CENTS_PER_JOB
        wait_charged(p, balance, timeout=120)  # quiet before the yardstick
    finally:
        stop_runners(runners)

    say(f"(d) yardstick: Redis list LPUSH/BRPOP, {processes} consumer processes …")
    yard = yardstick(redis_url, processes, total, args.rate, args.seconds)
    results["yardstick"] = yard
    results["ratio_drain_ours_over_yardstick"] = round(results["drain_jobs_per_s"] / yard["drain_jobs_per_s"], 3)
    results["ratio_drain_ours_over_yardstick_polled"] = round(
        results["drain_jobs_per_s_polled"] / yard["drain_jobs_per_s_polled"], 3)
    if yard["latency"] and results["dispatch_latency"]:
        results["ratio_latency_p50_ours_over_yardstick"] = round(
            results["dispatch_latency"]["p50_ms"] / max(yard["latency"]["p50_ms"], 0.001), 1)
    say(f"    drain {yard['drain_jobs_per_s']:,.0f} jobs/s (polled every 10 ms: "
        f"{yard['drain_jobs_per_s_polled']:,.0f}); latency "
        + ", ".join(f"{k} {v}" for k, v in yard["latency"].items()))
    say(f"    ours/yardstick: drain x{results['ratio_drain_ours_over_yardstick']} "
        f"(as polled: x{results['ratio_drain_ours_over_yardstick_polled']}), "
        f"latency p50 x{results.get('ratio_latency_p50_ours_over_yardstick')}")
    return results


# Issues 12 and 13 (docs/performance.md): (name, where in the results, bound, True if at most the bound).
TARGETS: list[tuple[str, tuple[str, ...], float, bool]] = [
    ("drain / yardstick", ("ratio_drain_ours_over_yardstick",), 0.40, False),
    ("CPU per drained job, ms", ("cpu", "drain", "total_ms_per_job"), 0.5, True),
    ("dispatch 50/s p50, ms", ("dispatch_latency_light", "p50_ms"), 10, True),
    ("dispatch 50/s p99, ms", ("dispatch_latency_light", "p99_ms"), 30, True),
    ("dispatch 200/s p50, ms", ("dispatch_latency", "p50_ms"), 15, True),
    ("dispatch 200/s p99, ms", ("dispatch_latency", "p99_ms"), 50, True),
    ("peak RSS of a process, MB", ("peak_rss_mb",), 300, True),
    ("gateway batches, jobs/s", ("submit_gateway_batch_jobs_per_s",), 10_000, False),
    ("gateway singles, jobs/s", ("submit_gateway_single_jobs_per_s",), 1_000, False),
    ("gRPC singles, jobs/s", ("submit_grpc_single_jobs_per_s",), 2_000, False),
    ("gateway submit 50/s p50, ms", ("submit_latency_gateway", "p50_ms"), 5, True),
    ("gateway submit 50/s p99, ms", ("submit_latency_gateway", "p99_ms"), 20, True),
    ("CPU per job, gateway batches, ms", ("cpu", "submit", "gateway_batch", "total_ms_per_job"), 0.3, True),
    ("CPU per job, gRPC batches, ms", ("cpu", "submit", "grpc_batch", "total_ms_per_job"), 0.3, True),
    ("CPU per job, gRPC singles, ms", ("cpu", "submit", "grpc_single", "total_ms_per_job"), 1, True),
    ("CPU per job, gateway singles, ms", ("cpu", "submit", "gateway_single", "total_ms_per_job"), 1, True),
]


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    """Print each target beside this run's figure; {name: {value, bound, met}} (value None: not measured)."""
    if "cpu" in results and "drain" in results["cpu"]:
        peaks = [v for v in results["cpu"]["drain"]["peak_rss_mb"].values() if v is not None]
        results = {**results, "peak_rss_mb": max(peaks, default=None)}
    refused = sum(sum(results.get(k, {}).get("refused", {}).values())
                  for k in ("dispatch_latency", "dispatch_latency_light", "submit_latency_gateway",
                            "submit_latency_gateway_new_connections"))
    say("targets (issues 12, 13; docs/performance.md):")
    out: dict[str, Any] = {}
    for name, path, bound, at_most in TARGETS:
        value: Any = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        met = None if value is None else (value <= bound if at_most else value >= bound)
        out[name] = {"value": value, "bound": bound, "met": met}
        shown = "—" if value is None else f"{value:,.3g}" if value < 100 else f"{value:,.0f}"
        verdict = {True: "met", False: "not met", None: "not measured"}[met]
        say(f"    {name:<36}{shown:>10}   {'≤' if at_most else '≥'} {bound:<8g}{verdict}")
    out["nothing refused"] = {"value": refused, "bound": 0, "met": refused == 0}
    verdict = "met" if not refused else "not met"
    say(f"    {'calls refused in the latency phases':<36}{refused:>10}   = 0        {verdict}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="drain size (default 20000)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase submits per second (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length (default 10)")
    parser.add_argument("--light-rate", type=float, default=50.0,
                        help="a second latency phase at this lighter rate (default 50)")
    parser.add_argument("--submit-rate", type=float, default=50.0,
                        help="submit latency phase: gateway single submits per second (default 50)")
    parser.add_argument("--gateway-clients", type=int, default=64,
                        help="concurrent clients for the gateway single-submit throughput (default 64)")
    parser.add_argument("--runners", type=int, default=0, help="runner processes (default: one per core)")
    parser.add_argument("--slots", type=int, default=32, help="slots per runner (default 32)")
    parser.add_argument("--gateway", help="use a running stack: its gateway URL")
    parser.add_argument("--admin-key", help="with --gateway: an admin API key")
    parser.add_argument("--jobs-addr", default="127.0.0.1:50053", help="with --gateway: the jobs service")
    parser.add_argument("--runners-addr", default="127.0.0.1:50054", help="with --gateway: the runners service")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --gateway: for the yardstick")
    parser.add_argument("--out", help="also write the figures here as JSON")
    parser.add_argument("--log-dir", help="keep the processes' logs here (default: a temporary folder)")
    add_topology(parser)
    args = parser.parse_args()

    header = {"cores": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
              "jobs": args.jobs, "rate": args.rate, "seconds": args.seconds}
    say(f"InnoSystem end-to-end benchmark on {header['cores']} cores (Python {header['python']})")
    with tempfile.TemporaryDirectory(prefix="innosystem-bench-") as tmp:
        log_dir = Path(args.log_dir or Path(tmp) / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        if args.gateway:
            admin = Rest(args.gateway, args.admin_key or "")
            p = Platform(Rest(args.gateway), admin, args.jobs_addr, args.runners_addr,
                         seed(admin, label="bench", top_up_cents=10_000_000), None)
            results = bench(p, args.redis_url, args, log_dir)
        else:
            say("starting embedded PostgreSQL, Valkey and the platform …")
            with embedded_platform(Path(tmp), log_dir, "bench", together=together_of(args),
                                   beside=beside_of(args)) as (p, _, valkey_url):
                results = bench(p, valkey_url, args, log_dir)
    figures = {**header, **results}
    figures["targets"] = check_targets(results)
    say(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
        say(f"written to {args.out}")


if __name__ == "__main__":
    main()
