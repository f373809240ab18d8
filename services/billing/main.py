"""Billing service assembly: what `innosystem serve billing` runs."""

from __future__ import annotations

from innosystem.billing.v1 import billing_pb2, billing_pb2_grpc
from innosystem.kit.audit import AuditReporter
from innosystem.kit.clients import channel
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from innosystem.kit.server import Service
from services.billing.api import BillingApi
from services.billing.config import BillingConfig
from services.billing.otb import OpenToBuy
from services.billing.service import BillingService
from services.billing.tenants import ResellerRates


async def create() -> Service:
    config = BillingConfig.from_env()
    db = Database(config.common.database_url)
    redis = connect(config.common.redis_url, config.common.redis_max_connections)
    tenancy = channel(config.common.addresses.tenancy, service="billing", secret=config.common.internal_secret)
    service = BillingService(db, OpenToBuy(redis), ResellerRates(tenancy, config.rate_cache_seconds),
                             default_currency=config.default_currency, max_amount=config.max_amount_cents,
                             default_hold_seconds=config.default_hold_seconds, max_batch=config.max_batch)
    await service.load_redis()
    api = BillingApi(service)
    background = [service.sweep_forever]
    if config.reconcile_interval_seconds > 0:
        async def reconcile_periodically() -> None:
            await service.reconcile_forever(config.reconcile_interval_seconds)
        background.append(reconcile_periodically)

    async def close_redis() -> None:
        await redis.aclose()

    return Service(
        name="billing",
        service_names=[billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name],
        register=lambda server: billing_pb2_grpc.add_BillingServiceServicer_to_server(api, server),
        background=background,
        audit=AuditReporter(tenancy),  # top-ups and wallet settings → tenancy's audit log
        on_shutdown=[service.close, tenancy.close, close_redis, db.close],
    )
