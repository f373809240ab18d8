"""End-to-end fixtures: the real service processes and gateway, spoken to over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


class Client:
    """A few lines over urllib: enough to speak JSON to the gateway."""

    def __init__(self, base: str, api_key: str | None = None) -> None:
        self.base, self.api_key = base, api_key

    def as_key(self, api_key: str | None) -> Client:
        return Client(self.base, api_key)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status, payload, hdrs = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            status, payload, hdrs = err.code, err.read(), dict(err.headers)
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Response(status, parsed, hdrs)

    def get(self, path: str, **kw: Any) -> Response:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.call("POST", path, body if body is not None else {}, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> Response:
        return self.call("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.call("DELETE", path, **kw)


@pytest.fixture(scope="session")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All five services and the gateway as real processes, on one fresh database. Key managers that
    tests start later get ports at run time: loopback is allow-listed as a host (the egress guard's
    refusals are tested in tests/keys/test_keys_egress.py)."""
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("stack-logs"),
                       extra_env={"INNOSYSTEM_EGRESS_ALLOW_HOSTS": "127.0.0.1"}) as running:
        yield running


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Client:
    return Client(stack.gateway_url, stack.admin_api_key)


def watch_until_final(base: str, api_key: str, job_id: str, timeout: float = 60.0) -> str:
    """Follow `GET /v1/jobs/{id}:watch` (SSE) until the stream ends at the job's final status, and
    return that status; fail after `timeout` rather than wait forever on keepalives."""
    import threading

    from innosystem.rest import Rest

    outcome: list[Any] = []
    rest = Rest(base, api_key, timeout=timeout)
    thread = threading.Thread(target=lambda: outcome.append(rest.call("GET", f"/v1/jobs/{job_id}:watch")),
                              daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"job {job_id} was not final within {timeout}s: {rest('GET', f'/v1/jobs/{job_id}')}"
    status, body = outcome[0]
    assert status == 200, body
    final: str = rest("GET", f"/v1/jobs/{job_id}")["status"]
    return final
