"""Issue 14, item 11: projects per customer are capped (real embedded PostgreSQL). A create past the
cap is RESOURCE_EXHAUSTED / QUOTA_EXCEEDED naming its setting, and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.errors import ResourceExhausted
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy.service import TenancyService

ADMIN = Principal(kind=principals.ADMIN, key_id="admin-key")
CAP = 3


@pytest.fixture(scope="module")
async def tenancy(database_url: str) -> AsyncIterator[TenancyService]:
    db = Database(to_async_url(database_url), pool_size=4)
    yield TenancyService(db, b"pepper" * 6, max_projects=CAP)
    await db.close()


async def customer(svc: TenancyService) -> tuple[str, Principal]:
    created = await svc.create_customer(ADMIN, {"name": "Cust", "email": "c@example.com", "active": True}, "", b"")
    return str(created.row.id), await svc.authenticate(created.api_key)


async def count(svc: TenancyService, cid: str, caller: Principal) -> int:
    return len((await svc.list_projects(caller, cid, 100, "")).items)


async def test_projects_are_capped_per_customer(tenancy: TenancyService) -> None:
    cid, me = await customer(tenancy)
    other_id, other = await customer(tenancy)
    for i in range(CAP):
        await tenancy.create_project(me, cid, {"name": f"p{i}"}, f"req-{i}", f"h{i}".encode())
    with pytest.raises(ResourceExhausted) as refused:
        await tenancy.create_project(me, cid, {"name": "one too many"}, "", b"")
    err = refused.value
    assert err.reason == "QUOTA_EXCEEDED" and "INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER" in err.message
    assert err.metadata == {"resource": "projects", "limit": str(CAP),
                            "setting": "INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER"}
    assert await count(tenancy, cid, me) == CAP  # nothing was created
    # A repeat of an earlier create still gets its first answer at the cap.
    again = await tenancy.create_project(me, cid, {"name": "p0"}, "req-0", b"h0")
    assert again.name == "p0" and await count(tenancy, cid, me) == CAP
    await tenancy.create_project(other, other_id, {"name": "theirs"}, "", b"")  # another customer's count
    first = (await tenancy.list_projects(me, cid, 1, "")).items[0]
    await tenancy.delete_project(me, str(first.id))
    await tenancy.create_project(me, cid, {"name": "after a delete"}, "", b"")


async def test_concurrent_creates_cannot_pass_the_cap_together(tenancy: TenancyService) -> None:
    cid, me = await customer(tenancy)
    results = await asyncio.gather(*(tenancy.create_project(me, cid, {"name": f"p{i}"}, "", b"") for i in range(8)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == CAP
    assert all(isinstance(r, ResourceExhausted) for r in results if isinstance(r, BaseException))
    assert await count(tenancy, cid, me) == CAP
