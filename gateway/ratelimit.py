"""Per-account request rate limits, shared by every gateway replica through Redis.

Each authenticated account (a customer, a reseller, a runner, an admin key) gets a bucket: a
sustained rate with a burst on top, enforced by one GCRA script (one key, O(1), hash-tagged per
account for Redis Cluster). A refused request is `429 RESOURCE_EXHAUSTED` with reason
`RATE_LIMITED`, a `Retry-After` header and a `google.rpc.RetryInfo`. Limits protect the
platform, they do not guard money or data, so a Redis outage admits everything (logged).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import GatewayError
from innosystem.kit.redis import Scripts
from innosystem.tenancy.v1.tenancy_pb2 import Principal

log = logging.getLogger(__name__)

OUTAGE_LOG_INTERVAL = 30.0


def bucket(principal: Principal) -> str:
    """One bucket per account: a customer's keys share one, an admin key has its own."""
    owner = principal.customer_id or principal.reseller_id or principal.runner_id or principal.key_id
    return f"gateway:rl:{{a:{principal.kind}:{owner}}}"


class RateLimiter:
    def __init__(self, client: aioredis.Redis, per_second: float, burst: int) -> None:
        self._client = client
        self._scripts = Scripts(client, Path(__file__).with_name("lua"))
        self.per_second, self.burst = per_second, burst
        self._interval_us = max(1, round(1_000_000 / per_second))
        self._quiet_until = 0.0

    async def admit(self, principal: Principal) -> int | None:
        """The requests left in the burst; raises the 429 when over the limit; None if Redis is away."""
        try:
            allowed, retry_us, remaining = await self._scripts.admit(keys=[bucket(principal)],
                                                                     args=[self._interval_us, self.burst])
        except (RedisError, OSError) as exc:
            if time.monotonic() >= self._quiet_until:
                self._quiet_until = time.monotonic() + OUTAGE_LOG_INTERVAL
                log.warning("rate limits not enforced, Redis unavailable: %s", exc)
            return None
        if not allowed:
            retry = int(retry_us) / 1e6
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                               f"more than {self.per_second:g} requests per second (burst {self.burst}) "
                               f"for this account; retry in {retry:.2f} s",
                               headers={"Retry-After": str(max(1, math.ceil(retry)))},
                               metadata={"limit_per_second": f"{self.per_second:g}", "burst": str(self.burst)},
                               retry_delay=retry)
        return int(remaining)

    async def close(self) -> None:
        await self._client.aclose()
