"""Runners service assembly: what `innosystem serve runners` runs."""

from __future__ import annotations

from innosystem.jobs.v1 import jobs_pb2_grpc
from innosystem.keys.v1 import keys_pb2_grpc
from innosystem.kit.clients import ApiKeyAuthenticator, channel, follow_revocations
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from innosystem.kit.server import Service
from innosystem.runners.v1 import runners_pb2, runners_pb2_grpc
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.runners.api import RunnerApi
from services.runners.config import RunnersConfig
from services.runners.customers import Customers
from services.runners.hub import Hub
from services.runners.live import LiveState
from services.runners.registry import TOKEN_PREFIX, Registry
from services.runners.revocations import RevocationFollower


async def create() -> Service:
    config = RunnersConfig.from_env()
    common = config.common
    db = Database(common.database_url)
    redis = connect(common.redis_url, common.redis_max_connections)
    tenancy = channel(common.addresses.tenancy, service="runners", secret=common.internal_secret)
    jobs_channel = channel(common.addresses.jobs, service="runners", secret=common.internal_secret)
    keys_channel = channel(common.addresses.keys, service="runners", secret=common.internal_secret)
    jobs = jobs_pb2_grpc.JobServiceStub(jobs_channel)
    # A session's Redis entry outlives a missed heartbeat or two, not a dead replica.
    live = LiveState(redis, ttl_ms=2 * config.heartbeat_timeout_ms)
    hub = Hub(config, db, live, jobs, keys_pb2_grpc.KeyManagementServiceStub(keys_channel))
    customers = Customers(tenancy)
    follower = hub.revocations = RevocationFollower(customers, hub.sessions, redis)
    registry = Registry(db, live, config.token_pepper, release_all=hub.release_all,
                        max_per_customer=config.max_runners_per_customer, customers=customers)
    api = RunnerApi(registry, hub, jobs)
    api_keys = ApiKeyAuthenticator(tenancy)

    async def follow_api_key_revocations() -> None:
        # A deactivated customer's or a rotated API key is dropped from this service's cache at
        # once (direct gRPC callers), not after the cache's TTL.
        await follow_revocations(api_keys, redis)

    async def authenticate(key: str) -> Principal:
        # Runner tokens are resolved here; API keys (registering runners over gRPC) by tenancy.
        return await (registry.authenticate(key) if key.startswith(TOKEN_PREFIX) else api_keys(key))

    async def close_redis() -> None:
        await redis.aclose()

    return Service(
        name="runners",
        service_names=[runners_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name],
        register=lambda server: runners_pb2_grpc.add_RunnerServiceServicer_to_server(api, server),
        authenticate=authenticate,
        background=[*hub.loops(), follower.run, follow_api_key_revocations],
        on_shutdown=[hub.close, jobs_channel.close, keys_channel.close, tenancy.close, close_redis, db.close],
    )
