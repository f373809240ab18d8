"""A jobs service under test: real embedded PostgreSQL and Valkey, real billing over signed gRPC
(through the kit's server bootstrap), tenancy played by the small double, and a controllable clock."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis as sync_redis
import redis.asyncio as aioredis
from google.protobuf import json_format

from innosystem.embedded import free_port
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1.job_types_pb2 import PRICE_MODEL_FLAT
from innosystem.keys.v1 import keys_pb2, keys_pb2_grpc
from innosystem.kit import freshness, inprocess
from innosystem.kit import principal as principals
from innosystem.kit.clients import channel
from innosystem.kit.config import Addresses, CommonConfig, to_async_url
from innosystem.kit.db import Database
from innosystem.kit.redis import connect
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.api import BillingApi
from services.billing.joined import Joined
from services.billing.otb import OpenToBuy
from services.billing.service import BillingService
from services.jobs.billing import Billing
from services.jobs.config import JobsConfig
from services.jobs.encryption import Encryptor
from services.jobs.models import JobType
from services.jobs.wiring import App, build
from tests.billing.billing_helpers import ADMIN as BILLING_ADMIN
from tests.billing.billing_helpers import billing_server, rates
from tests.jobs.test_job_types_service import FakeTenancy

SECRET = b"s" * 32
RUNNERS = Principal(kind=principals.SERVICE, service="runners")
ADMIN = Principal(kind=principals.ADMIN, key_id="admin")


class _AnnouncedKeys(dict[str, str]):
    def __init__(self, announce: Callable[[str], None]) -> None:
        super().__init__()
        self._announce = announce

    def __setitem__(self, project_id: str, key: str) -> None:
        super().__setitem__(project_id, key)
        self._announce(project_id)


class _AnnouncedSet(set[str]):
    def __init__(self, announce: Callable[[str], None]) -> None:
        super().__init__()
        self._announce = announce

    def add(self, project_id: str) -> None:
        super().add(project_id)
        self._announce(project_id)

    def discard(self, project_id: str) -> None:
        super().discard(project_id)
        self._announce(project_id)


class Tenancy(FakeTenancy):
    """The tenancy double, plus each project's client key (`encryption_key_id`) and active flag.
    Like tenancy it announces every change to them (`kit.freshness`) before the change counts as made."""

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self._redis = sync_redis.Redis.from_url(redis_url)
        self.keys: dict[str, str] = _AnnouncedKeys(self._announce)
        self.inactive: set[str] = _AnnouncedSet(self._announce)  # project ids
        self.currencies: dict[str, str] = _AnnouncedKeys(self._announce)  # project id → billing currency

    def _announce(self, project_id: str) -> None:
        self._redis.set(freshness.PREFIX + freshness.projects_of(self.projects[project_id]), uuid.uuid4().hex)

    async def GetProject(self, request: tenancy_pb2.GetProjectRequest, context: Any) -> tenancy_pb2.Project:
        project = await super().GetProject(request, context)
        project.encryption_key_id = self.keys.get(request.project_id, "")
        project.active = request.project_id not in self.inactive
        project.billing_currency_code = self.currencies.get(request.project_id, "")
        return project


class FakeKeys(keys_pb2_grpc.KeyManagementServiceServicer):
    """Stands in for the keys service's EncryptFields (its own tests cover the cryptography):
    an "envelope" that names the key and job and carries the JSON value, so tests can see what was sent.
    A key in `disabled` is refused as the keys service refuses a disabled key; a call for a key in
    `hang` waits (as behind a customer's stalled key manager) until `unhang` is set."""

    def __init__(self) -> None:
        self.disabled: set[str] = set()
        self.hang: set[str] = set()
        self.unhang = asyncio.Event()
        self.hung = 0  # calls waiting in `hang` now
        self._hung_changed = asyncio.Condition()

    async def wait_hung(self, calls: int) -> None:
        """Until `calls` calls are waiting behind a hanging key."""
        async with self._hung_changed:
            await self._hung_changed.wait_for(lambda: self.hung >= calls)

    async def EncryptFields(self, request: keys_pb2.EncryptFieldsRequest,
                            context: Any) -> keys_pb2.EncryptFieldsResponse:
        ctx = request.context
        if ctx.key_id in self.hang:
            async with self._hung_changed:
                self.hung += 1
                self._hung_changed.notify_all()
            try:
                await self.unhang.wait()
            finally:
                self.hung -= 1
        if ctx.key_id in self.disabled:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"key {ctx.key_id} is disabled")
        return keys_pb2.EncryptFieldsResponse(fields=[
            keys_pb2.EncryptedField(path=f.path, ciphertext=f"enc:{ctx.key_id}:{ctx.job_id}:"
                                                            f"{json_format.MessageToJson(f.value, indent=None)}")
            for f in request.fields], data_key_id="dk-1", client_key_version=1, project_key_version=1)


