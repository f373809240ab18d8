"""A customer created while billing is down still gets its wallet (tenancy's outbox)."""

from __future__ import annotations

import grpc
import psycopg
import pytest

from innosystem.billing.v1 import billing_pb2, billing_pb2_grpc
from innosystem.embedded import free_port
from innosystem.kit import principal as principals
from innosystem.kit.clients import channel
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.errors import InvalidArgument
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy.service import TenancyService
from services.tenancy.wallets import WalletOpener

ADMIN = Principal(kind=principals.ADMIN, key_id="admin")


class RecordingBilling(billing_pb2_grpc.BillingServiceServicer):
    """Stands in for the billing peer: records OpenWallet calls (the peer's own tests cover it)."""

    def __init__(self) -> None:
        self.opened: list[billing_pb2.OpenWalletRequest] = []

    async def OpenWallet(self, request: billing_pb2.OpenWalletRequest, context: object) -> billing_pb2.Wallet:
        self.opened.append(request)
        return billing_pb2.Wallet(customer_id=request.customer_id)


def _pending(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT customer_id::text, attempts FROM tenancy.wallet_openings").fetchall()
    return dict(rows)


async def test_wallet_opening_survives_billing_outage(database_url: str) -> None:
    db = Database(to_async_url(database_url), pool_size=2)
    port = free_port()
    billing_channel = channel(f"127.0.0.1:{port}", service="tenancy", secret=b"s" * 32)
    opener = WalletOpener(db, billing_channel, call_timeout=2.0)
    tenancy = TenancyService(db, b"pepper" * 6, open_wallet=opener.open_now)
    try:
        reseller = await tenancy.create_reseller(ADMIN, {"name": "R", "email": "r@example.com"}, "", b"")
        customer = await tenancy.create_customer(
            ADMIN, {"name": "C", "email": "c@example.com", "reseller_id": reseller.row.id}, "", b"")
        cid = str(customer.row.id)
        assert opener.wake.is_set()
        assert _pending(database_url) == {cid: 0}

        assert await opener.deliver_due() == 0  # billing is down: the row stays, with a backoff
        assert _pending(database_url) == {cid: 1}

        fake = RecordingBilling()
        server = grpc.aio.server()
        billing_pb2_grpc.add_BillingServiceServicer_to_server(fake, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            with psycopg.connect(database_url) as conn:  # skip the backoff instead of waiting it out
                conn.execute("UPDATE tenancy.wallet_openings SET next_attempt_time = now()")
            assert await opener.deliver_due() == 1
        finally:
            await server.stop(None)
        assert _pending(database_url) == {}
        assert [(r.customer_id, r.reseller_id) for r in fake.opened] == [(cid, str(reseller.row.id))]
    finally:
        await billing_channel.close()
        await db.close()


async def test_no_outbox_row_for_a_refused_customer(database_url: str) -> None:
    db = Database(to_async_url(database_url), pool_size=2)
    tenancy = TenancyService(db, b"pepper" * 6)
    before = _pending(database_url)
    try:
        with pytest.raises(InvalidArgument):
            await tenancy.create_customer(ADMIN, {"name": "", "email": "c@example.com"}, "", b"")
    finally:
        await db.close()
    assert _pending(database_url) == before


async def test_the_wallet_is_opened_before_create_customer_answers(database_url: str) -> None:
    fake = RecordingBilling()
    server = grpc.aio.server()
    billing_pb2_grpc.add_BillingServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    db = Database(to_async_url(database_url), pool_size=2)
    billing_channel = channel(f"127.0.0.1:{port}", service="tenancy", secret=b"s" * 32)
    opener = WalletOpener(db, billing_channel)
    tenancy = TenancyService(db, b"pepper" * 6, open_wallet=opener.open_now)
    before = _pending(database_url)
    try:
        customer = await tenancy.create_customer(ADMIN, {"name": "Now", "email": "n@example.com"}, "", b"")
        assert [r.customer_id for r in fake.opened] == [str(customer.row.id)]  # before the answer
        assert _pending(database_url) == before  # nothing left for the loop
        assert not opener.wake.is_set()
    finally:
        await billing_channel.close()
        await server.stop(None)
        await db.close()
