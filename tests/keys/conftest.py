"""Keys fixtures: the keys service on a real gRPC server (kit bootstrap, real PostgreSQL and
Valkey), a real reference key manager process, and a stand-in for the jobs service's GetLease
and GetJob (the jobs service is another team's; only what secure access reads of it)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from innosystem.embedded import EmbeddedValkey, free_port
from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import access_logs_pb2_grpc, keys_pb2_grpc
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit import egress
from innosystem.kit import principal as principals
from innosystem.kit.config import Addresses, CommonConfig, to_async_url
from innosystem.kit.server import build_server
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys.config import KeysConfig
from services.keys.main import Keys, build, service
from tests.keys.keymanager_process import KeyManagerProcess, start_keymanager
from tests.support import signing

SECRET = b"keys-tests-internal-secret-0123456789"


class FakeJobs(jobs_pb2_grpc.JobServiceServicer):
    """GetLease and GetJob from a dict; a lease is current only for its runner."""

    def __init__(self) -> None:
        self.leases: dict[str, jobs_pb2.JobLease] = {}
        self.results: dict[str, dict[str, Any]] = {}

    async def GetLease(self, request: jobs_pb2.GetLeaseRequest, context: grpc.aio.ServicerContext) -> Any:
        lease = self.leases.get(request.job_id)
        if lease is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        assert lease is not None
        if lease.lease_id != request.lease_id or (request.runner_id and lease.runner_id != request.runner_id):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the job's current lease")
        return lease

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> Any:
        lease = self.leases.get(request.job_id)
        if lease is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        assert lease is not None
        job = jobs_pb2.Job(id=lease.job_id, customer_id=lease.customer_id, project_id=lease.project_id,
                           job_type_id=lease.job_type_id, job_type_name=lease.job_type_name,
                           payload=lease.payload, encryption=lease.encryption)
        if request.job_id in self.results:
            json_format.ParseDict(self.results[request.job_id], job.result)
        return job


class FakeTenancy(tenancy_pb2_grpc.TenancyServiceServicer):
    """GetCustomer from a dict: which reseller a customer belongs to (the keys service asks it to
    decide what a reseller may see)."""

    def __init__(self) -> None:
        self.resellers: dict[str, str] = {}

    async def GetCustomer(self, request: tenancy_pb2.GetCustomerRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.customer_id not in self.resellers:
            await context.abort(grpc.StatusCode.NOT_FOUND, "customer not found")
        return tenancy_pb2.Customer(id=request.customer_id, reseller_id=self.resellers[request.customer_id])


def signed(p: Principal) -> tuple[tuple[str, str], ...]:
    """Metadata acting as `p` on the harness's channels (signed there for the method called)."""
    return signing.as_(p)


@dataclass
class Tenant:
    customer_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    project_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    key_id: str = ""

    @property
    def principal(self) -> Principal:
        return Principal(kind=principals.CUSTOMER, customer_id=self.customer_id, key_id=f"ak_{self.customer_id[:8]}")


JOBS = signed(Principal(kind=principals.SERVICE, service="jobs"))
RUNNERS = signed(Principal(kind=principals.SERVICE, service="runners"))
ADMIN = signed(Principal(kind=principals.ADMIN, key_id="ak_admin"))


