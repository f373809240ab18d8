"""The OpenAPI document against the real gateway and services, with schemathesis and every one of
its checks (`--checks all`): as an admin and as a customer, in its examples, coverage and fuzzing
phases, with a fixed seed and a few examples per operation so that a run takes a minute or two.
No failure is tolerated: there is no baseline.

How the contract is kept is in docs/openapi.md. In short, the document states what the server
enforces and the server accepts what the document allows; what JSON Schema cannot state is
handled precisely, and each case is explained there:
- tests/support/schemathesis_hooks.py generates values for the formats JSON Schema cannot
  describe (an opaque page token, a fresh idempotency key, a currency code, a public URL) and
  keeps schema-valid requests inside the rules that tie a value to the clock or another field;
- tests/gateway/schemathesis.toml widens the acceptance check on the nine operations whose
  answer depends on state no request can describe (a customer's key manager, a pending TOTP
  enrolment, the account's last owner, the wallet's available amount, a project's encryption
  key, a job type's price and the money to hold it).

Left out: the credential-rotating operations (they would revoke the key the run uses) and the
Server-Sent Event streams (`:watch`, which do not end).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXCLUDED = r"(?i)rotate|Watch"  # operation ids: RotateCustomerApiKey, …, WatchJob(s), WatchQueueStats, WatchAccessLogs
SEED, EXAMPLES = "18", "3"
# Both runs come from one address and probe every operation without credentials (the auth checks):
# the per-address limit on such requests (10/s; tests/gateway/test_gateway_ratelimit.py) would
# answer some of them 429 before the 401 the checks look for.
SETTINGS = {"INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_PER_SECOND": "10000",
            "INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_BURST": "100000"}


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("contract-logs"),
                       extra_env=SETTINGS) as running:
        yield running


def schemathesis(stack: Stack, api_key: str) -> subprocess.Popen[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG),
        "run", f"{stack.gateway_url}/openapi.json", "--header", f"Authorization: Bearer {api_key}",
        "--checks", "all", "--phases", "examples,coverage,fuzzing", "--max-examples", EXAMPLES, "--seed", SEED,
        "--exclude-operation-id-regex", EXCLUDED, "--workers", "1", "--no-shrink", "--request-timeout", "20",
        "--output-sanitize", "true",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def customer_key(stack: Stack) -> str:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    made = admin.post("/v1/customers", {"name": "Contract", "email": f"{uuid.uuid4().hex[:8]}@example.com"})
    assert made.status == 200, made.body
    key: str = made.body["apiKey"]
    assert admin.as_key(key).post(f"/v1/customers/{made.body['customer']['id']}/projects",
                                  {"name": "contract"}).status == 200
    return key


def test_the_api_keeps_its_openapi_contract(stack: Stack) -> None:
    # The two callers run side by side (one tenant's requests never touch the other's data), so
    # the test takes as long as the longer of the two.
    runs = {"admin": schemathesis(stack, stack.admin_api_key), "customer": schemathesis(stack, customer_key(stack))}
    outputs = {who: run.communicate(timeout=900)[0] for who, run in runs.items()}
    for who, run in runs.items():
        out = outputs[who]
        assert run.returncode == 0, f"schemathesis as {who} found failures:\n{out[-20000:]}"
        summary = out[out.find("SUMMARY"):]
        assert "Tested:" in summary and "Fuzzing" in summary, summary  # it ran the operations and the phases
