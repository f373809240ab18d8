"""Values PostgreSQL cannot store are refused at the billing API, before the group commit that
many tenants' top-ups share (issue 14, item 2)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.kit.errors import InvalidArgument
from services.billing.api import BillingApi
from services.billing.service import BillingService
from tests.billing.billing_helpers import ADMIN, funded_wallet, wallet


async def test_a_nul_in_a_top_up_is_refused_and_fails_no_other_top_up(billing: BillingService) -> None:
    api = BillingApi(billing)
    customers = [str(uuid.uuid4()) for _ in range(31)]
    for c in customers:
        await billing.open_wallet(c, "", "USD", 0)
    bad, good = customers[0], customers[1:]

    async def top_up(customer: str, description: str, request_id: str) -> Any:
        token = principals.bind(ADMIN)
        try:
            return await api.TopUpWallet(pb.TopUpWalletRequest(
                customer_id=customer, amount_cents=100, request_id=request_id, description=description), None)
        finally:
            principals.reset(token)

    calls = [top_up(c, f"top-up {i}", f"r-{c}") for i, c in enumerate(good)]
    calls[5:5] = [top_up(bad, "bonus\u0000", "nul-1"), top_up(bad, "ok", "nul\u00002")]
    calls.append(top_up(bad, "a\u0000", "nul-3"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 3 and all(isinstance(r, InvalidArgument) for r in refused), refused
    assert sorted(r.violations[0][0] for r in refused if isinstance(r, InvalidArgument)) == \
        ["description", "description", "request_id"]
    assert {r.reason for r in refused if isinstance(r, InvalidArgument)} == {"INVALID_CHARACTER"}
    assert (await wallet(billing, bad)).balance == 0
    for c in good:
        assert (await wallet(billing, c)).balance == 100


@pytest.mark.parametrize("field", ["description", "request_id"])
async def test_top_up_names_the_field_with_the_nul(billing: BillingService, field: str) -> None:
    api = BillingApi(billing)
    customer = str(uuid.uuid4())
    await billing.open_wallet(customer, "", "USD", 0)
    values = {"description": "d", "request_id": "r", field: "x\u0000y"}
    token = principals.bind(ADMIN)
    try:
        with pytest.raises(InvalidArgument) as caught:
            await api.TopUpWallet(pb.TopUpWalletRequest(customer_id=customer, amount_cents=5, **values), None)
    finally:
        principals.reset(token)
    assert caught.value.violations[0][0] == field and caught.value.reason == "INVALID_CHARACTER"


async def test_a_batch_item_that_cannot_be_stored_fails_alone(billing: BillingService) -> None:
    api = BillingApi(billing)
    customer, _ = await funded_wallet(billing, 1000)
    items = [pb.ReserveRequest(hold_id=f"h-{uuid.uuid4()}", customer_id=customer, amount_cents=10,
                               currency_code="USD", description="d\u0000" if i == 2 else f"job {i}")
             for i in range(5)]
    token = principals.bind(principals.service_principal("jobs"))
    try:
        reply = await api.BatchReserve(pb.BatchReserveRequest(requests=items), None)
    finally:
        principals.reset(token)
    assert [r.HasField("error") for r in reply.results] == [False, False, True, False, False]
    assert (await wallet(billing, customer)).held == 40
