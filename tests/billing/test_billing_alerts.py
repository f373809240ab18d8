"""Low-balance alerts against the real embedded PostgreSQL and Valkey: one event per crossing,
stored and published on the Redis channel."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from innosystem.kit import principal as principals
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.alerts import CHANNEL, LOW_BALANCE, LowBalanceAlerts
from services.billing.corrections import Corrections
from services.billing.service import BillingService
from tests.billing.billing_helpers import ADMIN, funded_wallet, wallet


@asynccontextmanager
async def _subscribed(client: aioredis.Redis) -> AsyncIterator[aioredis.client.PubSub]:
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=5)  # the subscribe confirmation
    try:
        yield pubsub
    finally:
        await pubsub.aclose()


async def _published(pubsub: aioredis.client.PubSub, customer: str, n: int) -> list[dict[str, Any]]:
    """The next `n` events of this customer on the channel (others' are skipped)."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = await asyncio.wait_for(pubsub.get_message(ignore_subscribe_messages=True, timeout=10), 15)
        if msg is not None and (body := json.loads(msg["data"]))["customerId"] == customer:
            out.append(body)
    return out


async def _events(alerts: LowBalanceAlerts, customer: str) -> list[tuple[int, int]]:
    rows, _ = await alerts.events(ADMIN, customer, 50, "", "")
    return [(e.available, e.threshold) for e in rows]


async def test_one_event_per_crossing(billing: BillingService, redis_client: aioredis.Redis) -> None:
    alerts = LowBalanceAlerts(billing)
    customer, _ = await funded_wallet(billing, 1000)
    own = Principal(kind=principals.CUSTOMER, customer_id=customer, key_id="c")
    w = await alerts.set_threshold(own, customer, "", 300)
    assert (w.low_balance_threshold, w.low_balance_alerted) == (300, False)
    async with _subscribed(redis_client) as pubsub:
        await billing.reserve(f"a-{customer}", customer, 600, "USD", job_id="a")   # available 400
        assert await _events(alerts, customer) == []
        await billing.reserve(f"b-{customer}", customer, 200, "USD", job_id="b")   # available 200: crossed
        await billing.capture(f"b-{customer}", 150)                                # 250: still low, no second
        assert await _events(alerts, customer) == [(200, 300)]
        (first,) = await _published(pubsub, customer, 1)
        assert (first["type"], first["availableCents"], first["thresholdCents"], first["heldCents"]) == \
            (LOW_BALANCE, 200, 300, 800)
        await billing.top_up(ADMIN, customer, 100, "", f"t-{customer}", "")          # 350: re-armed
        assert (await wallet(billing, customer)).low_balance_alerted is False
        await billing.capture(f"a-{customer}", 600)                                 # 350: still above
        await Corrections(billing).adjust(ADMIN, customer, -100, "fee", "f", "", "")  # 250: crossed again
        assert await _events(alerts, customer) == [(250, 300), (200, 300)]
        (second,) = await _published(pubsub, customer, 1)
        assert second["availableCents"] == 250 and second["walletId"] == str((await wallet(billing, customer)).id)


async def test_concurrent_reserves_cross_once(billing: BillingService) -> None:
    alerts = LowBalanceAlerts(billing)
    customer, _ = await funded_wallet(billing, 1000)
    await alerts.set_threshold(ADMIN, customer, "", 500)
    await asyncio.gather(*(billing.reserve(f"c{k}-{customer}", customer, 100, "USD") for k in range(9)),
                         return_exceptions=True)
    assert len(await _events(alerts, customer)) == 1
    assert (await wallet(billing, customer)).low_balance_alerted is True


async def test_a_threshold_above_available_alerts_at_once_and_zero_turns_it_off(billing: BillingService) -> None:
    alerts = LowBalanceAlerts(billing)
    customer, _ = await funded_wallet(billing, 100)
    w = await alerts.set_threshold(ADMIN, customer, "", 500)
    assert w.low_balance_alerted is True and await _events(alerts, customer) == [(100, 500)]
    w = await alerts.set_threshold(ADMIN, customer, "", 0)
    assert w.low_balance_alerted is False
    await billing.reserve(f"x-{customer}", customer, 90, "USD")
    assert len(await _events(alerts, customer)) == 1


async def test_threshold_errors_and_visibility(billing: BillingService) -> None:
    alerts = LowBalanceAlerts(billing)
    customer, _ = await funded_wallet(billing, 100)
    for value in (-1, 2**62):
        with pytest.raises(DomainError) as info:
            await alerts.set_threshold(ADMIN, customer, "", value)
        assert info.value.reason == "INVALID_AMOUNT"
        assert [f for f, _ in info.value.violations] == ["wallet.low_balance_threshold_cents"]
    other = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="o")
    with pytest.raises(DomainError) as info:
        await alerts.set_threshold(other, customer, "", 10)
    assert info.value.reason == "WALLET_NOT_FOUND"
    with pytest.raises(DomainError) as info:
        await alerts.events(other, customer, 10, "", "")
    assert info.value.reason == "WALLET_NOT_FOUND"
    assert (await wallet(billing, customer)).low_balance_threshold == 0
