"""A project's billing currency (tenancy, real PostgreSQL): set on create or update, upper-cased,
checked against ISO 4217, and a bad value changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database
from innosystem.kit.errors import InvalidArgument
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy.service import TenancyService

ADMIN = Principal(kind=principals.ADMIN, key_id="admin-key")


@pytest.fixture(scope="module")
async def tenancy(database_url: str) -> AsyncIterator[TenancyService]:
    db = Database(to_async_url(database_url), pool_size=2)
    yield TenancyService(db, b"pepper" * 6)
    await db.close()


async def test_a_projects_billing_currency_is_an_active_iso_code_or_empty(tenancy: TenancyService) -> None:
    created = await tenancy.create_customer(ADMIN, {"name": "Euro Co", "email": "e@example.com", "active": True},
                                            "", b"")
    cid, me = str(created.row.id), await tenancy.authenticate(created.api_key)
    default = await tenancy.create_project(me, cid, {"name": "plain"}, "", b"")
    assert default.billing_currency_code == ""  # the platform's default currency
    euro = await tenancy.create_project(me, cid, {"name": "euro", "billing_currency_code": "eur"}, "", b"")
    assert euro.billing_currency_code == "EUR"
    for bad, reason in (("EURO", "INVALID_CURRENCY"), ("E1R", "INVALID_CURRENCY"), ("XYZ", "UNKNOWN_CURRENCY")):
        with pytest.raises(InvalidArgument) as caught:
            await tenancy.update_project(me, str(euro.id), {"billing_currency_code": bad})
        assert caught.value.reason == reason and caught.value.violations[0][0] == "project.billing_currency_code"
    assert (await tenancy.get_project(me, str(euro.id))).billing_currency_code == "EUR"  # unchanged
    changed = await tenancy.update_project(me, str(euro.id), {"billing_currency_code": "SEK"})
    assert changed.billing_currency_code == "SEK"
    assert (await tenancy.update_project(me, str(euro.id), {"billing_currency_code": ""})).billing_currency_code == ""
