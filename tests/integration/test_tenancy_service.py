"""Tenancy use cases against the real embedded PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy.service import TenancyService

ADMIN = Principal(kind=principals.ADMIN, key_id="admin-key")


@pytest.fixture(scope="module")
async def tenancy(database_url: str) -> AsyncIterator[TenancyService]:
    db = Database(to_async_url(database_url), pool_size=2)
    yield TenancyService(db, b"pepper" * 6)
    await db.close()


async def _reseller(svc: TenancyService, name: str = "Resell") -> tuple[str, Principal]:
    created = await svc.create_reseller(ADMIN, {"name": name, "email": "r@example.com", "commission_rate_bps": 500,
                                               "active": True}, "", b"")
    return str(created.row.id), await svc.authenticate(created.api_key)


async def _customer(svc: TenancyService, caller: Principal, name: str = "Cust") -> tuple[str, Principal, str]:
    created = await svc.create_customer(caller, {"name": name, "email": "c@example.com", "active": True}, "", b"")
    return str(created.row.id), await svc.authenticate(created.api_key), created.api_key


async def test_api_key_is_stored_only_as_keyed_hash(tenancy: TenancyService, database_url: str) -> None:
    import psycopg

    _, _, key = await _customer(tenancy, ADMIN)
    assert key.startswith("isk_") and len(key) > 40
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT key_hash, prefix FROM tenancy.api_keys").fetchall()
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM tenancy.api_keys t").fetchone()
    assert any(bytes(h) == tenancy.hash_key(key) for h, _ in rows)
    assert key not in (dump[0] or "")
    assert key[4:] not in (dump[0] or "")


async def test_reseller_sees_only_its_customers(tenancy: TenancyService) -> None:
    _, r1 = await _reseller(tenancy, "R1")
    _, r2 = await _reseller(tenancy, "R2")
    c1, _, _ = await _customer(tenancy, r1, "of r1")
    assert (await tenancy.get_customer(r1, c1)).name == "of r1"
    with pytest.raises(NotFound):
        await tenancy.get_customer(r2, c1)
    listed = await tenancy.list_customers(r2, 0, "", "")
    assert all(str(c.reseller_id) == r2.reseller_id for c in listed.items)


async def test_customer_sees_only_itself_and_its_projects(tenancy: TenancyService) -> None:
    a, pa, _ = await _customer(tenancy, ADMIN, "A")
    b, pb_, _ = await _customer(tenancy, ADMIN, "B")
    project = await tenancy.create_project(pa, a, {"name": "pa", "tags": ["x", "x", "y"]}, "", b"")
    assert project.tags == ["x", "y"]
    assert (await tenancy.get_project(pa, str(project.id))).name == "pa"
    with pytest.raises(NotFound):
        await tenancy.get_project(pb_, str(project.id))
    with pytest.raises(NotFound):
        await tenancy.get_customer(pb_, a)
    with pytest.raises(NotFound):
        await tenancy.create_project(pb_, a, {"name": "intruder"}, "", b"")
    with pytest.raises(NotFound):  # malformed ids are simply not found
        await tenancy.get_project(pa, "not-a-uuid")
    assert [c.id for c in (await tenancy.list_customers(pb_, 0, "", "")).items] == [__import__("uuid").UUID(b)]


async def test_create_is_idempotent_on_request_id(tenancy: TenancyService) -> None:
    fields = {"name": "Idem", "email": "i@example.com", "active": True}
    first = await tenancy.create_customer(ADMIN, dict(fields), "req-1", b"h1")
    again = await tenancy.create_customer(ADMIN, dict(fields), "req-1", b"h1")
    assert again.row.id == first.row.id and first.api_key and again.api_key == ""
    with pytest.raises(InvalidArgument) as err:
        await tenancy.create_customer(ADMIN, dict(fields), "req-1", b"different body")
    assert err.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_request_ids_belong_to_the_account_not_the_key(tenancy: TenancyService) -> None:
    rid, reseller = await _reseller(tenancy, "Keyed")
    fields = {"name": "Once", "email": "o@example.com", "active": True}
    first = await tenancy.create_customer(reseller, dict(fields), "req-acct", b"h")
    rotated = await tenancy.authenticate(await tenancy.rotate_reseller_key(reseller, rid))
    assert rotated.key_id != reseller.key_id
    again = await tenancy.create_customer(rotated, dict(fields), "req-acct", b"h")
    assert again.row.id == first.row.id and again.api_key == ""
    other_admin = Principal(kind=principals.ADMIN, key_id="another-admin-key")
    made = await tenancy.create_reseller(ADMIN, {"name": "Twice?", "email": "t@example.com"}, "req-admin", b"h")
    assert (await tenancy.create_reseller(other_admin, {"name": "Twice?", "email": "t@example.com"},
                                          "req-admin", b"h")).row.id == made.row.id


async def test_delete_customer_with_projects_needs_force(tenancy: TenancyService) -> None:
    cid, caller, _ = await _customer(tenancy, ADMIN)
    await tenancy.create_project(caller, cid, {"name": "p"}, "", b"")
    with pytest.raises(FailedPrecondition) as err:
        await tenancy.delete_customer(ADMIN, cid, force=False)
    assert err.value.reason == "CUSTOMER_HAS_PROJECTS"
    assert (await tenancy.get_customer(ADMIN, cid)) is not None
    await tenancy.delete_customer(ADMIN, cid, force=True)
    with pytest.raises(NotFound):
        await tenancy.get_customer(ADMIN, cid)


async def test_rotation_revokes_the_old_key(tenancy: TenancyService) -> None:
    cid, caller, old = await _customer(tenancy, ADMIN)
    new = await tenancy.rotate_customer_key(caller, cid)
    with pytest.raises(Unauthenticated):
        await tenancy.authenticate(old)
    assert (await tenancy.authenticate(new)).customer_id == cid


async def test_inactive_customer_cannot_authenticate(tenancy: TenancyService) -> None:
    cid, _, key = await _customer(tenancy, ADMIN)
    await tenancy.update_customer(ADMIN, cid, {"active": False})
    with pytest.raises(Unauthenticated) as err:
        await tenancy.authenticate(key)
    assert err.value.reason == "ACCOUNT_INACTIVE"


async def test_customer_cannot_create_customers_or_reactivate_itself(tenancy: TenancyService) -> None:
    cid, caller, _ = await _customer(tenancy, ADMIN)
    with pytest.raises(PermissionDenied):
        await tenancy.create_customer(caller, {"name": "x", "email": "x@example.com"}, "", b"")
    with pytest.raises(PermissionDenied):
        await tenancy.update_customer(caller, cid, {"active": True})


async def test_bad_fields_are_named(tenancy: TenancyService) -> None:
    with pytest.raises(InvalidArgument) as err:
        await tenancy.create_reseller(ADMIN, {"name": "r", "email": "r@example.com", "commission_rate_bps": 10001},
                                      "", b"")
    assert err.value.violations[0][0] == "commission_rate_bps"
    with pytest.raises(InvalidArgument) as err:
        await tenancy.create_customer(ADMIN, {"name": "c", "email": "not-an-email"}, "", b"")
    assert err.value.violations[0][0] == "email"


async def test_list_pages_cover_everything_once(tenancy: TenancyService) -> None:
    _, reseller = await _reseller(tenancy, "Pager")
    made = {(await _customer(tenancy, reseller, f"p{i}"))[0] for i in range(7)}
    seen: list[str] = []
    token = ""
    while True:
        page = await tenancy.list_customers(reseller, 3, token, "")
        seen += [str(c.id) for c in page.items]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(made)


async def test_admin_bootstrap_key_replaces_the_previous_one(tenancy: TenancyService) -> None:
    await tenancy.ensure_admin_key("isk_admin_first_key_123")
    await tenancy.ensure_admin_key("isk_admin_first_key_123")  # idempotent
    assert (await tenancy.authenticate("isk_admin_first_key_123")).kind == principals.ADMIN
    await tenancy.ensure_admin_key("isk_admin_second_key_45")
    with pytest.raises(Unauthenticated):
        await tenancy.authenticate("isk_admin_first_key_123")


def _audit_rows(database_url: str, customer_id: str) -> list[tuple[str, int, str]]:
    """The customer's break-glass audit events (every administrative action is recorded too)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        return [(a, k, d) for a, k, d in conn.execute(
            "SELECT action, actor_kind, detail FROM tenancy.audit_events WHERE customer_id = %s"
            " AND action IN ('RotateCustomerApiKey', 'SetProjectEncryptionKey') ORDER BY create_time",
            (customer_id,)).fetchall()]