@dataclass
class Harness:
    keys: Keys
    jobs: FakeJobs
    tenancy: FakeTenancy
    km: KeyManagerProcess
    stub: keys_pb2_grpc.KeyManagementServiceStub
    logs: access_logs_pb2_grpc.AccessLoggingServiceStub
    database_url: str

    def as_(self, tenant: Tenant) -> tuple[tuple[str, str], ...]:
        return signed(tenant.principal)

    async def register(self, tenant: Tenant, *, policy: pb.KeyPolicy | None = None, external_key_id: str = "cmk-1",
                       url: str | None = None, secret: str | None = None) -> pb.ClientKey:
        key = await self.stub.CreateClientKey(pb.CreateClientKeyRequest(
            customer_id=tenant.customer_id, client_key=pb.ClientKey(
                endpoint_url=url or self.km.grpc_url, external_key_id=external_key_id,
                hmac_secrets=[secret or self.km.secret], policy=policy, description="test key")),
            metadata=self.as_(tenant))
        tenant.key_id = key.id
        return key

    async def submit(self, tenant: Tenant, payload: dict[str, Any], encrypt: list[str],
                     runner_id: str = "runner-1") -> jobs_pb2.JobLease:
        """What the jobs service does at submit (EncryptFields) and at lease (a JobLease)."""
        job_id = str(uuid.uuid4())
        values = []
        for path in encrypt:
            v = struct_pb2.Value()
            json_format.ParseDict(_at(payload, path), v)
            values.append(pb.PlainField(path=path, value=v))
        answer = await self.stub.EncryptFields(pb.EncryptFieldsRequest(
            context=pb.EncryptionContext(customer_id=tenant.customer_id, project_id=tenant.project_id, job_id=job_id,
                                         key_id=tenant.key_id), fields=values), metadata=JOBS)
        stored = json_format.ParseDict(payload, struct_pb2.Struct())
        doc = json_format.MessageToDict(stored)
        for f in answer.fields:
            _put(doc, f.path, f.ciphertext)
        lease = jobs_pb2.JobLease(job_id=job_id, lease_id=str(uuid.uuid4()), runner_id=runner_id,
                                  customer_id=tenant.customer_id, project_id=tenant.project_id,
                                  job_type_id="jt-1", job_type_name="card-check",
                                  payload=json_format.ParseDict(doc, struct_pb2.Struct()),
                                  encryption=jobs_pb2.JobEncryption(key_id=tenant.key_id, encrypted_fields=encrypt))
        self.jobs.leases[job_id] = lease
        return lease

    async def access(self, lease: jobs_pb2.JobLease, fields: list[str], purpose: int = 1,
                     runner_id: str | None = None, client_reference: str = "") -> pb.SecureAccessResponse:
        return await self.stub.SecureAccess(pb.SecureAccessRequest(
            runner_id=runner_id or lease.runner_id, job_id=lease.job_id, lease_id=lease.lease_id,
            purpose=purpose, fields=fields, client_reference=client_reference), metadata=RUNNERS)  # type: ignore[arg-type]

    async def records(self, tenant: Tenant, **filters: Any) -> list[alpb.AccessRecord]:
        answer = await self.logs.ListAccessLogs(alpb.ListAccessLogsRequest(
            customer_id=tenant.customer_id, oldest_first=True, page_size=1000, **filters), metadata=self.as_(tenant))
        return list(answer.records)

    async def verify(self, tenant: Tenant) -> alpb.AccessLogVerification:
        return await self.logs.VerifyAccessLogs(alpb.VerifyAccessLogsRequest(customer_id=tenant.customer_id),
                                                metadata=self.as_(tenant))


def _at(doc: dict[str, Any], path: str) -> Any:
    node: Any = {"payload": doc}
    for part in path.split("."):
        node = node[part]
    return node


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    node: Any = doc
    parts = path.split(".")[1:]
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


@pytest.fixture(scope="module")
def km(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyManagerProcess]:
    process = start_keymanager(tmp_path_factory.mktemp("km"), "cmk-1", "cmk-2")
    yield process
    process.stop()


def keys_config(database_url: str, redis_url: str, jobs_addr: str, tenancy_addr: str = "127.0.0.1:1",
                **overrides: Any) -> KeysConfig:
    common = CommonConfig(service="keys", database_url=to_async_url(database_url), redis_url=redis_url,
                          internal_secret=SECRET, addresses=dataclasses.replace(Addresses(), jobs=jobs_addr,
                                                                                tenancy=tenancy_addr),
                          listen="127.0.0.1:0", log_format="console", log_level="INFO", grace_seconds=1,
                          metrics_port=0)
    # The tests' key managers and webhook receivers listen on loopback at ports picked at run time,
    # so these stacks allow-list loopback as a host; the guard's refusals are tested with a keys
    # service that allow-lists one key manager port only (test_keys_egress.py).
    values: dict[str, Any] = {"master_key": b"k" * 32, "key_cache_seconds": 0.0, "sweep_interval_seconds": 3600,
                              "webhook_attempts": 2,
                              "egress_policy": egress.Policy(allow_hosts=frozenset({"127.0.0.1"}))}
    values.update(overrides)
    return KeysConfig(common=common, **values)


@pytest.fixture(scope="module")
async def harness(database_url: str, valkey_server: EmbeddedValkey, km: KeyManagerProcess) -> AsyncIterator[Harness]:
    jobs, tenancy = FakeJobs(), FakeTenancy()
    jobs_server = grpc.aio.server()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, jobs_server)
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(tenancy, jobs_server)
    jobs_port = jobs_server.add_insecure_port("127.0.0.1:0")
    await jobs_server.start()
    config = keys_config(database_url, valkey_server.url, f"127.0.0.1:{jobs_port}", f"127.0.0.1:{jobs_port}")
    keys = build(config)
    server, _ = build_server(config.common, service(keys))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = signing.channel(f"127.0.0.1:{port}", SECRET)
    yield Harness(keys, jobs, tenancy, km, keys_pb2_grpc.KeyManagementServiceStub(channel),
                  access_logs_pb2_grpc.AccessLoggingServiceStub(channel), database_url)
    await channel.close()
    await server.stop(0)
    await keys.close()
    await jobs_server.stop(0)
