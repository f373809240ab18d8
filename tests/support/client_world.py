"""A funded customer with the demo job types and a shared runner process serving them, for the
client SDK, CLI and tester tests (tests/e2e/test_client_*.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from innosystem.demo import Demo, seed
from innosystem.rest import Rest
from innosystem.stack import Stack


@contextmanager
def served_customer(stack: Stack, label: str, slots: int = 8) -> Iterator[Demo]:
    """Seed `label`'s tenants (idempotently) and run one runner for them until the block ends."""
    demo = seed(Rest(stack.gateway_url, stack.admin_api_key), label=label)
    name = f"runner-{label}"
    stack.spawn(name, ["runner", "--target", stack.address("runners"), "--slots", str(slots)],
                {"INNOSYSTEM_RUNNER_TOKEN": demo.runner_token})
    try:
        yield demo
    finally:
        stack.stop_process(name)


def cli(stack: Stack, api_key: str, *args: str, stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`innosystem ARGS…` as a process with the gateway and key in its environment (no config file)."""
    env = {**os.environ, "INNOSYSTEM_URL": stack.gateway_url, "INNOSYSTEM_API_KEY": api_key,
           "INNOSYSTEM_CONFIG": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "innosystem.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=600, cwd=cwd)
