"""Job type use cases on the real embedded PostgreSQL, with tenancy played by a small gRPC double."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from innosystem.embedded import free_port
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.kit.clients import channel
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs.api import servicer
from services.jobs.service import JobsService
from services.jobs.tenants import Projects

ADMIN = Principal(kind=principals.ADMIN, key_id="admin")


class FakeTenancy(tenancy_pb2_grpc.TenancyServiceServicer):
    """Stands in for the tenancy peer: answers GetProject and GetCustomer for known ids (tenancy's
    own tests cover the real thing) and counts the calls."""

    def __init__(self) -> None:
        self.projects: dict[str, str] = {}  # project id → customer id
        self.customers: dict[str, str] = {}  # customer id → reseller id ("" for none)
        self.keys: dict[str, str] = {}  # project id → encryption key id
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set by a test, answers wait for it (after reading)
        self.read = asyncio.Event()  # set when a gated call has read the project

    async def GetProject(self, request: tenancy_pb2.GetProjectRequest, context: Any) -> tenancy_pb2.Project:
        self.calls += 1
        if request.project_id not in self.projects:
            await context.abort(grpc.StatusCode.NOT_FOUND, "project not found")
        answer = tenancy_pb2.Project(id=request.project_id, customer_id=self.projects[request.project_id], name="p",
                                     encryption_key_id=self.keys.get(request.project_id, ""))
        if self.gate is not None:
            self.read.set()
            await self.gate.wait()
        return answer

    async def GetCustomer(self, request: tenancy_pb2.GetCustomerRequest, context: Any) -> tenancy_pb2.Customer:
        return tenancy_pb2.Customer(id=request.customer_id, reseller_id=self.customers[request.customer_id])


@dataclass
class World:
    jobs: JobsService
    tenancy: FakeTenancy
    a: Principal  # customer A, of reseller R
    b: Principal  # customer B, direct
    r: Principal  # reseller R
    r2: Principal  # another reseller
    project_a: str
    project_a2: str
    project_b: str

    def add_project(self, customer: Principal) -> str:
        pid = str(uuid.uuid4())
        self.tenancy.projects[pid] = customer.customer_id
        return pid


@pytest.fixture(scope="module")
async def world(database_url: str) -> AsyncIterator[World]:
    fake = FakeTenancy()  # type: ignore[abstract]  # a double: only the methods used
    server = grpc.aio.server()
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(fake, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    tenancy = channel(f"127.0.0.1:{port}", service="jobs", secret=b"s" * 32)
    db = Database(to_async_url(database_url), pool_size=3)
    r, r2 = str(uuid.uuid4()), str(uuid.uuid4())
    a = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), reseller_id=r, key_id="ka")
    b = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="kb")
    fake.customers.update({a.customer_id: r, b.customer_id: ""})
    w = World(JobsService(db, Projects(tenancy)), fake, a, b, Principal(kind=principals.RESELLER, reseller_id=r),
              Principal(kind=principals.RESELLER, reseller_id=r2), "", "", "")
    w.project_a, w.project_a2, w.project_b = w.add_project(a), w.add_project(a), w.add_project(b)
    yield w
    await tenancy.close()
    await server.stop(None)
    await db.close()


async def _create(w: World, caller: Principal, project: str, request_id: str = "", **fields: Any) -> Any:
    fields.setdefault("name", f"type-{uuid.uuid4().hex[:8]}")
    return await w.jobs.create_job_type(caller, project, fields, request_id, repr(sorted(fields.items())).encode())


async def test_create_applies_documented_defaults_and_stores_the_owner(world: World) -> None:
    row = await _create(world, world.a, world.project_a, name="resize-image")
    assert (row.name, row.enabled, row.default_priority) == ("resize-image", True, types_pb.PRIORITY_LEVEL_MEDIUM)
    assert row.default_persistence_policy == types_pb.PERSISTENCE_POLICY_STANDARD
    assert row.processor_type == types_pb.PROCESSOR_TYPE_SYNC
    assert (row.retry_max_attempts, row.retry_initial_interval_seconds, row.retry_backoff_multiplier,
            row.retry_max_interval_seconds) == (3, 1, 2.0, 300)
    assert row.timeout_seconds == 300 and row.base_cost_cents == 0
    assert str(row.customer_id) == world.a.customer_id and str(row.reseller_id) == world.r.reseller_id
    assert str(row.project_id) == world.project_a


async def test_explicit_values_are_kept(world: World) -> None:
    row = await _create(world, world.a, world.project_a, enabled=False, default_priority=types_pb.PRIORITY_LEVEL_HIGH,
                        processor_type=types_pb.PROCESSOR_TYPE_BATCH, timeout_seconds=60,
                        required_tags=["gpu", " gpu", "x86"], currency_code="eur",
                        default_retry_policy={"max_attempts": 5, "initial_interval_seconds": 0,
                                              "non_retryable_error_types": ["ValueError"]})
    assert row.enabled is False and row.default_priority == types_pb.PRIORITY_LEVEL_HIGH
    assert row.max_batch_size == 100  # the batch default
    assert row.required_tags == ["gpu", "x86"] and row.currency_code == "EUR"
    # A given policy is taken as given; unset multiplier and maximum interval take their defaults.
    assert (row.retry_max_attempts, row.retry_initial_interval_seconds, row.retry_backoff_multiplier,
            row.retry_max_interval_seconds, row.non_retryable_error_types) == (5, 0, 2.0, 300, ["ValueError"])


BAD = [
    ({"name": ""}, "job_type.name", "INVALID_NAME"),
    ({"name": "x" * 101}, "job_type.name", "INVALID_NAME"),
    ({"name": "has space"}, "job_type.name", "INVALID_NAME"),
    ({"default_priority": 9}, "job_type.default_priority", "INVALID_PRIORITY"),
    ({"default_priority": -1}, "job_type.default_priority", "INVALID_PRIORITY"),
    ({"processor_type": 7}, "job_type.processor_type", "INVALID_PROCESSOR_TYPE"),
    ({"default_persistence_policy": 5}, "job_type.default_persistence_policy", "INVALID_PERSISTENCE_POLICY"),
    ({"default_retry_policy": {"max_attempts": 0}}, "job_type.default_retry_policy.max_attempts",
     "INVALID_RETRY_POLICY"),
    ({"default_retry_policy": {"max_attempts": 3, "backoff_multiplier": 0.5}},
     "job_type.default_retry_policy.backoff_multiplier", "INVALID_RETRY_POLICY"),
    ({"default_retry_policy": {"max_attempts": 3, "initial_interval_seconds": -1}},
     "job_type.default_retry_policy.initial_interval_seconds", "INVALID_RETRY_POLICY"),
    ({"default_retry_policy": {"max_attempts": 3, "initial_interval_seconds": 60, "max_interval_seconds": 10}},
     "job_type.default_retry_policy.max_interval_seconds", "INVALID_RETRY_POLICY"),
    ({"default_retry_policy": {"max_attempts": 3, "non_retryable_error_types": [f"E{i}" for i in range(51)]}},
     "job_type.default_retry_policy.non_retryable_error_types", "INVALID_RETRY_POLICY"),
    ({"base_cost_cents": -1}, "job_type.base_cost_cents", "INVALID_COST"),
    ({"base_cost_cents": 10**12}, "job_type.base_cost_cents", "INVALID_COST"),
    ({"base_cost_cents": 50}, "job_type.base_cost_cents", "PRICE_SET_BY_OPERATOR"),  # the platform fee applies
    ({"max_cost_cents": 10}, "job_type.max_cost_cents", "PRICE_SET_BY_OPERATOR"),
    ({"timeout_seconds": -5}, "job_type.timeout_seconds", "INVALID_TIMEOUT"),
    ({"timeout_seconds": 10**7}, "job_type.timeout_seconds", "INVALID_TIMEOUT"),
    ({"required_tags": [f"t{i}" for i in range(51)]}, "job_type.required_tags", "INVALID_TAGS"),
    ({"required_tags": [""]}, "job_type.required_tags", "INVALID_TAGS"),
    ({"currency_code": "euro"}, "job_type.currency_code", "INVALID_CURRENCY"),
    ({"sensitive_fields": ["card.number"]}, "job_type.sensitive_fields", "INVALID_SENSITIVE_FIELDS"),
    ({"processor_type": types_pb.PROCESSOR_TYPE_EXTERNAL_API}, "job_type.external_api", "EXTERNAL_API_REQUIRED"),
    ({"processor_type": types_pb.PROCESSOR_TYPE_EXTERNAL_API, "external_api": {"url": "http://plain.example"}},
     "job_type.external_api.url", "INVALID_EXTERNAL_API"),
    ({"external_api": {"url": "https://ok.example"}}, "job_type.external_api", "EXTERNAL_API_NOT_ALLOWED"),
    ({"over_capture_policy": 9}, "job_type.over_capture_policy", "INVALID_OVER_CAPTURE_POLICY"),
    ({"description": "d" * 4001}, "job_type.description", "INVALID_DESCRIPTION"),
]


@pytest.mark.parametrize(("fields", "field", "reason"), BAD, ids=[f"{b[1]}:{i}" for i, b in enumerate(BAD)])
async def test_bad_input_names_the_field_and_creates_nothing(world: World, fields: dict, field: str,
                                                             reason: str) -> None:
    before = await world.jobs.list_job_types(ADMIN, world.project_b, 500, "")
    with pytest.raises(InvalidArgument) as caught:
        await _create(world, world.b, world.project_b, **fields)
    assert caught.value.reason == reason
    assert caught.value.violations[0][0] == field
    after = await world.jobs.list_job_types(ADMIN, world.project_b, 500, "")
    assert len(after.items) == len(before.items)


async def test_name_is_unique_per_project_only(world: World) -> None:
    await _create(world, world.a, world.project_a, name="send-email")
    with pytest.raises(AlreadyExists) as caught:
        await _create(world, world.a, world.project_a, name="send-email")
    assert caught.value.reason == "JOB_TYPE_NAME_TAKEN" and caught.value.violations[0][0] == "job_type.name"
    other = await _create(world, world.a, world.project_a2, name="send-email")
    assert str(other.project_id) == world.project_a2


async def test_create_is_idempotent_on_request_id(world: World) -> None:
    fields = {"name": "idem", "description": "seven"}
    first = await world.jobs.create_job_type(world.a, world.project_a, dict(fields), "req-1", b"h1")
    again = await world.jobs.create_job_type(world.a, world.project_a, dict(fields), "req-1", b"h1")
    assert again.id == first.id
    with pytest.raises(InvalidArgument) as caught:
        await world.jobs.create_job_type(world.a, world.project_a, {"name": "idem2"}, "req-1", b"h2")
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_other_tenants_get_not_found_never_permission_denied(world: World) -> None:
    row = await _create(world, world.a, world.project_a)
    tid = str(row.id)
    for outsider in (world.b, world.r2):
        with pytest.raises(NotFound):
            await world.jobs.get_job_type(outsider, tid)
        with pytest.raises(NotFound):
            await world.jobs.update_job_type(outsider, tid, {"description": "mine"})
        with pytest.raises(NotFound):
            await world.jobs.delete_job_type(outsider, tid)
        with pytest.raises(NotFound) as caught:
            await _create(world, outsider, world.project_a)
        assert caught.value.reason == "PROJECT_NOT_FOUND"
        with pytest.raises(NotFound):
            await world.jobs.list_job_types(outsider, world.project_a, 0, "")
        everything = await world.jobs.list_job_types(outsider, "-", 500, "")
        assert all(str(t.customer_id) != world.a.customer_id for t in everything.items)
    # the owner, its reseller and an admin all see it
    for insider in (world.a, world.r, ADMIN):
        assert (await world.jobs.get_job_type(insider, tid)).id == row.id
    assert (await world.jobs.get_job_type(world.a, tid)).description == ""  # the outsiders' update changed nothing
    by_reseller = await world.jobs.list_job_types(world.r, "-", 500, "")
    assert row.id in {t.id for t in by_reseller.items}
    assert {str(t.customer_id) for t in by_reseller.items} == {world.a.customer_id}


async def test_unknown_or_malformed_ids_are_not_found(world: World) -> None:
    with pytest.raises(NotFound) as caught:
        await _create(world, world.a, str(uuid.uuid4()))
    assert caught.value.reason == "PROJECT_NOT_FOUND"
    with pytest.raises(NotFound):
        await _create(world, world.a, "not-a-uuid")
    with pytest.raises(NotFound) as caught:
        await world.jobs.get_job_type(ADMIN, "nope")
    assert caught.value.reason == "JOB_TYPE_NOT_FOUND"


async def test_runner_cannot_manage_job_types(world: World) -> None:
    runner = Principal(kind=principals.RUNNER, customer_id=world.a.customer_id, runner_id="r1")
    with pytest.raises(PermissionDenied):
        await _create(world, runner, world.project_a)


async def test_list_pages_by_create_time_and_filters(world: World) -> None:
    customer = Principal(kind=principals.CUSTOMER, customer_id=str(uuid.uuid4()), key_id="kc")
    world.tenancy.customers[customer.customer_id] = ""
    project = world.add_project(customer)
    made = [await _create(world, customer, project, name=f"t{i}", enabled=i % 2 == 0) for i in range(5)]
    seen, token, pages = [], "", 0
    while True:
        page = await world.jobs.list_job_types(customer, project, 2, token)
        assert len(page.items) <= 2
        seen += [t.id for t in page.items]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [t.id for t in made] and pages == 3
    enabled = await world.jobs.list_job_types(customer, project, 0, "", enabled_only=True)
    assert [t.name for t in enabled.items] == ["t0", "t2", "t4"]
    named = await world.jobs.list_job_types(customer, "-", 0, "", name="t3")
    assert [t.id for t in named.items] == [made[3].id]
    by_customer = await world.jobs.list_job_types(ADMIN, "-", 500, "", customer_id=customer.customer_id)
    assert [t.id for t in by_customer.items] == [t.id for t in made]
    with pytest.raises(InvalidArgument) as caught:
        await world.jobs.list_job_types(customer, project, 2, "garbage")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def _bind(caller: Principal) -> Any:
    return principals.bind(caller)


async def test_update_through_the_servicer_honours_the_mask(world: World) -> None:
    api: Any = servicer(world.jobs)  # called directly, without a gRPC context
    token = _bind(world.a)
    try:
        created = await api.CreateJobType(pb.CreateJobTypeRequest(project_id=world.project_a, job_type=types_pb.JobType(
            name="masked", description="before", default_priority=types_pb.PRIORITY_LEVEL_LOW)),
            None)
        assert created.enabled is True and created.HasField("enabled")
        # only the masked field changes, although the body carries others
        patch = types_pb.JobType(description="after", default_priority=types_pb.PRIORITY_LEVEL_CRITICAL)
        updated = await api.UpdateJobType(pb.UpdateJobTypeRequest(
            job_type_id=created.id, job_type=patch, update_mask=FieldMask(paths=["description"])), None)
        assert updated.description == "after" and updated.default_priority == types_pb.PRIORITY_LEVEL_LOW
        # empty mask: the fields present; `enabled` is optional, so false counts as present
        updated = await api.UpdateJobType(pb.UpdateJobTypeRequest(
            job_type_id=created.id, job_type=types_pb.JobType(enabled=False, timeout_seconds=30)), None)
        assert updated.enabled is False and updated.timeout_seconds == 30 and updated.description == "after"
        # a masked, unset retry policy goes back to the defaults; a bad one is refused
        await api.UpdateJobType(pb.UpdateJobTypeRequest(job_type_id=created.id, job_type=types_pb.JobType(
            default_retry_policy=types_pb.RetryPolicy(max_attempts=9))), None)
        reset = await api.UpdateJobType(pb.UpdateJobTypeRequest(
            job_type_id=created.id, update_mask=FieldMask(paths=["default_retry_policy"])), None)
        assert reset.default_retry_policy.max_attempts == 3
        with pytest.raises(InvalidArgument) as caught:
            await api.UpdateJobType(pb.UpdateJobTypeRequest(job_type_id=created.id, job_type=types_pb.JobType(
                default_retry_policy=types_pb.RetryPolicy(max_attempts=2, backoff_multiplier=0.1))), None)
        assert caught.value.violations[0][0] == "job_type.default_retry_policy.backoff_multiplier"
        with pytest.raises(InvalidArgument) as caught:
            await api.UpdateJobType(pb.UpdateJobTypeRequest(
                job_type_id=created.id, job_type=types_pb.JobType(name="renamed"),
                update_mask=FieldMask(paths=["name"])), None)
        assert caught.value.reason == "FIELD_NOT_UPDATABLE"
        assert (await api.GetJobType(pb.GetJobTypeRequest(job_type_id=created.id), None)).name == "masked"
        # switching to an external API needs its config; leaving it needs the config cleared
        with pytest.raises(InvalidArgument) as caught:
            await api.UpdateJobType(pb.UpdateJobTypeRequest(job_type_id=created.id, job_type=types_pb.JobType(
                processor_type=types_pb.PROCESSOR_TYPE_EXTERNAL_API)), None)
        assert caught.value.reason == "EXTERNAL_API_REQUIRED"
        ext = await api.UpdateJobType(pb.UpdateJobTypeRequest(job_type_id=created.id, job_type=types_pb.JobType(
            processor_type=types_pb.PROCESSOR_TYPE_EXTERNAL_API,
            external_api=types_pb.ExternalApiConfig(url="https://hooks.example/run"))), None)
        assert ext.external_api.http_method == "POST" and ext.external_api.url == "https://hooks.example/run"
        back = await api.UpdateJobType(pb.UpdateJobTypeRequest(
            job_type_id=created.id, job_type=types_pb.JobType(processor_type=types_pb.PROCESSOR_TYPE_SYNC),
            update_mask=FieldMask(paths=["processor_type", "external_api"])), None)
        assert not back.HasField("external_api") and back.processor_type == types_pb.PROCESSOR_TYPE_SYNC
        assert back.update_time.ToDatetime() > back.create_time.ToDatetime()
    finally:
        principals.reset(token)


async def test_delete_removes_the_type_and_frees_the_name(world: World) -> None:
    row = await _create(world, world.a, world.project_a, name="short-lived")
    await world.jobs.delete_job_type(world.r, str(row.id))
    with pytest.raises(NotFound):
        await world.jobs.get_job_type(world.a, str(row.id))
    with pytest.raises(NotFound):
        await world.jobs.delete_job_type(world.a, str(row.id))
    again = await _create(world, world.a, world.project_a, name="short-lived")
    assert again.id != row.id


async def test_project_owner_is_cached_and_tenancy_down_is_not_not_found(world: World) -> None:
    lookups = Projects(channel(f"127.0.0.1:{free_port()}", service="jobs", secret=b"s" * 32), call_timeout=1.0)
    with pytest.raises(Unavailable):  # nobody listens: an error the caller sees, never "not found"
        await lookups(uuid.UUID(world.project_b))
    before = world.tenancy.calls
    pid = uuid.UUID(world.add_project(world.b))
    await _create(world, world.b, str(pid))
    await _create(world, world.b, str(pid))
    assert world.tenancy.calls - before == 1


async def test_a_fresh_lookup_sees_a_key_set_a_moment_ago_and_concurrent_ones_share_a_call(world: World) -> None:
    """A submit right after the customer turns encryption on must see the key (a cached "no key"
    would store the plaintext); concurrent submits still make one call to tenancy."""
    lookups = world.jobs._projects
    pid = uuid.UUID(world.add_project(world.a))
    assert (await lookups(pid, False)).encryption_key_id == ""  # type: ignore[union-attr]
    world.tenancy.keys[str(pid)] = "key-1"
    assert (await lookups(pid, False)).encryption_key_id == ""  # type: ignore[union-attr]  # cached read
    before = world.tenancy.calls
    owners = await asyncio.gather(*(lookups(pid, True) for _ in range(20)))
    assert {o.encryption_key_id for o in owners if o is not None} == {"key-1"}
    assert world.tenancy.calls - before == 1

    # Who arrives while a call is under way is answered by the next call (the one under way may
    # have read the project before the change), and all such late arrivals share that one.
    world.tenancy.gate = gate = asyncio.Event()
    first = asyncio.ensure_future(lookups(pid, True))
    await asyncio.wait_for(world.tenancy.read.wait(), 5)  # tenancy has read the project for the first call
    world.tenancy.keys[str(pid)] = "key-2"
    late = [asyncio.ensure_future(lookups(pid, True)) for _ in range(10)]
    await asyncio.sleep(0.05)
    gate.set()
    assert (await first).encryption_key_id == "key-1"  # type: ignore[union-attr]
    assert {o.encryption_key_id for o in await asyncio.gather(*late) if o is not None} == {"key-2"}
    assert world.tenancy.calls - before == 3
    world.tenancy.gate = None


async def test_malformed_text_is_400_naming_the_field_never_500(world: World) -> None:
    """Issue 14, items 2 and 19: a request id the table cannot hold (over 200 characters, a NUL) or
    text with a NUL is a 400 naming the field, and nothing is created."""
    api: Any = servicer(world.jobs)
    token = _bind(world.a)
    try:
        for request_id, reason in (("r" * 201, "INVALID_REQUEST_ID"), ("r\u0000", "INVALID_CHARACTER")):
            with pytest.raises(InvalidArgument) as caught:
                await api.CreateJobType(pb.CreateJobTypeRequest(
                    project_id=world.project_a, request_id=request_id, job_type=types_pb.JobType(name="long-id")), None)
            assert caught.value.violations[0][0] == "request_id" and caught.value.reason == reason
        with pytest.raises(InvalidArgument) as caught:
            await api.CreateJobType(pb.CreateJobTypeRequest(project_id=world.project_a, job_type=types_pb.JobType(
                name="nul-text", description="a\u0000b")), None)
        assert caught.value.violations[0][0] == "job_type.description"
        with pytest.raises(InvalidArgument) as caught:
            await api.ListJobTypes(pb.ListJobTypesRequest(project_id=world.project_a, name="x\u0000"), None)
        assert caught.value.violations[0][0] == "name"
        names = [t.name for t in (await api.ListJobTypes(pb.ListJobTypesRequest(project_id=world.project_a),
                                                         None)).job_types]
        assert "long-id" not in names and "nul-text" not in names
    finally:
        principals.reset(token)


async def test_renaming_onto_a_taken_name_is_already_exists(world: World) -> None:
    """Issue 14, item 19: a rename onto another type's name is 409 naming the field, not a unique-index 500."""
    first = await _create(world, world.a, world.project_a, name="taken-name")
    second = await _create(world, world.a, world.project_a, name="free-name")
    with pytest.raises(AlreadyExists) as caught:
        await world.jobs.update_job_type(world.a, str(second.id), {"name": "taken-name"})
    assert caught.value.reason == "JOB_TYPE_NAME_TAKEN" and caught.value.violations[0][0] == "job_type.name"
    assert (await world.jobs.get_job_type(world.a, str(second.id))).name == "free-name"
    renamed = await world.jobs.update_job_type(world.a, str(second.id), {"name": "new-name"})
    assert renamed.name == "new-name" and (await world.jobs.get_job_type(world.a, str(first.id))).name == "taken-name"
