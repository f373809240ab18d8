"""Per-account rate limits at the gateway, against the real embedded Valkey: the burst, then 429
with Retry-After and RetryInfo before any upstream call; accounts apart; replicas share a bucket;
refill at the sustained rate; a Redis outage admits everything."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import redis

from gateway.ratelimit import bucket
from innosystem.embedded import EmbeddedValkey
from innosystem.kit import principal
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from tests.gateway.conftest import config_for, serving
from tests.gateway.doubles import ADMIN_KEY, CUSTOMER_KEY, Recorder, free_port

CUSTOMER = {"Authorization": f"Bearer {CUSTOMER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _fresh_db(valkey: EmbeddedValkey) -> str:
    """A Redis URL whose database this test empties first (buckets of earlier tests gone)."""
    url = valkey.url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    return url


async def test_the_burst_then_429_with_retry_after_and_no_upstream_call(
        upstream_port: int, sample_set_path: Path, recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=0.5, rate_limit_burst=3,
                        redis_url=_fresh_db(valkey_server))
    async with serving(config) as client:
        remaining = []
        for _ in range(3):
            resp = await client.get("/v1/me", headers=CUSTOMER)
            assert resp.status == 200
            remaining.append(resp.headers["RateLimit-Remaining"])
        assert remaining == ["2", "1", "0"]
        refused = await client.get("/v1/me", headers=CUSTOMER)
        assert refused.status == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        body = await refused.json()
        assert body["code"] == 8  # RESOURCE_EXHAUSTED
        info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["reason"] == "RATE_LIMITED" and info["metadata"] == {"limit_per_second": "0.5", "burst": "3"}
        retry = next(d for d in body["details"] if d["@type"].endswith("RetryInfo"))
        assert retry["retryDelay"].endswith("s") and 0 < float(retry["retryDelay"][:-1]) <= 2
        assert len(recorder.named("GetMe")) == 3  # the refused request never reached the service
        # another account has its own bucket
        assert (await client.get("/v1/me", headers=ADMIN)).status == 200


async def test_replicas_share_one_bucket_and_it_refills_at_the_rate(
        upstream_port: int, sample_set_path: Path, valkey_server: EmbeddedValkey) -> None:
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=20, rate_limit_burst=4,
                        redis_url=_fresh_db(valkey_server))
    async with serving(config) as one, serving(config) as two:
        statuses = [(await (one if i % 2 else two).get("/v1/me", headers=CUSTOMER)).status for i in range(8)]
        assert statuses.count(200) == 4 and statuses[:4] == [200] * 4  # 4 in all, not 4 per replica
        await asyncio.sleep(0.2)  # 20/s: a few requests' worth back
        assert (await one.get("/v1/me", headers=CUSTOMER)).status == 200


async def test_a_redis_outage_admits_requests(upstream_port: int, sample_set_path: Path) -> None:
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=0.1, rate_limit_burst=1,
                        redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with serving(config) as client:
        for _ in range(3):
            resp = await client.get("/v1/me", headers=CUSTOMER)
            assert resp.status == 200 and "RateLimit-Remaining" not in resp.headers


def test_buckets_are_per_account_and_hash_tagged() -> None:
    customer = Principal(kind=principal.CUSTOMER, customer_id=str(uuid.uuid4()), reseller_id="r", key_id="k1")
    other_key = Principal(kind=principal.CUSTOMER, customer_id=customer.customer_id, reseller_id="r", key_id="k2")
    reseller = Principal(kind=principal.RESELLER, reseller_id="r", key_id="k3")
    assert bucket(customer) == bucket(other_key) != bucket(reseller)
    assert bucket(customer).count("{") == 1 and customer.customer_id in bucket(customer).split("{")[1]
