"""Concurrent WatchJob streams per customer, counted in Redis so that the bound holds over every
jobs replica (each stream holds a subscription, a database read per event and a gateway
connection: one customer opening thousands would take them from everyone).

A watch takes a slot before its first event and gives it back when it ends, however it ends
(final status, client gone, error). A slot is a member of the customer's sorted set scored by its
expiry on Redis's clock; a running watch refreshes it, so a replica that dies mid-watch leaves
slots that lapse after `SLOT_SECONDS` rather than counting forever. One key per customer:
`<prefix>{cust:<id>}:watches` (hash-tagged by tenant).

The watches counted are those on the customer's jobs, whoever watches (the customer, its reseller
or an admin): it is the customer's jobs that the streams cost.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from innosystem.kit import quota
from innosystem.kit.errors import Unavailable
from innosystem.kit.redis import Scripts

log = logging.getLogger(__name__)

SETTING = "INNOSYSTEM_JOBS_MAX_WATCHERS_PER_CUSTOMER"
SLOT_SECONDS = 60.0  # a slot's life without a refresh
REFRESH_SECONDS = SLOT_SECONDS / 4  # a running watch refreshes its slot at most this often


class Slot:
    def __init__(self, watchers: Watchers, key: str, watch_id: str) -> None:
        self._watchers, self._key, self.watch_id = watchers, key, watch_id
        self._refreshed = time.monotonic()

    async def keep(self) -> None:
        """Called as the watch runs: refreshes the slot when a quarter of its life has passed.
        A failed refresh is logged (the event feed's own loss ends the watch if Redis is gone)."""
        if time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        try:
            await self._watchers.scripts.refresh(keys=[self._key], args=[int(SLOT_SECONDS * 1000), self.watch_id])
            self._refreshed = time.monotonic()
        except RedisError as exc:
            log.warning("watch slot %s not refreshed (%s)", self.watch_id, type(exc).__name__)


class Watchers:
    def __init__(self, client: aioredis.Redis, prefix: str, limit: int) -> None:
        self.client, self.prefix, self.limit = client, prefix, limit
        self.scripts = Scripts(client, Path(__file__).with_name("lua") / "watchers")

    def key(self, customer_id: str) -> str:
        return f"{self.prefix}{{cust:{customer_id}}}:watches"

    async def live(self, customer_id: str) -> int:
        """The customer's slots held now, expired ones included until the next acquire drops them."""
        return int(await self.client.zcard(self.key(customer_id)))

    @asynccontextmanager
    async def slot(self, customer_id: str) -> AsyncIterator[Slot]:
        """A slot for one watch of `customer_id`'s job, held while the block runs; QUOTA_EXCEEDED
        when the customer has its limit of watches running."""
        key, watch_id = self.key(customer_id), uuid.uuid4().hex
        try:
            taken = await self.scripts.acquire(keys=[key], args=[int(SLOT_SECONDS * 1000), self.limit, watch_id])
        except RedisError as exc:  # a watch needs Redis for its events anyway
            raise Unavailable(f"the watch cannot be started now ({type(exc).__name__}); watch again",
                              reason="WATCH_UNAVAILABLE") from None
        if not taken:
            raise quota.exceeded("concurrent job watches", self.limit, SETTING, advice="end a watch first")
        try:
            yield Slot(self, key, watch_id)
        finally:
            try:
                await self.client.zrem(key, watch_id)
            except (RedisError, OSError) as exc:  # it lapses after SLOT_SECONDS
                log.warning("watch slot %s not released (%s); it lapses", watch_id, type(exc).__name__)
