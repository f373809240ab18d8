"""The billing process killed (SIGKILL) in the middle of a burst: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.kit import principal as principals
from innosystem.kit.clients import channel
from innosystem.stack import Stack
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from tests.conftest import fresh_redis, running_stack

WALLETS, CLIENTS, FUNDS, PRICE = 4, 16, 1_000_000, 100


@pytest.fixture
def billing_process(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
                    tmp_path: Path) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path, services=("billing",),
                       gateway=False) as stack:
        yield stack


def _admin(secret: str, method: str) -> tuple[tuple[str, str], ...]:
    """An admin's principal for one call of `method` (headers are bound to their method)."""
    return principals.sign(Principal(kind=principals.ADMIN, key_id="test"), secret.encode(),
                           f"/innosystem.billing.v1.BillingService/{method}")


async def test_kill_mid_burst_loses_no_acknowledged_operation(billing_process: Stack) -> None:
    stack = billing_process
    secret = stack.internal_secret
    customers = [str(uuid.uuid4()) for _ in range(WALLETS)]
    acked_reserves: set[str] = set()
    acked_captures: dict[str, int] = {}
    async with channel(stack.address("billing"), service="jobs", secret=secret.encode()) as ch, \
            channel(stack.address("billing"), service="tenancy", secret=secret.encode()) as as_tenancy:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        for c in customers:  # tenancy opens wallets, jobs holds and captures: each as itself
            await billing_pb2_grpc.BillingServiceStub(as_tenancy).OpenWallet(pb.OpenWalletRequest(customer_id=c),
                                                                              timeout=10)
            await stub.TopUpWallet(pb.TopUpWalletRequest(customer_id=c, amount_cents=FUNDS, request_id="fund"),
                                   metadata=_admin(secret, "TopUpWallet"), timeout=10)
        stop, enough = asyncio.Event(), asyncio.Event()

        async def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                hold_id = f"k{k}-{i}"
                customer = customers[(k + i) % WALLETS]
                i += 1
                try:
                    await stub.Reserve(pb.ReserveRequest(hold_id=hold_id, customer_id=customer, amount_cents=PRICE,
                                                         currency_code="USD"), timeout=5)
                    acked_reserves.add(hold_id)
                    actual = PRICE - (i % 7)
                    await stub.Capture(pb.CaptureRequest(hold_id=hold_id, amount_cents=actual), timeout=5)
                    acked_captures[hold_id] = actual
                    if len(acked_captures) >= 300:
                        enough.set()
                except grpc.aio.AioRpcError:
                    return

        tasks = [asyncio.create_task(client(k)) for k in range(CLIENTS)]
        await asyncio.wait_for(enough.wait(), 60)
        stack.stop_process("billing", signal.SIGKILL)
        stop.set()
        await asyncio.gather(*tasks)

    assert acked_captures and acked_reserves
    stack.start(services=("billing",), gateway=False)
    stack.wait_ready(60)
    with psycopg.connect(stack.database_url) as conn:
        holds = dict(conn.execute("SELECT hold_id, status FROM billing.holds").fetchall())
        captured = dict(conn.execute("SELECT hold_id, captured FROM billing.holds WHERE status = 2").fetchall())
    assert acked_reserves <= set(holds)
    assert {h: captured.get(h) for h in acked_captures} == acked_captures
    async with channel(stack.address("billing"), service="jobs", secret=secret.encode()) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        report = await stub.Reconcile(pb.ReconcileRequest(), metadata=_admin(secret, "Reconcile"), timeout=30)
        assert report.consistent, report.findings
        assert report.wallets_checked == WALLETS and report.transfers_checked > 2 * len(acked_captures)
        for c in customers:
            w = await stub.GetWallet(pb.GetWalletRequest(customer_id=c), metadata=_admin(secret, "GetWallet"),
                                     timeout=5)
            assert w.balance_cents + w.held_cents <= FUNDS and w.available_cents >= 0
