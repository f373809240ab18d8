"""Helpers shared by billing tests (one module, so one RATES table)."""

from __future__ import annotations

import uuid

import grpc

from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.embedded import free_port
from innosystem.kit import principal as principals
from innosystem.kit.config import Addresses, CommonConfig
from innosystem.kit.server import Service, build_server
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.api import BillingApi
from services.billing.models import Account
from services.billing.service import BillingService

ADMIN = Principal(kind=principals.ADMIN, key_id="admin-key")
RATES: dict[uuid.UUID, int] = {}


async def rates(reseller_id: uuid.UUID) -> int:
    """Stands in for tenancy's GetReseller (tenancy is not under test here)."""
    return RATES[reseller_id]


async def funded_wallet(billing: BillingService, amount: int, *, reseller_rate: int | None = None,
                        credit_limit: int = 0) -> tuple[str, str]:
    """A new customer's wallet topped up by `amount`; (customer id, reseller id or "")."""
    customer = str(uuid.uuid4())
    reseller = ""
    if reseller_rate is not None:
        rid = uuid.uuid4()
        RATES[rid] = reseller_rate
        reseller = str(rid)
    await billing.open_wallet(customer, reseller, "USD", credit_limit)
    if amount:
        await billing.top_up(ADMIN, customer, amount, "", f"fund-{customer}", "")
    return customer, reseller


async def wallet(billing: BillingService, customer: str) -> Account:
    return await billing.get_wallet(ADMIN, customer)


async def flush_billing(client: object) -> None:
    """Lose billing's whole Redis projection (only billing's keys: other services share the server)."""
    keys = [k async for k in client.scan_iter("billing:*", count=1000)]  # type: ignore[attr-defined]
    if keys:
        await client.delete(*keys)  # type: ignore[attr-defined]


async def billing_server(api: BillingApi, secret: bytes) -> tuple[grpc.aio.Server, str]:
    """A started gRPC server answering `api` as billing's own process does (its interceptors: the
    signed principal, the error mapping), and its address."""
    common = CommonConfig(service="billing", database_url="", redis_url="", internal_secret=secret,
                          addresses=Addresses(), listen="127.0.0.1:0", log_format="", log_level="INFO",
                          grace_seconds=1.0, metrics_port=0)
    server, _ = build_server(common, Service(
        name="billing", service_names=[],
        register=lambda s: billing_pb2_grpc.add_BillingServiceServicer_to_server(api, s)))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"127.0.0.1:{port}"
