"""Per-account rate limits at the gateway, against the real embedded Valkey: the burst, then 429
with Retry-After and RetryInfo before any upstream call; accounts apart; replicas share a bucket;
refill at the sustained rate; a Redis outage admits everything, and a Redis that stops answering
does not hang a request. Requests without valid credentials are limited per client address."""

from __future__ import annotations

import asyncio
import math
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis

from gateway.ratelimit import Limit, address_bucket, bucket
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


async def test_unauthenticated_requests_are_limited_per_address_before_tenancy_is_asked(
        upstream_port: int, sample_set_path: Path, recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    config = config_for(upstream_port, sample_set_path, unauthenticated_rate_limit_per_second=0.5,
                        unauthenticated_rate_limit_burst=3, redis_url=_fresh_db(valkey_server))
    async with serving(config) as client:
        assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200  # a known-good key
        attempts = [{}, {"Authorization": "Bearer isk_guess_1"}, {"Authorization": "Basic Zm9vOmJhcg=="}]
        assert [(await client.get("/v1/me", headers=h)).status for h in attempts] == [401, 401, 401]
        asked = len(recorder.named("Authenticate"))
        for headers in ({}, {"Authorization": "Bearer isk_guess_2"}, {"Authorization": "Bearer isk_guess_3"}):
            refused = await client.get("/v1/me", headers=headers)
            assert refused.status == 429, await refused.text()
            assert 1 <= int(refused.headers["Retry-After"]) <= 2
            body = await refused.json()
            assert next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))["reason"] == "RATE_LIMITED"
        assert len(recorder.named("Authenticate")) == asked  # the guesses never reached tenancy
        assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200  # the known key still passes


