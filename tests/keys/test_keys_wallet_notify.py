"""Issue 17 item 4: low-balance events reach the customer's notification channels. Real processes
(tenancy, billing, jobs, keys, the gateway) on the embedded PostgreSQL and Valkey, a local HTTP
receiver per channel; the keys service is restarted between two crossings."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from aiohttp import web

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client
from tests.support.tiny_http import serve

pytestmark = pytest.mark.e2e

WALLET = "NOTIFICATION_TRIGGER_WALLET_LOW_BALANCE"
SETTINGS = {
    "INNOSYSTEM_EGRESS_ALLOW_HOSTS": "127.0.0.1",  # the receivers are plain-http servers on loopback
    "INNOSYSTEM_KEYS_WALLET_FEED_SETTLE_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("walletnotify-logs"),
                       services=("tenancy", "billing", "jobs", "keys"), extra_env=SETTINGS) as running:
        yield running


@dataclass
class Receiver:
    got: asyncio.Queue[tuple[dict[str, str], bytes]] = field(default_factory=asyncio.Queue)
    count: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        await self.got.put(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=200)

    async def next(self, secret: str) -> dict[str, Any]:
        """The next POST, its signature checked."""
        async with asyncio.timeout(30):
            headers, body = await self.got.get()
        t, v1 = (part.split("=", 1)[1] for part in headers["x-innosystem-signature"].split(","))
        assert hmac.compare_digest(v1, hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest())
        event: dict[str, Any] = json.loads(body)
        return event


def customer(stack: Stack) -> tuple[Client, str]:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    made = admin.post("/v1/customers", {"name": "Alerted", "email": f"{uuid.uuid4().hex[:8]}@example.com"})
    assert made.status == 200, made.body
    cid = made.body["customer"]["id"]
    deadline = time.monotonic() + 30
    while admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 1000, "requestId": f"f-{cid}"}).status \
            != 200:  # the wallet opens right after the customer (README): at most a short wait
        assert time.monotonic() < deadline, "no wallet"
        time.sleep(0.05)
    return admin.as_key(made.body["apiKey"]), cid


def channel(client: Client, cid: str, url: str, triggers: list[str]) -> tuple[str, str]:
    made = client.post(f"/v1/customers/{cid}/notificationChannels", {"webhookUrl": url, "triggers": triggers})
    assert made.status == 200, made.body
    assert sorted(made.body["notificationChannel"]["triggers"]) == sorted(triggers)
    return made.body["notificationChannel"]["id"], made.body["signingSecret"]


def delivered(client: Client, channel_id: str, timeout: float = 30) -> None:
    """Until the keys service has recorded the channel's last delivery as taken."""
    deadline = time.monotonic() + timeout
    while "lastDeliveryTime" not in (got := client.get(f"/v1/notificationChannels/{channel_id}")).body:
        assert got.status == 200 and time.monotonic() < deadline, got.body
        time.sleep(0.1)


def deliveries(stack: Stack, channel_ids: list[str]) -> dict[str, int]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT channel_id::text, count(*) FROM keys.deliveries WHERE channel_id::text = ANY(%s) "
                            "GROUP BY channel_id", (channel_ids,)).fetchall()
    return {c: 0 for c in channel_ids} | {str(c): int(n) for c, n in rows}


