"""Issue 14 item 10: the keys service's background work (webhook delivery, rewrap, abandon sweeper)
cannot be stalled by one tenant, and rewrap is claimed per key across replicas. Real PostgreSQL,
Valkey, key manager processes (one of them stopped with SIGSTOP) and webhook servers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from aiohttp import web

from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from services.keys.main import build
from tests.keys.conftest import Harness, Tenant
from tests.keys.keymanager_process import KeyManagerProcess, start_keymanager
from tests.support.tiny_http import serve

T = alpb.AccessRecordType
CARD = {"card": {"number": "4111-1111-1111-1111"}}


def query(h: Harness, statement: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(h.database_url, autocommit=True) as conn:
        cur = conn.execute(statement, args or None)
        return cur.fetchall() if cur.description else []


async def until(check: Any, what: str, seconds: float = 20.0) -> None:
    """Poll the database for a condition (the test's view; the service does not poll)."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
def configured(harness: Harness) -> Iterator[Any]:
    """Change the running keys service's settings for one test."""
    before = harness.keys.deps.config

    def change(**values: Any) -> None:
        harness.keys.deps.config = dataclasses.replace(before, **values)
    yield change
    harness.keys.deps.config = before


async def channel(h: Harness, tenant: Tenant, url: str) -> None:
    await h.logs.CreateNotificationChannel(alpb.CreateNotificationChannelRequest(
        customer_id=tenant.customer_id, notification_channel=alpb.NotificationChannel(
            webhook_url=url, triggers=[alpb.NotificationTrigger.NOTIFICATION_TRIGGER_KEY_CHANGE])),
        metadata=h.as_(tenant))


async def test_a_hanging_webhook_holds_back_no_other_customer_and_no_transaction(
        harness: Harness, configured: Any) -> None:
    h = harness
    configured(webhook_timeout_seconds=60.0)
    release, b_received = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async def take(request: web.Request) -> web.Response:
        b_received.set()
        return web.Response()

    async with serve({"/a": hang, "/b": take}) as hooks:
        a, b = Tenant(), Tenant()
        await channel(h, a, hooks.url("/a"))
        await channel(h, b, hooks.url("/b"))
        await h.register(a)  # KEY_REGISTERED → a delivery each, A's due first
        await h.register(b)
        delivering = asyncio.create_task(h.keys.notifications.deliver_once())
        try:
            await asyncio.wait_for(b_received.wait(), 20)  # while A's webhook still hangs
            assert not delivering.done() and "/a" in hooks.hits
            idle = await asyncio.to_thread(query, h, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                           "current_database() AND state LIKE 'idle in transaction%%'")
            assert idle == [(0,)], "a transaction is open while a webhook is called"
        finally:
            release.set()
        assert await asyncio.wait_for(delivering, 20) == 2


async def rotated_project(h: Harness, tenant: Tenant, km: KeyManagerProcess | None = None,
                          timeout_ms: int = 0) -> str:
    """A project whose key version 1 is wrapped by client key version 1, then the client key
    rotated: the project key version is stale until the background rewrap moves it."""
    key = await h.stub.CreateClientKey(pb.CreateClientKeyRequest(
        customer_id=tenant.customer_id, client_key=pb.ClientKey(
            endpoint_url=(km or h.km).grpc_url, external_key_id="cmk-1", hmac_secrets=[(km or h.km).secret],
            timeout_ms=timeout_ms)), metadata=h.as_(tenant))
    tenant.key_id = key.id
    await h.submit(tenant, CARD, ["payload.card.number"])
    await h.stub.RotateClientKey(pb.RotateClientKeyRequest(key_id=key.id, external_key_id="cmk-2"),
                                 metadata=h.as_(tenant))
    return tenant.project_id


def wrapped_by(h: Harness, project_id: str) -> int:
    return int(query(h, "SELECT client_key_version FROM keys.project_key_versions WHERE project_id = %s AND "
                        "version = 1", project_id)[0][0])


@pytest.fixture
async def slow_km(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KeyManagerProcess]:
    km = start_keymanager(tmp_path_factory.mktemp("km-slow"), "cmk-1", "cmk-2")
    yield km
    os.kill(km.proc.pid, signal.SIGCONT)
    km.stop()


async def test_one_customers_stalled_key_manager_does_not_hold_back_anothers_rewrap(
        harness: Harness, slow_km: KeyManagerProcess) -> None:
    h = harness
    # Customer A: three projects under a key manager that will stop answering (its key allows
    # 60 s per call); customer B: one project under a healthy one. A's keys were made first.
    a = [Tenant(customer_id=c) for c in [str(uuid.uuid4())] * 3]
    a_projects = [await rotated_project(h, t, slow_km, timeout_ms=60_000) for t in a]
    b_project = await rotated_project(h, Tenant())
    os.kill(slow_km.proc.pid, signal.SIGSTOP)
    rewrap = asyncio.create_task(h.keys.registry.h.rewrap_once())
    try:
        await until(lambda: wrapped_by(h, b_project) == 2, "B's project key rewrapped while A's key manager hangs")
        assert not rewrap.done() and all(wrapped_by(h, p) == 1 for p in a_projects)
    finally:
        os.kill(slow_km.proc.pid, signal.SIGCONT)
    await asyncio.wait_for(rewrap, 60)
    assert all(wrapped_by(h, p) == 2 for p in a_projects)


async def test_replicas_rewrap_each_key_once(harness: Harness) -> None:
    h = harness
    projects = [await rotated_project(h, Tenant()) for _ in range(4)]
    other = build(h.keys.deps.config)  # a second replica on the same database
    try:
        await asyncio.gather(h.keys.registry.h.rewrap_once(), other.registry.h.rewrap_once())
    finally:
        await other.close()
    assert all(wrapped_by(h, p) == 2 for p in projects)
    # The key manager's own log: each project key version was unwrapped (under cmk-1) once.
    log = h.km.log.splitlines()
    unwraps = {p: sum(1 for line in log if "unwrap key=cmk-1 " in line and f"project={p} job= " in line)
               for p in projects}
    assert unwraps == {p: 1 for p in projects}


async def test_a_customer_whose_log_is_locked_does_not_stall_the_abandon_sweep(
        harness: Harness, configured: Any) -> None:
    h = harness
    a, b = Tenant(), Tenant()
    for t in (a, b):
        await h.register(t)
        lease = await h.submit(t, CARD, ["payload.card.number"])
        await h.access(lease, ["payload.card.number"])  # granted, never completed
    configured(abandon_after_seconds=0.0)
    # A long transaction of customer A holds its chain head (what every append of A locks).
    holder = await psycopg.AsyncConnection.connect(h.database_url)
    try:
        await holder.execute("SELECT 1 FROM keys.chain_heads WHERE customer_id = %s FOR UPDATE",
                             (uuid.UUID(a.customer_id),))
        await asyncio.wait_for(h.keys.accesses.sweep_abandoned(), 30)
        assert (await h.records(b))[-1].type == T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED
        assert (await h.records(a))[-1].type != T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED
    finally:
        await holder.rollback()
        await holder.close()
    await h.keys.accesses.sweep_abandoned()  # A's turn comes once its log is free
    assert (await h.records(a))[-1].type == T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED


async def test_the_gate_bounds_a_customer_and_defers_what_its_budget_cannot_start() -> None:
    from services.keys.background import Outcome, TenantGate

    gate = TenantGate(concurrency=8, per_customer=2)
    in_flight, most = [0], [0]
    never = asyncio.Event()

    async def stuck() -> None:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            await never.wait()
        finally:
            in_flight[0] -= 1

    async def quick() -> None:
        return None

    out = await gate.run("test", [("a", 0.5, stuck) for _ in range(5)] + [("b", 0.5, quick)], budget=0.2)
    assert out == Outcome(done=1, failed=0, timed_out=2, deferred=3) and most[0] == 2
