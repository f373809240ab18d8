"""Billing fixtures: the service layer on the real embedded PostgreSQL and Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from services.billing.otb import OpenToBuy
from services.billing.service import BillingService
from tests.billing.billing_helpers import rates


@pytest.fixture(scope="module")
async def redis_client(valkey_server: EmbeddedValkey) -> AsyncIterator[aioredis.Redis]:
    client = connect(valkey_server.url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def billing(database_url: str, redis_client: aioredis.Redis) -> AsyncIterator[BillingService]:
    db = Database(to_async_url(database_url), pool_size=5)
    service = BillingService(db, OpenToBuy(redis_client), rates)
    yield service
    await service.close()
    await db.close()
