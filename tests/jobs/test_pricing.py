"""Catalog types, price versions and price models, through the jobs service with real billing,
PostgreSQL and Valkey (jobs_world.py): who may price what, what a submit holds, what a capture
charges, and that bad prices change nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from innosystem.embedded import EmbeddedValkey
from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.kit import principal as principals
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.wallets import Wallets
from tests.billing.billing_helpers import ADMIN as BILLING_ADMIN
from tests.jobs.jobs_world import ADMIN, JobsWorld, make_world

FEE = 3  # the operator's platform fee per job of a customer's own type in this module


@pytest.fixture(scope="module")
async def world(database_url: str, valkey_server: EmbeddedValkey) -> AsyncIterator[JobsWorld]:
    async for w in make_world(database_url, valkey_server.url, platform_fee_cents=FEE):
        yield w


async def test_only_the_operator_creates_and_changes_catalog_types_and_everyone_sees_them(world: JobsWorld) -> None:
    c = await world.customer()
    with pytest.raises(PermissionDenied) as refused:
        await world.app.types.create_catalog_job_type(c.principal, {"name": "mine-now"}, "", b"")
    assert refused.value.reason == "CATALOG_ADMIN_ONLY"
    jt = await world.job_type(c, name="catalog-ocr")
    assert jt.catalog and jt.project_id is None and jt.customer_id is None
    assert (await world.app.types.get_job_type(c.principal, str(jt.id))).id == jt.id  # every customer reads it
    listed = await world.app.types.list_catalog_job_types(50, "", name="catalog-ocr")
    assert [t.id for t in listed.items] == [jt.id]
    for change in (world.app.types.update_job_type(c.principal, str(jt.id), {"description": "mine"}),
                   world.app.types.delete_job_type(c.principal, str(jt.id)),
                   world.app.types.add_price(c.principal, str(jt.id), {"currency_code": "USD",
                                                                        "unit_price_cents": 0})):
        with pytest.raises(PermissionDenied) as caught:
            await change
        assert caught.value.reason == "CATALOG_ADMIN_ONLY"
    assert (await world.app.types.get_job_type(ADMIN, str(jt.id))).description == ""


async def test_a_customers_own_type_costs_the_platform_fee_and_carries_no_price(world: JobsWorld) -> None:
    c = await world.customer(funds=100)
    with pytest.raises(InvalidArgument) as caught:
        await world.job_type(c, own=True, base_cost_cents=50)
    assert caught.value.reason == "PRICE_SET_BY_OPERATOR"
    assert caught.value.violations[0][0] == "job_type.base_cost_cents"
    own = await world.job_type(c, own=True)
    with pytest.raises(FailedPrecondition) as unpriced:
        await world.app.types.add_price(ADMIN, str(own.id), {"currency_code": "USD", "unit_price_cents": 1})
    assert unpriced.value.reason == "NOT_A_CATALOG_TYPE"
    job = await world.submit(c, own)
    assert job.estimated_cost_cents == FEE and job.settings["price"]["id"] == ""
    assert await world.available(c) == 100 - FEE
    (lease,) = await world.lease([own.name], customer_id=c.principal.customer_id)
    await world.complete(lease, actual_cost_cents=90)  # the runner's word changes nothing
    assert (await world.get(str(job.id))).cost_cents == FEE and await world.available(c) == 100 - FEE


async def test_a_job_settles_at_the_price_version_it_was_submitted_under(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, price=10)
    first = await world.submit(c, jt)
    world.clock.advance(1)
    later = world.clock.t + 60
    v2 = await world.app.types.add_price(ADMIN, str(jt.id), {
        "currency_code": "USD", "unit_price_cents": 25, "effective_time": _at(later)})
    second = await world.submit(c, jt)  # v2 is not in force yet
    world.clock.advance(61)
    third = await world.submit(c, jt)
    assert (first.estimated_cost_cents, second.estimated_cost_cents, third.estimated_cost_cents) == (10, 10, 25)
    assert third.settings["price"]["id"] == str(v2.id) != first.settings["price"]["id"]
    leases = await world.lease([jt.name], max_jobs=5)
    assert len(leases) == 3
    for lease in leases:
        await world.complete(lease)
    costs = [(await world.get(str(j.id))).cost_cents for j in (first, second, third)]
    assert costs == [10, 10, 25] and await world.available(c) == 1000 - 45
    assert (await world.get(str(third.id))).price_id == str(v2.id)
    versions = await world.app.types.list_prices(c.principal, str(jt.id), "USD")
    assert [v.unit_price_cents for v in versions] == [25, 10]  # newest effective time first


async def test_per_second_holds_the_cap_and_charges_the_run_time_the_platform_measured(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, model=types_pb.PRICE_MODEL_PER_SECOND, price=4, cap=30)
    job = await world.submit(c, jt)
    assert job.estimated_cost_cents == 30 and await world.available(c) == 970
    (lease,) = await world.lease([jt.name])
    world.clock.advance(2.5)  # lease start → result: three started seconds
    done = await world.complete(lease, duration_ms=1)  # the runner's own measure is not what counts
    assert done.status == types_pb.JOB_STATUS_SUCCEEDED
    assert (await world.get(str(job.id))).cost_cents == 12 and await world.available(c) == 1000 - 12
    long = await world.submit(c, jt)
    (lease,) = await world.lease([jt.name])
    world.clock.advance(20)  # within the lease; 20 s at 4 cents would be 80
    await world.complete(lease)
    assert (await world.get(str(long.id))).cost_cents == 30  # at most the cap, which the hold covered
    assert await world.available(c) == 1000 - 42


async def test_per_unit_charges_the_reported_units_up_to_the_cap(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)
    jt = await world.job_type(c, model=types_pb.PRICE_MODEL_PER_UNIT, price=2, cap=50)
    charged = []
    for units in (7, 1000, None):
        job = await world.submit(c, jt)
        (lease,) = await world.lease([jt.name])
        await world.complete(lease, **({"units": units} if units is not None else {}))
        charged.append((await world.get(str(job.id))).cost_cents)
    assert charged == [14, 50, 0] and await world.available(c) == 1000 - 64


async def test_no_price_in_the_currency_refuses_the_submit_and_holds_nothing(world: JobsWorld) -> None:
    c = await world.customer(funds=100)
    jt = await world.app.types.create_catalog_job_type(ADMIN, {"name": "unpriced-yet"}, "", b"")
    await world.app.types.add_price(ADMIN, str(jt.id), {"currency_code": "EUR", "unit_price_cents": 5})
    with pytest.raises(FailedPrecondition) as caught:
        await world.submit(c, jt)
    assert caught.value.reason == "PRICE_NOT_FOUND" and caught.value.violations[0][0] == "job_type_id"
    assert await world.available(c) == 100


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({"currency_code": "USD", "unit_price_cents": -1}, "price.unit_price_cents", "INVALID_PRICE"),
    ({"currency_code": "USD", "unit_price_cents": 2**62}, "price.unit_price_cents", "INVALID_PRICE"),
    ({"currency_code": "XYZ", "unit_price_cents": 1}, "price.currency_code", "UNKNOWN_CURRENCY"),
    ({"currency_code": "usd1", "unit_price_cents": 1}, "price.currency_code", "INVALID_CURRENCY"),
    ({"currency_code": "USD", "model": types_pb.PRICE_MODEL_PER_SECOND, "unit_price_cents": 9, "cap_cents": 8},
     "price.cap_cents", "CAP_BELOW_UNIT_PRICE"),
    ({"currency_code": "USD", "model": 7, "unit_price_cents": 1}, "price.model", "INVALID_PRICE_MODEL"),
])
async def test_bad_prices_are_refused_naming_the_field_and_change_nothing(world: JobsWorld, fields: dict,
                                                                          field: str, reason: str) -> None:
    c = await world.customer()
    jt = await world.job_type(c, price=5)
    with pytest.raises(InvalidArgument) as caught:
        await world.app.types.add_price(ADMIN, str(jt.id), fields)
    assert caught.value.reason == reason and caught.value.violations[0][0] == field
    assert [v.unit_price_cents for v in await world.app.types.list_prices(ADMIN, str(jt.id), "")] == [5]


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def test_a_resellers_markup_applies_to_its_customers_catalog_prices_from_the_next_submit(
        world: JobsWorld) -> None:
    reseller = str(uuid.uuid4())
    c, other = await world.customer(funds=1000), await world.customer(funds=1000)
    world.tenancy.customers[c.principal.customer_id] = reseller
    as_reseller = Principal(kind=principals.RESELLER, reseller_id=reseller, key_id="r")
    markups = world.app.cases.markups
    flat = await world.job_type(c, price=10)
    metered = await world.job_type(c, model=types_pb.PRICE_MODEL_PER_UNIT, price=3, cap=31)
    before = await world.submit(c, flat)
    with pytest.raises(PermissionDenied) as own:  # the customer reads its markup but does not set it
        await markups.update(c.principal, c.principal.customer_id, -5000)
    assert own.value.reason == "MARKUP_RESELLER_ONLY"
    with pytest.raises(NotFound):  # another reseller's customer is not found
        await markups.update(as_reseller, other.principal.customer_id, 1500)
    for bad in (-10_001, 100_001):
        with pytest.raises(InvalidArgument) as caught:
            await markups.update(as_reseller, c.principal.customer_id, bad)
        assert caught.value.reason == "INVALID_MARKUP" and caught.value.violations[0][0] == "price_markup.markup_bps"
    assert (await markups.get(c.principal, c.principal.customer_id)).markup_bps == 0  # nothing changed

    assert (await markups.update(as_reseller, c.principal.customer_id, 1500)).markup_bps == 1500  # +15 %
    assert (await markups.get(c.principal, c.principal.customer_id)).markup_bps == 1500
    marked = await world.submit(c, flat)
    unit = await world.submit(c, metered)
    untouched = await world.submit(other, flat)  # another customer pays the catalog price
    assert [j.estimated_cost_cents for j in (before, marked, unit, untouched)] == [10, 11, 35, 10]  # 11.5 → 11
    leases = {x.job_id: x for x in await world.lease([flat.name, metered.name], max_jobs=10)}
    for job in (before, marked, untouched):
        await world.complete(leases[str(job.id)])
    await world.complete(leases[str(unit.id)], units=4)  # the marked up unit, 3.45, rounds down to 3: 12
    costs = [(await world.get(str(j.id))).cost_cents for j in (before, marked, unit, untouched)]
    assert costs == [10, 11, 12, 10]
    assert await world.available(c) == 1000 - 33 and await world.available(other) == 1000 - 10

    await markups.update(as_reseller, c.principal.customer_id, -10_000)  # a full discount: free, nothing held
    free = await world.submit(c, flat)
    assert free.estimated_cost_cents == 0 and free.hold_id == ""


async def test_a_project_billed_in_euros_holds_and_charges_its_jobs_from_the_euro_wallet(world: JobsWorld) -> None:
    c = await world.customer(funds=1000)  # USD
    cid = c.principal.customer_id
    await Wallets(world.billing).create(BILLING_ADMIN, cid, "EUR")
    await world.billing.top_up(BILLING_ADMIN, cid, 500, "EUR", f"eur-{cid}", "")
    jt = await world.job_type(c, price=10)  # USD only, so far
    world.tenancy.currencies[c.project_id] = "EUR"
    with pytest.raises(FailedPrecondition) as unpriced:
        await world.submit(c, jt)
    assert unpriced.value.reason == "PRICE_NOT_FOUND" and unpriced.value.metadata["currency_code"] == "EUR"
    await world.app.types.add_price(ADMIN, str(jt.id), {"currency_code": "EUR", "unit_price_cents": 9})
    job = await world.submit(c, jt)
    assert (job.currency_code, job.estimated_cost_cents) == ("EUR", 9)
    (lease,) = await world.lease([jt.name])
    await world.complete(lease)
    done = await world.get(str(job.id))
    assert (done.cost_cents, done.currency_code) == (9, "EUR")
    eur = await world.billing.get_wallet(BILLING_ADMIN, cid, "EUR")
    assert int(eur.balance - eur.held) == 491 and await world.available(c) == 1000  # the USD wallet untouched

    world.tenancy.currencies[c.project_id] = "GBP"  # no GBP wallet: refused, nothing held anywhere
    await world.app.types.add_price(ADMIN, str(jt.id), {"currency_code": "GBP", "unit_price_cents": 8})
    with pytest.raises(FailedPrecondition):
        await world.submit(c, jt)
    assert await world.available(c) == 1000
