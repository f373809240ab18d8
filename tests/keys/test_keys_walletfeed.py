"""The keys service's wallet-event feed (services/keys/walletfeed.py) on the real PostgreSQL and
Valkey against a stand-in for billing's ListWalletEventsAfter (billing is another team's; the
full path through real processes is test_keys_wallet_notify.py): who gets a delivery, and that
replicas, a reread and a failing billing neither repeat nor lose one."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest

from innosystem.billing.v1 import billing_pb2 as bpb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.embedded import EmbeddedValkey
from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.kit import principal as principals
from innosystem.kit.protos import timestamp
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys.main import Keys, build
from services.keys.walletfeed import delivery_id
from tests.keys.conftest import keys_config

WALLET = alpb.NotificationTrigger.NOTIFICATION_TRIGGER_WALLET_LOW_BALANCE
KEY_CHANGE = alpb.NotificationTrigger.NOTIFICATION_TRIGGER_KEY_CHANGE


class FakeBilling(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self) -> None:
        self.events: list[bpb.WalletEvent] = []
        self.down = False

    async def ListWalletEventsAfter(self, request: bpb.ListWalletEventsAfterRequest,
                                    context: grpc.aio.ServicerContext) -> Any:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "billing is down")
        items = [bpb.ListWalletEventsAfterResponse.Item(seq=n, event=e) for n, e in enumerate(self.events, 1)
                 if n > request.after_seq]
        return bpb.ListWalletEventsAfterResponse(items=items[:request.limit])


@dataclasses.dataclass
class Feed:
    billing: FakeBilling
    replicas: tuple[Keys, Keys]
    database_url: str

    def sql(self, statement: str, *args: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(statement, args or None)
            return cur.fetchall() if cur.description else []

    async def channel(self, customer_id: str, triggers: list[int]) -> str:
        p = Principal(kind=principals.CUSTOMER, customer_id=customer_id, key_id="ak_test")
        row, _ = await self.replicas[0].notifications.create(
            p, customer_id, alpb.NotificationChannel(webhook_url="http://127.0.0.1:9/hook", triggers=triggers),  # type: ignore[arg-type]
            "", b"")
        return str(row.id)

    def event(self, customer_id: str, at: datetime | None = None, type_: str = "wallet.low_balance") -> str:
        e = bpb.WalletEvent(id=str(uuid.uuid4()), type=type_, customer_id=customer_id, wallet_id=str(uuid.uuid4()),
                            currency_code="USD", available_cents=300, balance_cents=300, threshold_cents=400,
                            create_time=timestamp(at or datetime.now(UTC)))
        self.billing.events.append(e)
        return e.id

    def deliveries(self) -> dict[tuple[str, str], int]:
        """(channel, billing's event id) → deliveries of it."""
        out: dict[tuple[str, str], int] = {}
        for channel_id, blob in self.sql("SELECT channel_id::text, wallet_event FROM keys.deliveries "
                                         "WHERE wallet_event IS NOT NULL"):
            e = bpb.WalletEvent.FromString(bytes(blob))
            out[(channel_id, e.id)] = out.get((channel_id, e.id), 0) + 1
        return out

    def cursor(self) -> int:
        return int(self.sql("SELECT seq FROM keys.wallet_event_cursor WHERE name = 'billing'")[0][0])


@pytest.fixture
async def feed(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[Feed]:
    billing = FakeBilling()
    server = grpc.aio.server()
    billing_pb2_grpc.add_BillingServiceServicer_to_server(billing, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = keys_config(database_url, valkey_server.url, "127.0.0.1:1", wallet_feed_settle_seconds=0.0)
    config = dataclasses.replace(config, common=dataclasses.replace(
        config.common, addresses=dataclasses.replace(config.common.addresses, billing=f"127.0.0.1:{port}")))
    replicas = (build(config), build(config))  # two replicas on one database
    f = Feed(billing, replicas, database_url)
    f.sql("DELETE FROM keys.deliveries WHERE wallet_event IS NOT NULL")
    f.sql("DELETE FROM keys.notification_channels")
    f.sql("UPDATE keys.wallet_event_cursor SET seq = 0")
    yield f
    for keys in replicas:
        await keys.close()
    await server.stop(0)


async def test_each_event_becomes_one_delivery_per_subscribed_channel_of_its_customer(feed: Feed) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    feed.event(str(uuid.uuid4()))  # a customer without channels
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    wallet_a = await feed.channel(a, [WALLET, KEY_CHANGE])
    keys_a = await feed.channel(a, [KEY_CHANGE])
    wallet_b = await feed.channel(b, [WALLET])
    mine = feed.event(a)
    older_than_b = feed.event(b, at=before)  # before b's channel was made: not sent to it
    feed.event(a, type_="wallet.something_else")

    written = await asyncio.gather(*(k.wallet_feed.follow_once() for k in feed.replicas))

    assert sum(p.written for p in written) == 1
    assert feed.deliveries() == {(wallet_a, mine): 1}
    assert (keys_a, mine) not in feed.deliveries() and (wallet_b, older_than_b) not in feed.deliveries()
    assert feed.cursor() == 4  # past every event read, delivered or not
    [(did,)] = feed.sql("SELECT id FROM keys.deliveries WHERE channel_id = %s", wallet_a)
    assert did == delivery_id(uuid.UUID(wallet_a), mine)

    # Read again from the start (a crash after the insert, say): nothing new.
    feed.sql("UPDATE keys.wallet_event_cursor SET seq = 0")
    assert (await feed.replicas[1].wallet_feed.follow_once()).written == 0
    assert feed.deliveries() == {(wallet_a, mine): 1} and feed.cursor() == 4


async def test_a_failing_billing_moves_nothing_and_a_young_event_is_read_again_until_it_settles(
        feed: Feed) -> None:
    a = str(uuid.uuid4())
    channel = await feed.channel(a, [WALLET])
    feed.event(a)
    feed.billing.down = True
    with pytest.raises(grpc.aio.AioRpcError):
        await feed.replicas[0].wallet_feed.follow_once()
    assert feed.deliveries() == {} and feed.cursor() == 0

    feed.billing.down = False
    young = dataclasses.replace(feed.replicas[0].deps.config, wallet_feed_settle_seconds=3600.0)
    feed.replicas[0].deps.config = young
    done = await feed.replicas[0].wallet_feed.follow_once()
    # Delivered at once, but the cursor waits: a billing transaction that commits late could still
    # land below it.
    assert done.written == 1 and done.settle_in is not None and done.settle_in > 3000
    assert feed.cursor() == 0 and list(feed.deliveries().values()) == [1]
    assert list(feed.deliveries()) == [(channel, feed.billing.events[0].id)]