async def test_a_crossing_reaches_the_subscribed_channel_once_and_a_restart_sends_nothing_again(
        stack: Stack) -> None:
    receivers = {name: Receiver() for name in ("wallet", "keys_only", "stranger")}
    async with serve({f"/{name}": r.handle for name, r in receivers.items()}) as served:
        me, cid = customer(stack)
        other, other_cid = customer(stack)
        wallet_ch, secret = channel(me, cid, served.url("/wallet"), [WALLET, "NOTIFICATION_TRIGGER_KEY_CHANGE"])
        keys_only, _ = channel(me, cid, served.url("/keys_only"), ["NOTIFICATION_TRIGGER_KEY_CHANGE"])
        stranger, _ = channel(other, other_cid, served.url("/stranger"), [WALLET])
        assert other.patch(f"/v1/customers/{other_cid}/wallet", {"lowBalanceThresholdCents": "100"}).status == 200

        # 1000 on the wallet; threshold 500; a submit whose hold is 700 crosses it.
        wallet = me.patch(f"/v1/customers/{cid}/wallet", {"lowBalanceThresholdCents": "500"})
        assert wallet.status == 200 and wallet.body["lowBalanceAlerted"] is False, wallet.body
        admin = Client(stack.gateway_url, stack.admin_api_key)  # prices are the operator's: a catalog type
        dear = admin.post("/v1/jobTypes", {"name": f"dear-{uuid.uuid4().hex[:8]}"})
        assert dear.status == 200, dear.body
        priced = admin.post(f"/v1/jobTypes/{dear.body['id']}/prices", {"currencyCode": "USD", "unitPriceCents": 700})
        assert priced.status == 200, priced.body
        project = me.post(f"/v1/customers/{cid}/projects", {"name": "main"})
        assert project.status == 200, project.body
        job = me.post(f"/v1/projects/{project.body['id']}/jobs", {"jobTypeId": dear.body["id"]})
        assert job.status == 200, job.body

        first = await receivers["wallet"].next(secret)
        [stored] = me.get(f"/v1/customers/{cid}/wallet/events").body["events"]
        assert first["trigger"] == WALLET and first["notificationChannelId"] == wallet_ch, first
        assert first["customerId"] == cid and "record" not in first, first
        assert first["walletEvent"] == stored, (first, stored)  # billing's event, as its REST API shows it
        assert stored["type"] == "wallet.low_balance" and stored["thresholdCents"] == "500", stored
        assert int(stored["availableCents"]) == 300, stored
        # The feed wrote every delivery of the event in one transaction, before the one just received.
        assert deliveries(stack, [wallet_ch, keys_only, stranger]) == {wallet_ch: 1, keys_only: 0, stranger: 0}

        delivered(me, wallet_ch)  # recorded as taken: a restart must not send it again
        stack.stop_process("keys")
        stack.start(services=("keys",), gateway=False)
        stack.wait_ready(60)

        # A second crossing (re-armed by a lower threshold, crossed by a higher one) after the restart.
        assert me.patch(f"/v1/customers/{cid}/wallet", {"lowBalanceThresholdCents": "200"}).status == 200
        crossed = me.patch(f"/v1/customers/{cid}/wallet", {"lowBalanceThresholdCents": "400"})
        assert crossed.status == 200 and crossed.body["lowBalanceAlerted"] is True, crossed.body
        second = await receivers["wallet"].next(secret)
        newest = me.get(f"/v1/customers/{cid}/wallet/events").body["events"][0]
        assert second["walletEvent"] == newest and newest["id"] != stored["id"], (second, newest)
        assert second["id"] != first["id"]
        assert receivers["wallet"].count == 2 and receivers["wallet"].got.empty()  # the first was not sent again
        assert deliveries(stack, [wallet_ch, keys_only, stranger]) == {wallet_ch: 2, keys_only: 0, stranger: 0}
        assert receivers["keys_only"].count == 0 and receivers["stranger"].count == 0


def test_an_unknown_trigger_beside_it_is_refused_naming_the_field_and_nothing_is_made(stack: Stack) -> None:
    me, cid = customer(stack)
    bad = me.post(f"/v1/customers/{cid}/notificationChannels",
                  {"webhookUrl": "https://example.com/hook", "triggers": [WALLET, 99]})
    assert bad.status == 400, bad.body
    [violation] = [v for d in bad.body["details"] for v in d.get("fieldViolations", [])]
    assert violation["field"].startswith("notificationChannel.triggers"), bad.body
    assert me.get(f"/v1/customers/{cid}/notificationChannels").body.get("notificationChannels", []) == []
