"""Keys service assembly: what `innosystem serve keys` runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from innosystem.keys.v1 import access_logs_pb2, access_logs_pb2_grpc, keys_pb2, keys_pb2_grpc
from innosystem.kit.clients import channel
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from innosystem.kit.server import Service
from services.keys.access import Accesses
from services.keys.accesslog import AccessLog
from services.keys.api import AccessLogsApi, KeysApi
from services.keys.config import KeysConfig
from services.keys.deps import Deps, Jobs, Tenants
from services.keys.hierarchy import Hierarchy
from services.keys.keycache import KeyCache
from services.keys.keymanagers import Clients, Sealer
from services.keys.notify import Notifications
from services.keys.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Keys:
    deps: Deps
    registry: Registry
    accesses: Accesses
    notifications: Notifications
    keys_api: KeysApi
    logs_api: AccessLogsApi
    closers: list[Callable[[], Awaitable[None]]]

    async def background_once(self) -> None:
        """One pass of every background duty (the loop below, and tests)."""
        await self.accesses.sweep_abandoned()
        await self.registry.h.rewrap_once()
        await self.notifications.deliver_once()

    async def background_forever(self) -> None:
        while True:
            try:
                await self.background_once()
            except Exception:  # one failing duty must not stop the others next time
                log.exception("keys background pass failed")
            await asyncio.sleep(self.deps.config.sweep_interval_seconds)

    async def close(self) -> None:
        self.deps.cache.clear()
        for closer in self.closers:
            await closer()


def build(config: KeysConfig) -> Keys:
    db = Database(config.common.database_url)
    redis = connect(config.common.redis_url, config.common.redis_max_connections)
    secret = config.common.internal_secret
    jobs_channel = channel(config.common.addresses.jobs, service="keys", secret=secret)
    tenancy_channel = channel(config.common.addresses.tenancy, service="keys", secret=secret)
    access_log = AccessLog(db, redis)
    clients = Clients(config.egress_policy)
    deps = Deps(config, db, access_log, clients, Sealer(config.master_key),
                KeyCache(config.key_cache_seconds, config.key_cache_max_uses), Jobs(jobs_channel),
                Tenants(tenancy_channel))
    hierarchy = Hierarchy(deps)
    registry, accesses, notifications = Registry(deps, hierarchy), Accesses(deps, hierarchy), Notifications(deps)
    return Keys(deps, registry, accesses, notifications, KeysApi(registry, accesses),
                AccessLogsApi(deps, access_log, notifications),
                [notifications.close, clients.close, jobs_channel.close, tenancy_channel.close, redis.aclose,
                 db.close])


def service(keys: Keys) -> Service:
    def register(server: grpc.aio.Server) -> None:
        keys_pb2_grpc.add_KeyManagementServiceServicer_to_server(keys.keys_api, server)
        access_logs_pb2_grpc.add_AccessLoggingServiceServicer_to_server(keys.logs_api, server)

    return Service(
        name="keys",
        service_names=[keys_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name,
                       access_logs_pb2.DESCRIPTOR.services_by_name["AccessLoggingService"].full_name],
        register=register,
        background=[keys.background_forever],
        on_shutdown=[keys.close],
    )


async def create() -> Service:
    return service(build(KeysConfig.from_env()))