async def test_a_reseller_cannot_take_its_customers_credentials(tenancy: TenancyService, database_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    _, reseller = await _reseller(tenancy, "Curious")
    _, stranger = await _reseller(tenancy, "Stranger")
    cid, _, key = await _customer(tenancy, reseller, "Guarded")
    with pytest.raises(PermissionDenied) as err:  # it sees the customer: a 403 that says who may
        await tenancy.rotate_customer_key(reseller, cid)
    assert err.value.reason == "CUSTOMER_ONLY"
    with pytest.raises(NotFound):  # another reseller does not even see it
        await tenancy.rotate_customer_key(stranger, cid)
    assert (await tenancy.authenticate(key)).customer_id == cid  # nothing changed
    assert _audit_rows(database_url, cid) == []

    with caplog.at_level("WARNING", logger="services.tenancy.service"):
        issued = await tenancy.rotate_customer_key(ADMIN, cid)  # break-glass
    assert (await tenancy.authenticate(issued)).customer_id == cid
    assert _audit_rows(database_url, cid) == [("RotateCustomerApiKey", principals.ADMIN, "")]
    logged = [r for r in caplog.records if getattr(r, "audit", "") == "break_glass"]
    assert len(logged) == 1 and logged[0].action == "RotateCustomerApiKey" and logged[0].customer_id == cid  # type: ignore[attr-defined]
    assert logged[0].actor_key_id == ADMIN.key_id  # type: ignore[attr-defined]


async def test_only_the_customer_sets_or_clears_a_projects_encryption_key(tenancy: TenancyService,
                                                                         database_url: str) -> None:
    _, reseller = await _reseller(tenancy, "Meddler")
    cid, customer, _ = await _customer(tenancy, reseller, "Keeper")
    key_id = "5b0c8f5e-0000-4000-8000-000000000001"
    project = await tenancy.create_project(customer, cid, {"name": "secret", "encryption_key_id": key_id}, "", b"")
    pid = str(project.id)
    for change in ({"encryption_key_id": None}, {"encryption_key_id": "5b0c8f5e-0000-4000-8000-000000000002"}):
        with pytest.raises(PermissionDenied) as err:
            await tenancy.update_project(reseller, pid, dict(change))
        assert err.value.reason == "CUSTOMER_ONLY" and err.value.violations[0][0] == "project.encryption_key_id"
    with pytest.raises(PermissionDenied):
        await tenancy.create_project(reseller, cid, {"name": "mine", "encryption_key_id": key_id}, "", b"")
    assert (await tenancy.get_project(customer, pid)).encryption_key_id == key_id  # unchanged
    # its other fields, and the key it already has named again, the reseller may still send
    renamed = await tenancy.update_project(reseller, pid, {"name": "renamed", "encryption_key_id": key_id})
    assert renamed.name == "renamed" and renamed.encryption_key_id == key_id
    assert (await tenancy.update_project(customer, pid, {"encryption_key_id": None})).encryption_key_id is None
    assert _audit_rows(database_url, cid) == []
    await tenancy.update_project(ADMIN, pid, {"encryption_key_id": key_id})  # break-glass
    assert _audit_rows(database_url, cid) == [("SetProjectEncryptionKey", principals.ADMIN,
                                               f"encryption_key_id (none) -> {key_id}")]


async def test_audit_events_are_append_only(tenancy: TenancyService, database_url: str) -> None:
    import psycopg

    cid, _, _ = await _customer(tenancy, ADMIN, "Audited")
    await tenancy.rotate_customer_key(ADMIN, cid)
    with psycopg.connect(database_url) as conn:
        for statement in ("UPDATE tenancy.audit_events SET detail = 'edited' WHERE customer_id = %s",
                          "DELETE FROM tenancy.audit_events WHERE customer_id = %s"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement, (cid,))
            conn.rollback()
    assert len(_audit_rows(database_url, cid)) == 1


async def test_a_nul_character_is_refused_naming_the_field(tenancy: TenancyService) -> None:
    """Found by schemathesis: an e-mail holding a NUL passed the e-mail rule and failed the insert (a 500)."""
    for fields, bad in (({"name": "Nul", "email": "a\x00b@example.com"}, "email"),
                        ({"name": "N\x00ul", "email": "nul@example.com"}, "name")):
        with pytest.raises(InvalidArgument) as caught:
            await tenancy.create_reseller(ADMIN, fields, "", b"")
        assert caught.value.reason == "INVALID_CHARACTER" and caught.value.violations[0][0] == bad
