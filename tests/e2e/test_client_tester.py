"""`innosystem tester` as a real process against the real stack: every documented operation, a
redacted log per run, its own tenant cleaned up, and a failing exit when something fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.support.client_world import cli

pytestmark = pytest.mark.e2e


def test_the_tester_exercises_every_endpoint_and_cleans_up(stack: Stack, tmp_path: Path) -> None:
    ran = cli(stack, "", "tester", "--url", stack.gateway_url, "--admin-key", stack.admin_api_key,
              "--logs-dir", str(tmp_path / "logs"))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (log,) = (tmp_path / "logs").glob("tester-*.log")
    text = log.read_text()
    document = Rest(stack.gateway_url, stack.admin_api_key)("GET", "/openapi.json")
    total = sum(1 for ops in document["paths"].values() for m in ops if m in ("get", "post", "patch", "delete"))
    assert f"{total}/{total} documented operations exercised" in text and " 0 failed" in text
    # Keys are redacted, never logged (a key's displayed prefix, `isk_admin_Ab`, is no secret).
    assert stack.admin_api_key not in text and not re.search(r"isk_[A-Za-z0-9_-]{20,}", text)
    customers = Rest(stack.gateway_url, stack.admin_api_key)("GET", "/v1/customers?pageSize=500")["customers"]
    assert not [c for c in customers if c["name"].startswith("Tester ")]  # its tenant is gone


def test_the_tester_fails_with_a_wrong_admin_key(stack: Stack, tmp_path: Path) -> None:
    ran = cli(stack, "", "tester", "--url", stack.gateway_url, "--admin-key", "isk_admin_wrong",
              "--logs-dir", str(tmp_path))
    assert ran.returncode == 1 and "FAIL" in ran.stderr
    assert len(list(tmp_path.glob("tester-*.log"))) == 1
