"""Runners tests: one stack of real processes (short heartbeats and leases), tenants, and real
runner processes (`python -m innosystem.cli runner …`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e

# Short enough that lost runners and expired leases are seen within seconds.
FAST = {
    "INNOSYSTEM_RUNNERS_HEARTBEAT_INTERVAL_MS": "300",
    "INNOSYSTEM_RUNNERS_HEARTBEAT_TIMEOUT_MS": "1500",
    "INNOSYSTEM_RUNNERS_LEASE_WAIT_MS": "5000",
    "INNOSYSTEM_JOBS_LEASE_TTL_SECONDS": "10",
    "INNOSYSTEM_SHUTDOWN_GRACE_SECONDS": "1",
    # A stream's outgoing queue is full at 1 MiB (a few large assignments) and a stream whose queue
    # stays full for 3 s is closed as a slow consumer (test_runners_backpressure.py).
    "INNOSYSTEM_RUNNERS_SEND_QUEUE_BYTES": str(1 << 20),
    "INNOSYSTEM_RUNNERS_SLOW_CONSUMER_TIMEOUT_MS": "3000",
    "INNOSYSTEM_LOG_FORMAT": "json",
}


@pytest.fixture(scope="session")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("runners-stack-logs"),
                       extra_env=dict(FAST)) as running:
        yield running


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Client:
    return Client(stack.gateway_url, stack.admin_api_key)


def reason(body: dict[str, Any]) -> str:
    return str(next(d["reason"] for d in body["details"] if d["@type"].endswith("ErrorInfo")))


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (tests poll; the system under test does not)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RunnerProcess:
    """A real `innosystem runner` process."""

    def __init__(self, stack: Stack, token: str, args: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        env = {**os.environ, "INNOSYSTEM_RUNNER_TOKEN": token, "INNOSYSTEM_LOG_FORMAT": "console"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "innosystem.cli", "runner", "--target", stack.address("runners"), *args],
            env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._out.close()


@pytest.fixture
def spawn_runner(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    started: list[RunnerProcess] = []

    def spawn(token: str, *args: str) -> RunnerProcess:
        runner = RunnerProcess(stack, token, list(args), tmp_path / f"runner-{len(started)}.log")
        started.append(runner)
        return runner

    yield spawn
    for runner in started:
        runner.stop(9, timeout=5)
