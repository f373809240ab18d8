"""Tenancy's revocations reach the gateway's API-key cache at once, through the real embedded
Valkey; while that feed is down the cache is not trusted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.clients import ACCESS_REVOKED_CHANNEL
from tests.gateway.conftest import config_for, serving
from tests.gateway.doubles import CUSTOMER_KEY, Recorder, free_port

CUSTOMER = {"Authorization": f"Bearer {CUSTOMER_KEY}"}


async def _wait_for_subscriber(client: redis.Redis) -> None:
    for _ in range(200):
        if dict(client.pubsub_numsub(ACCESS_REVOKED_CHANNEL)).get(ACCESS_REVOKED_CHANNEL.encode(), 0):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the gateway never subscribed to revocations")


async def test_a_revocation_drops_the_accounts_cached_keys(upstream_port: int, sample_set_path: Path,
                                                           recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    url = valkey_server.url.rsplit("/", 1)[0] + "/13"
    config = config_for(upstream_port, sample_set_path, redis_url=url, auth_cache_ttl_seconds=60)
    with redis.Redis.from_url(url) as publisher:
        async with serving(config) as client:
            await _wait_for_subscriber(publisher)
            for _ in range(200):  # the gateway trusts its cache once its subscription is confirmed
                assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200
                before = len(recorder.named("Authenticate"))
                assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200
                if len(recorder.named("Authenticate")) == before:
                    break
                await asyncio.sleep(0.01)
            for _ in range(3):
                assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200
            assert len(recorder.named("Authenticate")) == before  # cached
            publisher.publish(ACCESS_REVOKED_CHANNEL, json.dumps({"customer_id": "someone-else"}))
            publisher.publish(ACCESS_REVOKED_CHANNEL, json.dumps({"customer_id": "c-1"}))
            for _ in range(100):  # the message is delivered asynchronously: wait for its effect
                await client.get("/v1/me", headers=CUSTOMER)
                if len(recorder.named("Authenticate")) > before:
                    break
                await asyncio.sleep(0.01)
            assert len(recorder.named("Authenticate")) == before + 1  # asked again, once


async def test_without_the_feed_every_request_asks_tenancy(upstream_port: int, sample_set_path: Path,
                                                           recorder: Recorder) -> None:
    config = config_for(upstream_port, sample_set_path, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        auth_cache_ttl_seconds=60)
    async with serving(config) as client:
        for _ in range(3):
            assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200
        assert len(recorder.named("Authenticate")) == 3
        for _ in range(3):  # rejections are still cached: a revocation never makes a key valid
            assert (await client.get("/v1/me", headers={"Authorization": "Bearer isk_wrong"})).status == 401
        assert len(recorder.named("Authenticate")) == 4
