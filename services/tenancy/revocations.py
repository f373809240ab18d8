"""Tells every gateway (and any service caching API keys) that keys stopped being valid.

Published on Redis after the commit that revoked them (`kit.clients.ACCESS_REVOKED_CHANNEL`),
so a deactivated customer's or a rotated key stops working at once instead of after the
authenticators' cache TTL. Losing a message costs at most that TTL: a follower whose
subscription drops stops trusting its cache, and a publish that fails is logged, not retried
(the key is already refused by tenancy itself; only cached answers are at stake).
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from innosystem.kit.clients import ACCESS_REVOKED_CHANNEL

log = logging.getLogger(__name__)


class RevocationPublisher:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def __call__(self, *, customer_id: str = "", reseller_id: str = "", key_id: str = "",
                       user_id: str = "", everyone: bool = False) -> None:
        event: dict[str, str | bool] = {
            name: value for name, value in (("customer_id", customer_id), ("reseller_id", reseller_id),
                                            ("key_id", key_id), ("user_id", user_id)) if value}
        if everyone:
            event["everyone"] = True
        try:
            await self._client.publish(ACCESS_REVOKED_CHANNEL, json.dumps(event))
        except (RedisError, OSError) as exc:
            log.warning("revocation not published (cached keys expire within their TTL): %s",
                        exc or type(exc).__name__, extra=event)

    async def close(self) -> None:
        await self._client.aclose()