async def test_client_address_comes_from_trusted_proxies_only(
        upstream_port: int, sample_set_path: Path, valkey_server: EmbeddedValkey) -> None:
    config = config_for(upstream_port, sample_set_path, unauthenticated_rate_limit_per_second=0.5,
                        unauthenticated_rate_limit_burst=1, trusted_proxy_hops=1, redis_url=_fresh_db(valkey_server))
    async with serving(config) as client:
        one = {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}  # the client forged the first entry
        assert (await client.get("/v1/me", headers=one)).status == 401
        assert (await client.get("/v1/me", headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.1"})).status == 429
        assert (await client.get("/v1/me", headers={"X-Forwarded-For": "198.51.100.2"})).status == 401


def test_address_buckets() -> None:
    assert address_bucket("2001:db8::1") == address_bucket("2001:db8::ffff") != address_bucket("2001:db8:0:1::1")
    assert address_bucket("::ffff:192.0.2.1") == address_bucket("192.0.2.1") == "gateway:rl:{ip:192.0.2.1}"


@pytest.mark.parametrize("burst", [5, 100])  # a Redis call per request; a credit of 10 (100/s)
async def test_a_redis_that_stops_answering_does_not_hang_requests(
        upstream_port: int, sample_set_path: Path, tmp_path: Path, burst: int) -> None:
    """A Redis process that stops (SIGSTOP: connections are accepted by the kernel, nothing
    answers) is the lost Redis that no connection error reports; requests still answer: those
    within an account's credit as before, the rest once the call for the next credit gives up."""
    valkey = EmbeddedValkey(tmp_path / "valkey", persist=False)
    valkey.start()
    try:
        config = config_for(upstream_port, sample_set_path, rate_limit_per_second=100, rate_limit_burst=burst,
                            unauthenticated_rate_limit_per_second=100, unauthenticated_rate_limit_burst=100,
                            redis_url=valkey.url, redis_timeout_seconds=0.5)
        async with serving(config) as client:
            first = await client.get("/v1/me", headers=CUSTOMER)
            assert first.headers["RateLimit-Remaining"] == str(burst - 1)
            assert valkey.proc is not None
            valkey.proc.send_signal(signal.SIGSTOP)
            try:
                timeout = aiohttp.ClientTimeout(total=15)
                for headers in (CUSTOMER, {}, ADMIN):
                    resp = await client.get("/v1/me", headers=headers, timeout=timeout)
                    assert resp.status in (200, 401)
                    assert "RateLimit-Remaining" not in resp.headers or (headers is CUSTOMER and burst == 100)
                for _ in range(12):  # beyond the customer's credit, if it has one
                    resp = await client.get("/v1/me", headers=CUSTOMER, timeout=timeout)
                    assert resp.status == 200
                assert "RateLimit-Remaining" not in resp.headers
            finally:
                valkey.proc.send_signal(signal.SIGCONT)
    finally:
        valkey.stop()


def test_credit_sizes() -> None:
    assert Limit(500, 1000).credit_size == 50  # the default limit: a tenth of a second at its rate
    assert Limit(1_000_000, 1000).credit_size == 100  # a tenth of the burst
    assert Limit(100, 5).credit_size == Limit(0.5, 3).credit_size == Limit(15, 1000).credit_size == 1


def _evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as direct:
        return int(direct.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_an_account_spends_a_credit_not_a_redis_call_per_request(
        upstream_port: int, sample_set_path: Path, recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    url = _fresh_db(valkey_server)
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=1000, rate_limit_burst=100,
                        redis_url=url)  # credits of 10
    async with serving(config) as client:
        before = _evalsha_calls(url)
        remaining = []
        for _ in range(30):
            resp = await client.get("/v1/me", headers=CUSTOMER)
            assert resp.status == 200
            remaining.append(int(resp.headers["RateLimit-Remaining"]))
        calls = _evalsha_calls(url) - before
        assert 3 <= calls <= 8  # a credit of 10 at a time, the next asked for at half; not 30 calls
        assert remaining[0] == 99 and all(0 <= r <= 99 for r in remaining)
        assert len(recorder.named("GetMe")) == 30


async def test_replicas_spending_credits_never_admit_beyond_the_bucket(
        upstream_port: int, sample_set_path: Path, recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    """Two replicas, credits of 10 from a bucket of 100 at 100/s, 300 requests as fast as they go:
    no more admitted than the bucket allows over the time they took, and at most a credit per
    replica less than its burst."""
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=100, rate_limit_burst=100,
                        redis_url=_fresh_db(valkey_server))
    async with serving(config) as one, serving(config) as two:
        began = time.monotonic()
        statuses = []
        for i in range(30):
            answers = await asyncio.gather(*((one if (i + k) % 2 else two).get("/v1/me", headers=CUSTOMER)
                                             for k in range(10)))
            statuses += [a.status for a in answers]
        took = time.monotonic() - began
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0
    assert 100 - 2 * 10 <= admitted <= 100 + math.ceil(100 * took) + 1
    assert len(recorder.named("GetMe")) == admitted


async def test_requests_arriving_together_are_each_decided_alone(
        upstream_port: int, sample_set_path: Path, recorder: Recorder, valkey_server: EmbeddedValkey) -> None:
    """Eight requests at once against a burst of five (their script calls pipelined together):
    five admitted with five distinct remainders, three refused; the admin's bucket is its own."""
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=0.5, rate_limit_burst=5,
                        redis_url=_fresh_db(valkey_server))
    async with serving(config) as client:
        answers = await asyncio.gather(*(client.get("/v1/me", headers=CUSTOMER) for _ in range(8)),
                                       client.get("/v1/me", headers=ADMIN))
        *customer, admin = answers
        assert sorted(r.status for r in customer) == [200] * 5 + [429] * 3
        remaining = sorted(r.headers["RateLimit-Remaining"] for r in customer if r.status == 200)
        assert remaining == ["0", "1", "2", "3", "4"]
        assert admin.status == 200
        assert len(recorder.named("GetMe")) == 6


async def test_a_redis_that_lost_its_scripts_gets_them_again(
        upstream_port: int, sample_set_path: Path, valkey_server: EmbeddedValkey) -> None:
    url = _fresh_db(valkey_server)
    config = config_for(upstream_port, sample_set_path, rate_limit_per_second=0.5, rate_limit_burst=3, redis_url=url)
    async with serving(config) as client:
        assert (await client.get("/v1/me", headers=CUSTOMER)).headers["RateLimit-Remaining"] == "2"
        with redis.Redis.from_url(url) as direct:
            direct.script_flush()
        again = await asyncio.gather(*(client.get("/v1/me", headers=CUSTOMER) for _ in range(2)))  # pipelined
        assert sorted(r.headers.get("RateLimit-Remaining") for r in again) == ["0", "1"]  # still enforced
        with redis.Redis.from_url(url) as direct:
            direct.script_flush()
        assert (await client.get("/v1/me", headers=CUSTOMER)).status == 429  # alone in its turn
