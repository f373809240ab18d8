"""Billing service assembly: what `innosystem serve billing` runs."""

from __future__ import annotations

import functools

from innosystem.billing.v1 import billing_pb2, billing_pb2_grpc
from innosystem.kit import inprocess, statistics
from innosystem.kit.audit import AuditReporter
from innosystem.kit.clients import channel
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from innosystem.kit.server import Service
from services.billing.api import BillingApi
from services.billing.config import BillingConfig
from services.billing.corrections import Corrections
from services.billing.grants import CreditGrants
from services.billing.holds import answer
from services.billing.joined import Joined
from services.billing.otb import OpenToBuy
from services.billing.service import BillingService
from services.billing.tenants import ResellerRates

# Locked and rewritten by every ledger batch (services/billing/ledger.py).
HOT_TABLES = ("billing.holds", "billing.accounts", "billing.transfers")


async def create() -> Service:
    config = BillingConfig.from_env()
    db = Database(config.common.database_url)
    redis = connect(config.common.redis_url, config.common.redis_max_connections)
    tenancy = channel(config.common.addresses.tenancy, service="billing", secret=config.common.internal_secret)
    service = BillingService(db, OpenToBuy(redis), ResellerRates(tenancy, config.rate_cache_seconds),
                             default_currency=config.default_currency, max_amount=config.max_amount_cents,
                             default_hold_seconds=config.default_hold_seconds, max_batch=config.max_batch)
    await service.load_redis()
    grants = CreditGrants(service)
    api = BillingApi(service, Corrections(service, reseller_refund_limit=config.reseller_refund_limit_cents), grants)
    # A jobs service in this process reserves and settles its holds without gRPC.
    holds = functools.partial(answer, api)
    inprocess.offer(inprocess.BILLING_HOLDS, holds)
    # … and stores a submit's holds in its jobs' own transaction where they share the database.
    joined = Joined(service)
    inprocess.offer(inprocess.BILLING_JOINED, joined)

    async def withdraw() -> None:
        inprocess.withdraw(inprocess.BILLING_HOLDS, holds)
        inprocess.withdraw(inprocess.BILLING_JOINED, joined)

    async def follow_statistics() -> None:  # the ledger's prepared plans follow the tables' growth
        await statistics.follow_growth(db, HOT_TABLES)

    background = [service.sweep_forever, grants.expire_forever, follow_statistics]
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
        on_shutdown=[withdraw, service.close, tenancy.close, close_redis, db.close],
    )
