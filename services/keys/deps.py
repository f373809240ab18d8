"""What the keys use cases share: the database, the log, the key managers, the other services."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc
from opentelemetry import metrics

from innosystem.billing.v1 import billing_pb2, billing_pb2_grpc
from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.kit import principal as principals
from innosystem.kit.db import Database
from innosystem.kit.errors import NotFound
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys.accesslog import AccessLog
from services.keys.background import TenantGate
from services.keys.config import KeysConfig
from services.keys.keycache import KeyCache
from services.keys.keymanagers import Clients, Sealer

meter = metrics.get_meter("innosystem.keys")
decisions = meter.create_counter("keys.access.decisions", unit="{access}",
                                 description="secure accesses decided, by outcome, purpose and reason")


class Jobs:
    """The jobs service as the keys service needs it: a lease's holder and a job's data."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = jobs_pb2_grpc.JobServiceStub(channel)

    async def lease(self, job_id: str, lease_id: str, runner_id: str) -> jobs_pb2.JobLease:
        return await self.stub.GetLease(jobs_pb2.GetLeaseRequest(job_id=job_id, lease_id=lease_id,
                                                                 runner_id=runner_id), timeout=10)

    async def job(self, job_id: str) -> jobs_pb2.Job:
        return await self.stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id, view=jobs_pb2.JobView.JOB_VIEW_FULL),
                                      timeout=10)


class Billing:
    """The billing service as the keys service needs it: its stored wallet events, in store order
    (the wallet-event feed of notification channels)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = billing_pb2_grpc.BillingServiceStub(channel)

    async def wallet_events_after(self, after_seq: int, limit: int) -> billing_pb2.ListWalletEventsAfterResponse:
        reply: billing_pb2.ListWalletEventsAfterResponse = await self.stub.ListWalletEventsAfter(
            billing_pb2.ListWalletEventsAfterRequest(after_seq=after_seq, limit=limit), timeout=10)
        return reply


class Tenants:
    """Which reseller a customer belongs to (for resellers' visibility), from tenancy."""

    def __init__(self, channel: grpc.aio.Channel | None) -> None:
        self.stub = tenancy_pb2_grpc.TenancyServiceStub(channel) if channel is not None else None

    async def reseller_of(self, customer_id: uuid.UUID) -> str:
        if self.stub is None:
            return ""
        try:
            customer = await self.stub.GetCustomer(tenancy_pb2.GetCustomerRequest(customer_id=str(customer_id)),
                                                   timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        return customer.reseller_id


@dataclass
class Deps:
    config: KeysConfig
    db: Database
    log: AccessLog
    clients: Clients
    sealer: Sealer
    cache: KeyCache
    jobs: Jobs
    tenants: Tenants
    billing: Billing
    # Shared by the background duties: one customer's work in flight is bounded across all of them.
    gate: TenantGate = field(default_factory=TenantGate)

    async def ensure_visible(self, p: Principal, customer_id: uuid.UUID, what: str = "key") -> None:
        """NOT_FOUND unless `p` may see `customer_id`'s keys and logs (ids of others do not leak)."""
        if p.kind in (principals.ADMIN, principals.SERVICE):
            return
        if p.kind == principals.CUSTOMER and p.customer_id == str(customer_id):
            return
        if p.kind == principals.RESELLER and p.reseller_id and \
                await self.tenants.reseller_of(customer_id) == p.reseller_id:
            return
        raise NotFound(f"{what.replace('_', ' ')} not found", reason=f"{what.upper()}_NOT_FOUND")
