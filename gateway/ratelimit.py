"""Request rate limits, shared by every gateway replica through Redis.

Two kinds of bucket, each a sustained rate with a burst on top, enforced by one GCRA script
(one key, O(1), hash-tagged for Redis Cluster):

- per account, for authenticated requests: a customer's keys share one, an admin key has its own;
- per client address, for requests that do not authenticate (no credentials, a malformed header,
  an unknown or revoked key): every such answer spends from the address's bucket, and once it is
  empty the address's requests with a key not already known good are refused before tenancy is
  asked, so a flood of guessed keys costs the platform one Redis call each.

The script calls of one event-loop turn (the requests that arrived together) go to Redis in one
pipeline, one EVALSHA per request and bucket, so each request is still decided on its own and
no call spans two keys (a Redis Cluster pipeline sends each to its key's node).

An account's requests spend a credit, not a Redis call each: a replica takes up to a tenth of the
bucket's burst at once (no more than a tenth of a second at its rate: `credit_size`), spends it
locally for up to `CREDIT_SECONDS`, and takes the next while a half is left, so a steady caller's
requests wait for no round trip. Redis grants a credit only from what the bucket admits, so the
replicas together never admit more than the limit; what a replica leaves unspent lapses, so they
may admit a little less (at most a credit each). A bucket too small for a credit of two asks Redis
on every request, as the address buckets always do. `RateLimit-Remaining` counts what Redis
had left at the last credit and what is left of it.

A refused request is `429 RESOURCE_EXHAUSTED` with reason `RATE_LIMITED`, a `Retry-After`
header and a `google.rpc.RetryInfo`. Limits protect the platform, they do not guard money or
data, so a Redis outage admits everything (logged). Calls are bounded by the client's timeouts
(`INNOSYSTEM_GATEWAY_REDIS_TIMEOUT_SECONDS`), and after a failure Redis is left alone for a few
seconds, so a lost Redis costs one request a timeout now and then, not every request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.errors import GatewayError
from innosystem.tenancy.v1.tenancy_pb2 import Principal

log = logging.getLogger(__name__)

OUTAGE_LOG_INTERVAL = 30.0
CREDIT_SECONDS = 1.0  # an unspent credit lapses after this long (a replica holds no allowance longer)
MAX_CREDITS = 10_000  # accounts' credits kept; the oldest beyond are forgotten (their rest lapses)
# After a failed call, requests are admitted without asking Redis for this long.
OUTAGE_BACKOFF_SECONDS = 2.0


def bucket(principal: Principal) -> str:
    """One bucket per account: a customer's keys share one, an admin key has its own."""
    owner = principal.customer_id or principal.reseller_id or principal.runner_id or principal.key_id
    return f"gateway:rl:{{a:{principal.kind}:{owner}}}"


