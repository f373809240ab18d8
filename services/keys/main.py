"""Keys service assembly: what `innosystem serve keys` runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from innosystem.keys.v1 import access_logs_pb2, access_logs_pb2_grpc, keys_pb2, keys_pb2_grpc
from innosystem.kit.audit import AuditReporter
from innosystem.kit.clients import channel
from innosystem.kit.db import Database
from innosystem.kit.pubsub import Subscriptions
from innosystem.kit.redis import connect
from innosystem.kit.server import Service
from services.keys.access import Accesses
from services.keys.accesslog import AccessLog
from services.keys.api import AccessLogsApi, KeysApi
from services.keys.background import TenantGate
from services.keys.config import KeysConfig
from services.keys.deps import Billing, Deps, Jobs, Tenants
from services.keys.hierarchy import Hierarchy
from services.keys.keycache import KeyCache
from services.keys.keymanagers import Clients, Sealer
from services.keys.notify import Notifications
from services.keys.registry import Registry
from services.keys.walletfeed import WalletFeed

log = logging.getLogger(__name__)


@dataclass
class Keys:
    deps: Deps
    registry: Registry
    accesses: Accesses
    notifications: Notifications
    wallet_feed: WalletFeed
    keys_api: KeysApi
    logs_api: AccessLogsApi
    closers: list[Callable[[], Awaitable[None]]]
    audit: AuditReporter | None = None  # key registrations → tenancy's audit log

    async def background_once(self) -> None:
        """One pass of every background duty (tests; the service runs each in its own loop)."""
        await self.accesses.sweep_abandoned()
        await self.registry.h.rewrap_once()
        await self.wallet_feed.follow_once()
        await self.notifications.deliver_once()

    def duties(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """The background loops: each duty in its own, so a long rewrap pass (a slow key manager)
        does not hold back webhook delivery or the sweeper. The wallet-event feed waits on
        billing's publish (services/keys/walletfeed.py) and wakes delivery when it wrote some."""
        def loop(name: str, once: Callable[[], Awaitable[object]],
                 woken: asyncio.Event | None = None) -> Callable[[], Coroutine[Any, Any, None]]:
            async def forever() -> None:
                while True:
                    if woken is not None:
                        woken.clear()
                    try:
                        await once()
                    except Exception:  # a failed pass must not stop the next one
                        log.exception("keys background %s pass failed", name)
                    if woken is None:
                        await asyncio.sleep(self.deps.config.sweep_interval_seconds)
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken.wait(), self.deps.config.sweep_interval_seconds)
            forever.__name__ = f"{name}_forever"  # the supervisor's name for it in logs
            return forever
        return [loop("sweep", self.accesses.sweep_abandoned), loop("rewrap", self.registry.h.rewrap_once),
                loop("delivery", self.notifications.deliver_once, self.notifications.written),
                self.wallet_feed.follow_forever]

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
    billing_channel = channel(config.common.addresses.billing, service="keys", secret=secret)
    access_log = AccessLog(db, redis)
    clients = Clients(config.egress_policy)
    deps = Deps(config, db, access_log, clients, Sealer(config.master_key),
                KeyCache(config.key_cache_seconds, config.key_cache_max_uses), Jobs(jobs_channel),
                Tenants(tenancy_channel), Billing(billing_channel),
                TenantGate(config.background_concurrency, config.background_per_customer))
    hierarchy = Hierarchy(deps)
    registry, accesses, notifications = Registry(deps, hierarchy), Accesses(deps, hierarchy), Notifications(deps)
    closers = [notifications.close, clients.close, jobs_channel.close, tenancy_channel.close, billing_channel.close]
    # Billing's publishes are on billing's Redis: this service's own unless configured apart.
    subscriptions = access_log.subscriptions
    if config.billing_redis_url and config.billing_redis_url != config.common.redis_url:
        billing_redis = connect(config.billing_redis_url, 2)
        subscriptions = Subscriptions(billing_redis)
        closers += [subscriptions.aclose, billing_redis.aclose]
    feed = WalletFeed(deps, subscriptions, notifications.written)
    return Keys(deps, registry, accesses, notifications, feed, KeysApi(registry, accesses),
                AccessLogsApi(deps, access_log, notifications),
                [*closers, redis.aclose, db.close], AuditReporter(tenancy_channel))


def service(keys: Keys) -> Service:
    def register(server: grpc.aio.Server) -> None:
        keys_pb2_grpc.add_KeyManagementServiceServicer_to_server(keys.keys_api, server)
        access_logs_pb2_grpc.add_AccessLoggingServiceServicer_to_server(keys.logs_api, server)

    return Service(
        name="keys",
        service_names=[keys_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name,
                       access_logs_pb2.DESCRIPTOR.services_by_name["AccessLoggingService"].full_name],
        register=register,
        background=keys.duties(),
        audit=keys.audit,
        on_shutdown=[keys.close],
    )


async def create() -> Service:
    return service(build(KeysConfig.from_env()))