class Clock:
    """Epoch seconds that move only when a test says so (and start at the real time)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Customer:
    principal: Principal
    project_id: str


@dataclass
class JobsWorld:
    app: App
    billing: BillingService
    tenancy: Tenancy
    clock: Clock
    redis: aioredis.Redis
    config: JobsConfig
    keys: FakeKeys
    closers: list[Any] = field(default_factory=list)

    def past_orphan_hold_grace(self) -> None:
        """The clock past recovery's grace for holds without a job, as billing (which stamps holds
        with the real time) sees their age."""
        self.clock.t = max(self.clock.t, time.time()) + self.config.orphan_hold_grace_seconds + 1

    async def customer(self, funds: int = 100_000) -> Customer:
        cid = str(uuid.uuid4())
        await self.billing.open_wallet(cid, "", "USD", 0)
        if funds:
            await self.billing.top_up(BILLING_ADMIN, cid, funds, "", f"fund-{cid}", "")
        self.tenancy.customers[cid] = ""
        who = Principal(kind=principals.CUSTOMER, customer_id=cid, key_id=f"k-{cid[:8]}")
        pid = str(uuid.uuid4())
        self.tenancy.projects[pid] = cid
        return Customer(who, pid)

    async def job_type(self, c: Customer, *, own: bool = False, price: int = 10, model: int = PRICE_MODEL_FLAT,
                       cap: int = 0, **fields: Any) -> JobType:
        """A catalog type (shared runners serve it) with a price in force now in USD: `price` cents
        per job, second or unit (`model`) up to `cap`; or (`own`) a customer's own type, which its
        runners serve (leases with its `customer_id`) for the platform fee."""
        fields.setdefault("name", f"t-{uuid.uuid4().hex[:8]}")
        if own:
            return await self.app.types.create_job_type(c.principal, c.project_id, fields, "", b"")
        jt = await self.app.types.create_catalog_job_type(ADMIN, fields, "", b"")
        await self.app.types.add_price(ADMIN, str(jt.id), {"currency_code": "USD", "model": model,
                                                           "unit_price_cents": price, "cap_cents": cap})
        return jt

    async def available(self, c: Customer) -> int:
        """What the customer can spend once the billing of every ending committed so far is sent
        (an ending's capture or release goes after its answer: leases._settle_soon)."""
        await self.app.cases.leases.settle_pending()
        wallet = await self.billing.get_wallet(BILLING_ADMIN, c.principal.customer_id)
        return int(wallet.balance - wallet.held)

    async def submit(self, c: Customer, jt: JobType, **kw: Any) -> Any:
        return await self.app.cases.submission.submit(
            c.principal, pb.SubmitJobRequest(project_id=c.project_id, job_type_id=str(jt.id), **kw))

    async def lease(self, names: list[str], max_jobs: int = 10, wait_ms: int = 0, runner: str = "r1",
                    **kw: Any) -> list[pb.JobLease]:
        return await self.app.cases.leases.lease(pb.LeaseJobsRequest(
            runner_id=runner, session_id="s1", job_type_names=names, max_jobs=max_jobs, wait_ms=wait_ms, **kw))

    async def idle_poll(self, names: list[str], **kw: Any) -> asyncio.Task[list[pb.JobLease]]:
        """A long poll, waiting once its first look found nothing (a submit may hand it its job)."""
        poll = asyncio.create_task(self.lease(names, wait_ms=20_000, **kw))
        for _ in range(500):
            if self.app.deps.idle._by_queue:
                break
            await asyncio.sleep(0.01)
        assert not poll.done() and self.app.deps.idle._by_queue
        return poll

    async def complete(self, lease: pb.JobLease,
                       outcome: pb.AttemptOutcome.ValueType = pb.ATTEMPT_OUTCOME_SUCCEEDED,
                       **result: Any) -> pb.CompletionResult:
        (res,) = await self.app.cases.leases.complete([pb.JobCompletion(
            job_id=lease.job_id, lease_id=lease.lease_id, runner_id=lease.runner_id,
            result=pb.AttemptResult(outcome=outcome, **result))])
        await self.app.cases.leases.settle_pending()  # billing goes after the answer (leases._settle_soon)
        return res

    async def get(self, job_id: str, caller: Principal = ADMIN) -> pb.Job:
        return await self.app.cases.queries.get(caller, job_id, pb.JOB_VIEW_FULL)


async def make_world(database_url: str, redis_url: str, *, joined: bool = False,
                     **config: Any) -> AsyncIterator[JobsWorld]:
    """`joined`: billing beside the jobs service on its database, as `innosystem up` runs them: the
    holds of a small submit go in the jobs' own transaction (services/billing/joined.py)."""
    redis = connect(redis_url)
    db = Database(to_async_url(database_url), pool_size=5)
    bill_db = Database(to_async_url(database_url), pool_size=5)
    billing = BillingService(bill_db, OpenToBuy(redis), rates)
    common = CommonConfig(service="billing", database_url=to_async_url(database_url), redis_url=redis_url,
                          internal_secret=SECRET, addresses=Addresses(), listen="127.0.0.1:0", log_format="",
                          log_level="INFO", grace_seconds=1.0, metrics_port=0)
    server, billing_address = await billing_server(BillingApi(billing), SECRET)
    fake = Tenancy(common.redis_url)  # type: ignore[abstract]  # a double: only the methods used
    tserver = grpc.aio.server()
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(fake, tserver)
    fake_keys = FakeKeys()  # type: ignore[abstract]  # a double: only EncryptFields
    keys_pb2_grpc.add_KeyManagementServiceServicer_to_server(fake_keys, tserver)  # same double server
    tport = free_port()
    tserver.add_insecure_port(f"127.0.0.1:{tport}")
    await tserver.start()
    tenancy = channel(f"127.0.0.1:{tport}", service="jobs", secret=SECRET)
    billing_channel = channel(billing_address, service="jobs", secret=SECRET)
    clock = Clock()
    jobs_config = JobsConfig(common=common, **config)
    keys = channel(f"127.0.0.1:{tport}", service="jobs", secret=SECRET)
    app = build(jobs_config, db, redis, tenancy, Billing(billing_channel), clock, prefix=f"jt{uuid.uuid4().hex[:6]}:",
                encryptor=Encryptor(keys))
    listener = asyncio.create_task(app.signals.listen_forever())
    world = JobsWorld(app, billing, fake, clock, redis, jobs_config, fake_keys)
    beside, cpu_share = Joined(billing), inprocess.cpu_share
    if joined:
        inprocess.offer(inprocess.BILLING_JOINED, beside)
        # this process taken as idle: the suite's own load must not decide the route
        inprocess.cpu_share = lambda: 0.0  # type: ignore[assignment]
    try:
        yield world
    finally:
        inprocess.withdraw(inprocess.BILLING_JOINED, beside)
        inprocess.cpu_share = cpu_share  # type: ignore[assignment]
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await tenancy.close()
        await keys.close()
        await billing_channel.close()
        await server.stop(None)
        await tserver.stop(None)
        await billing.close()
        await db.close()
        await bill_db.close()
        await redis.aclose()