def address_bucket(address: str) -> str:
    """One bucket per client address; IPv6 per /64, the block one host is usually given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"gateway:rl:{{ip:{address}}}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            return f"gateway:rl:{{ip:{ipaddress.IPv6Network((ip, 64), strict=False)}}}"
    return f"gateway:rl:{{ip:{ip}}}"


def client_address(request: web.Request, trusted_proxy_hops: int) -> str:
    """The address the request came from. Behind `trusted_proxy_hops` proxies that each append
    to X-Forwarded-For, it is the entry that many places from the right (entries further left
    are the client's to forge); with none trusted, the TCP peer."""
    peer = request.remote or "unknown"
    if trusted_proxy_hops <= 0:
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    if not hops:
        return peer
    candidate = hops[-trusted_proxy_hops] if len(hops) >= trusted_proxy_hops else hops[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.per_second))

    @property
    def credit_size(self) -> int:
        """Requests a replica takes from the bucket at once: a tenth of the burst, and no more than
        a tenth of a second at the rate; 1 (a Redis call per request) for a small bucket."""
        return max(1, min(self.burst // 10, int(self.per_second / 10)))


@dataclass
class _Credit:
    tokens: int = 0  # requests this replica may still admit
    left: int = 0  # what Redis had left in the bucket when it granted them
    until: float = 0.0  # monotonic; the tokens lapse then
    taking: asyncio.Task[GatewayError | None] | None = None  # the next credit, being asked for


_Pending = tuple[str, tuple[int, ...], "asyncio.Future[list[int]]"]


class _PipelinedScript:
    """`await script(key, args)` runs a one-key Lua script; the calls made in one event-loop turn
    share one pipelined round trip (EVALSHA each, the script loaded again if Redis lost it)."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self._client = client
        self._script = client.register_script(source)  # only for its SHA and text
        self._pending: list[_Pending] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, key: str, args: tuple[int, ...]) -> list[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((key, args, future))
        if len(self._pending) == 1:  # the first of this turn: send once the turn's other requests have queued
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            results = await self._execute(batch)
            if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted or flushed its scripts
                await self._client.script_load(self._script.script)
                again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                for i, result in zip(again, await self._execute([batch[i] for i in again]), strict=True):
                    results[i] = result
        except asyncio.CancelledError:  # the gateway is stopping
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # each caller gets the failure (a RedisError: admitted, and logged once)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # its request has gone (client left)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(cast(list[int], result))

    async def _execute(self, batch: list[_Pending]) -> list[object]:
        """Each call's reply, or its error reply as an exception; a failed connection raises."""
        if len(batch) == 1:  # alone in its turn: a plain call costs less than a pipeline of one
            key, args, _ = batch[0]
            try:
                return [await self._client.evalsha(self._script.sha, 1, key, *args)]
            except ResponseError as exc:
                return [exc]
        async with self._client.pipeline(transaction=False) as pipe:
            for key, args, _ in batch:
                pipe.evalsha(self._script.sha, 1, key, *args)
            return list(await pipe.execute(raise_on_error=False))


class RateLimiter:
    def __init__(self, client: aioredis.Redis, accounts: Limit | None, addresses: Limit | None = None) -> None:
        self._admit = _PipelinedScript(client, Path(__file__).with_name("lua").joinpath("admit.lua").read_text())
        self.accounts, self.addresses = accounts, addresses
        self._quiet_until = 0.0
        self._away_until = 0.0
        self._credits: OrderedDict[str, _Credit] = OrderedDict()

    async def admit(self, principal: Principal) -> int | None:
        """The requests left in the account's burst; raises the 429 when over the limit; None if
        account limits are off or Redis is away."""
        if self.accounts is None:
            return None
        if self.accounts.credit_size == 1:
            return await self._spend(bucket(principal), self.accounts, 1, _ACCOUNT)
        key = bucket(principal)
        credit = self._credits.get(key)
        if credit is None:
            credit = self._credits[key] = _Credit()
            while len(self._credits) > MAX_CREDITS:
                self._credits.popitem(last=False)
        else:
            self._credits.move_to_end(key)
        while True:
            if credit.tokens and time.monotonic() < credit.until:
                credit.tokens -= 1
                if credit.tokens <= self.accounts.credit_size // 2 and credit.taking is None:
                    self._take(key, credit)  # the next credit, while this one lasts
                return min(credit.left + credit.tokens, self.accounts.burst - 1)
            if time.monotonic() < self._away_until:
                return None
            credit.tokens = 0  # lapsed, if any were left
            refusal = await asyncio.shield(credit.taking or self._take(key, credit))
            if refusal is not None:
                raise refusal
            # granted (this request takes one on the next pass), or taken by the others waiting

    def _take(self, key: str, credit: _Credit) -> asyncio.Task[GatewayError | None]:
        """Asks Redis for the account's next credit; the task's result is the 429 if none is left."""
        limit = self.accounts
        assert limit is not None

        async def take() -> GatewayError | None:
            try:
                taken, retry_us, left = await self._admit(key, (limit.interval_us, limit.burst, limit.credit_size, 1))
            except (RedisError, OSError) as exc:
                self._outage(exc)
                return None
            finally:
                credit.taking = None
            if not taken:
                return _refusal(limit, int(retry_us), _ACCOUNT)
            if time.monotonic() >= credit.until:
                credit.tokens = 0
            credit.tokens += int(taken)
            credit.left, credit.until = int(left), time.monotonic() + CREDIT_SECONDS
            return None

        credit.taking = asyncio.ensure_future(take())
        return credit.taking

    async def check_address(self, address: str) -> None:
        """Raises the 429 if the address has spent its unauthenticated allowance; spends nothing."""
        if self.addresses is not None:
            await self._spend(address_bucket(address), self.addresses, 0, _ADDRESS)

    async def charge_address(self, address: str) -> None:
        """Counts one unauthenticated request against the address; raises the 429 when over."""
        if self.addresses is not None:
            await self._spend(address_bucket(address), self.addresses, 1, _ADDRESS)

    async def _spend(self, key: str, limit: Limit, cost: int, what: str) -> int | None:
        if time.monotonic() < self._away_until:
            return None
        try:
            allowed, retry_us, remaining = await self._admit(key, (limit.interval_us, limit.burst, cost))
        except (RedisError, OSError) as exc:  # redis' TimeoutError and ConnectionError are RedisErrors
            self._outage(exc)
            return None
        if not allowed:
            raise _refusal(limit, int(retry_us), what)
        return int(remaining)

    def _outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._away_until = now + OUTAGE_BACKOFF_SECONDS
        if now >= self._quiet_until:
            self._quiet_until = now + OUTAGE_LOG_INTERVAL
            log.warning("rate limits not enforced, Redis unavailable: %s", exc or type(exc).__name__)


_ACCOUNT = "for this account"
_ADDRESS = "without valid credentials from this address"


def _refusal(limit: Limit, retry_us: int, what: str) -> GatewayError:
    retry = retry_us / 1e6
    return GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                        f"more than {limit.per_second:g} requests per second (burst {limit.burst}) "
                        f"{what}; retry in {retry:.2f} s",
                        headers={"Retry-After": str(max(1, math.ceil(retry)))},
                        metadata={"limit_per_second": f"{limit.per_second:g}", "burst": str(limit.burst)},
                        retry_delay=retry)
