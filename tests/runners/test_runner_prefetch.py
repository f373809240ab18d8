"""A runner holds jobs beyond its slots while its jobs are short (`prefetch`), each started when a
slot frees, and never runs more at once than its slots. It gives the held jobs back to the queue
when its jobs run long, when it drains, and a held job cancelled meanwhile never runs. Against
the real platform (gateway, jobs and runners services, PostgreSQL, Valkey)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

import pytest

from innosystem.runner import Job, Registry, Runner, RunnerThread
from innosystem.runner import cli as runner_cli
from innosystem.runner import client as runner_client
from innosystem.stack import Stack
from tests.e2e.conftest import Client
from tests.runners.conftest import wait_for
from tests.runners.world import Tenant, shared_runner, tenant

pytestmark = pytest.mark.e2e


class Gate:
    """A processor whose `block` jobs wait until `opened` is set, counting how many run at once."""

    def __init__(self) -> None:
        self.opened, self.lock = threading.Event(), threading.Lock()
        self.running = self.most = 0
        self.started: list[str] = []

    def __call__(self, job: Job) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(job.id)
        try:
            if job.payload.get("block"):
                assert self.opened.wait(30)
            return {}
        finally:
            with self.lock:
                self.running -= 1


def _gate(t: Tenant) -> tuple[Gate, dict[str, Any], Registry]:
    job_type, gate, processors = t.job_type("gate"), Gate(), Registry()
    processors.processor(job_type["name"])(gate)
    return gate, job_type, processors


def _runner(stack: Stack, admin: Client, processors: Registry, slots: int, prefetch: int) -> RunnerThread:
    _, token = shared_runner(admin)
    return RunnerThread(Runner(stack.address("runners"), token, processors, max_concurrent_jobs=slots,
                               prefetch=prefetch, drain_grace_seconds=10))


def _statuses(t: Tenant, jobs: list[dict[str, Any]]) -> list[str]:
    return [t.job(j["id"])["status"].removeprefix("JOB_STATUS_") for j in jobs]


def _short_jobs_first(t: Tenant, job_type: dict[str, Any]) -> None:
    """Enough short jobs for the runner to take its jobs for short ones."""
    for job in [t.submit(job_type) for _ in range(runner_client.PREFETCH_AFTER_JOBS + 2)]:
        t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED")


def test_prefetch_out_of_range_is_refused_where_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry()
    registry.processor("p")(Gate())
    assert Runner("127.0.0.1:1", "isr_x", registry, max_concurrent_jobs=3).prefetch == 24  # eight times the slots
    with pytest.raises(ValueError, match="prefetch must be 0 to"):
        Runner("127.0.0.1:1", "isr_x", registry, prefetch=-1)
    monkeypatch.setenv(runner_cli.PREFETCH_ENV, "many")
    args = argparse.Namespace(token="isr_x", target="127.0.0.1:1", prefetch=None, processor=["echo"],
                              external_api=[], tags="")
    with pytest.raises(SystemExit, match="INNOSYSTEM_RUNNER_PREFETCH must be a whole number"):
        runner_cli.run(args)
    args.prefetch = runner_client.MAX_PREFETCH + 1
    with pytest.raises(SystemExit, match="--prefetch must be 0 to"):
        runner_cli.run(args)


def test_the_jobs_held_are_about_a_fifth_of_a_second_of_work() -> None:
    """Unit: while jobs are short a runner holds about PREFETCH_HOLD_SECONDS of its typical work
    beyond its slots, up to `prefetch`, and tells the service when that changes by a quarter."""
    registry = Registry()
    registry.processor("p")(Gate())
    runner = Runner("127.0.0.1:1", "isr_x", registry, max_concurrent_jobs=32)
    sent: list[int] = []
    runner._send = lambda m: sent.append(m.slots.free_slots) if m.HasField("slots") else None  # type: ignore[method-assign]

    def typical(seconds: float) -> int:
        for _ in range(40):  # the moving average settles
            runner._ran_for(seconds)
        return runner._holding

    def about(held: int, seconds: float) -> bool:  # 32 slots' worth of 0.2 s, within the quarter it is told of
        return 0.75 * 32 * 0.2 / seconds <= held <= 1.25 * 32 * 0.2 / seconds and sent[-1] == 32 + held

    assert typical(0.25) == 0 and runner._free() == 32  # long jobs: none held
    assert about(typical(0.08), 0.08)
    assert about(typical(0.04), 0.04)
    assert typical(0.001) == 256 == runner.prefetch and sent[-1] == runner._free() == 32 + 256  # capped
    count = len(sent)
    typical(0.0009)  # no change: the service is not told again
    assert len(sent) == count
    assert typical(0.5) == 0 and sent[-1] == 32  # long again: none


def test_short_jobs_are_held_beyond_the_slots_and_given_back_once_jobs_run_long(
        stack: Stack, admin: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_client, "PREFETCH_LONG_SECONDS", 3600.0)  # long only when the test says so
    t = tenant(admin)
    gate, job_type, processors = _gate(t)
    with _runner(stack, admin, processors, slots=2, prefetch=4) as thread:
        assert thread.wait_connected(30)
        _short_jobs_first(t, job_type)
        blocked = [t.submit(job_type, {"block": True}) for _ in range(8)]
        # Two run and four are held for a slot (leased to the runner); the other two stay queued.
        wait_for(lambda: _statuses(t, blocked).count("RUNNING") == 6, what="six jobs leased to the runner")
        wait_for(lambda: gate.running == 2, what="two processors running")
        assert gate.most == 2 and len({j["id"] for j in blocked} & set(gate.started)) == 2
        # The two run past PREFETCH_LONG_SECONDS: the four held go back to the queue, unstarted.
        monkeypatch.setattr(runner_client, "PREFETCH_LONG_SECONDS", 0.5)
        wait_for(lambda: _statuses(t, blocked).count("PENDING") == 6, what="the held jobs given back")
        assert _statuses(t, blocked).count("RUNNING") == 2
        gate.opened.set()
        done = [t.wait_status(j["id"], "JOB_STATUS_SUCCEEDED") for j in blocked]
    assert gate.most == 2  # never more at once than its slots
    assert all(len(j["attempts"]) == 1 for j in done)  # a job given back was never an attempt of its own


def test_draining_gives_back_the_held_jobs_at_once(stack: Stack, admin: Client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_client, "PREFETCH_LONG_SECONDS", 3600.0)  # only the drain gives them back
    t = tenant(admin)
    gate, job_type, processors = _gate(t)
    thread = _runner(stack, admin, processors, slots=1, prefetch=3).start()
    assert thread.wait_connected(30)
    _short_jobs_first(t, job_type)
    blocked = [t.submit(job_type, {"block": True}) for _ in range(4)]
    wait_for(lambda: _statuses(t, blocked).count("RUNNING") == 4, what="one running and three held")
    thread.drain(10)
    wait_for(lambda: sorted(_statuses(t, blocked)) == ["PENDING"] * 3 + ["RUNNING"], what="the held three back")
    gate.opened.set()
    thread.join(20)
    running = [j for j, s in zip(blocked, _statuses(t, blocked), strict=True) if s != "PENDING"]
    assert [j["id"] for j in running] == [i for i in gate.started if i in {j["id"] for j in blocked}]
    assert _statuses(t, running) == ["SUCCEEDED"]
    # Another runner takes the three given back.
    with _runner(stack, admin, processors, slots=4, prefetch=0) as other:
        assert other.wait_connected(30)
        for job in blocked:
            t.wait_status(job["id"], "JOB_STATUS_SUCCEEDED")


def test_a_held_job_cancelled_before_its_slot_frees_never_runs(stack: Stack, admin: Client,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_client, "PREFETCH_LONG_SECONDS", 3600.0)
    t = tenant(admin)
    gate, job_type, processors = _gate(t)
    with _runner(stack, admin, processors, slots=1, prefetch=2) as thread:
        assert thread.wait_connected(30)
        _short_jobs_first(t, job_type)
        first = t.submit(job_type, {"block": True})
        held = t.submit(job_type, {"block": True})
        wait_for(lambda: _statuses(t, [first, held]) == ["RUNNING", "RUNNING"], what="one running, one held")
        assert t.client.post(f"/v1/jobs/{held['id']}:cancel", {"reason": "not needed"}).status == 200
        cancelled = t.wait_status(held["id"], "JOB_STATUS_CANCELLED")
        gate.opened.set()
        t.wait_status(first["id"], "JOB_STATUS_SUCCEEDED")
    assert held["id"] not in gate.started and cancelled["attempts"][-1]["outcome"] == "ATTEMPT_OUTCOME_CANCELLED"
