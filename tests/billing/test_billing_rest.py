"""The issue's "Done when", through the gateway against the real processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.billing.v1 import billing_pb2_grpc
from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.kit import principal as principals
from innosystem.kit.clients import channel
from innosystem.stack import Stack
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Tenancy, billing and the gateway as real processes; stopped when this module ends (so no
    second full stack runs beside the e2e suite's)."""
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("billing-stack-logs"),
                       services=("tenancy", "billing")) as running:
        yield running


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Client:
    return Client(stack.gateway_url, stack.admin_api_key)


def _wallet_opened(client: Client, customer_id: str) -> dict:
    for _ in range(200):
        resp = client.get(f"/v1/customers/{customer_id}/wallet")
        if resp.status == 200:
            return resp.body
        time.sleep(0.05)
    raise AssertionError(f"wallet of {customer_id} never opened: {resp.status} {resp.body}")


async def test_top_up_reserve_capture_statement_reconcile(stack: Stack, admin: Client) -> None:
    reseller = admin.post("/v1/resellers", {"name": "Bill Resale", "email": "bill@example.com",
                                            "commissionRateBps": 1000}).body
    as_reseller = admin.as_key(reseller["apiKey"])
    created = as_reseller.post("/v1/customers", {"name": "Payer", "email": "payer@example.com"}).body
    customer_id = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    other = admin.post("/v1/customers", {"name": "Other", "email": "other@example.com"}).body

    opened = _wallet_opened(as_customer, customer_id)
    assert int(opened.get("balanceCents", 0)) == 0 and opened["currencyCode"] == "USD"
    topped = as_reseller.post(f"/v1/customers/{customer_id}/wallet:topUp",
                              {"amountCents": 10000, "requestId": "pay-1", "description": "invoice 1"})
    assert topped.status == 200, topped.body
    assert int(topped.body["wallet"]["balanceCents"]) == 10000
    assert as_customer.post(f"/v1/customers/{customer_id}/wallet:topUp",
                            {"amountCents": 5, "requestId": "self"}).status == 403
    assert admin.as_key(other["apiKey"]).get(f"/v1/customers/{customer_id}/wallet").status == 404

    secret = stack.internal_secret.encode()
    async with channel(stack.address("billing"), service="jobs", secret=secret) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        hold = await stub.Reserve(pb.ReserveRequest(hold_id="job-42", customer_id=customer_id, amount_cents=3000,
                                                    currency_code="USD", job_id="job-42"), timeout=10)
        assert hold.status == pb.HOLD_STATUS_ACTIVE
        held = as_customer.get(f"/v1/customers/{customer_id}/wallet").body
        assert (int(held["heldCents"]), int(held["availableCents"])) == (3000, 7000)
        captured = await stub.Capture(pb.CaptureRequest(hold_id="job-42", amount_cents=2500), timeout=10)
        assert (captured.captured_cents, captured.commission_cents) == (2500, 250)

        batch = await stub.BatchReserve(pb.BatchReserveRequest(requests=[
            pb.ReserveRequest(hold_id="b-1", customer_id=customer_id, amount_cents=100, currency_code="USD"),
            pb.ReserveRequest(hold_id="b-2", customer_id=customer_id, amount_cents=10**9, currency_code="USD"),
            pb.ReserveRequest(hold_id="b-3", customer_id=customer_id, amount_cents=-1, currency_code="USD"),
        ]), timeout=10)
        assert batch.results[0].hold.status == pb.HOLD_STATUS_ACTIVE
        assert [r.WhichOneof("result") for r in batch.results] == ["hold", "error", "error"]
        assert [r.error.code for r in batch.results[1:]] == [grpc.StatusCode.FAILED_PRECONDITION.value[0],
                                                             grpc.StatusCode.INVALID_ARGUMENT.value[0]]
        released = await stub.BatchRelease(pb.BatchReleaseRequest(requests=[pb.ReleaseRequest(hold_id="b-1")]),
                                           timeout=10)
        assert released.results[0].hold.status == pb.HOLD_STATUS_VOIDED

        as_customer_grpc = principals.sign(Principal(kind=principals.CUSTOMER, customer_id=customer_id), secret,
                                           "/innosystem.billing.v1.BillingService/Reserve")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Reserve(pb.ReserveRequest(hold_id="self", customer_id=customer_id, amount_cents=1,
                                                 currency_code="USD"), metadata=as_customer_grpc, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    w = as_customer.get(f"/v1/customers/{customer_id}/wallet").body
    assert (int(w["balanceCents"]), int(w.get("heldCents", 0)), int(w["availableCents"])) == (7500, 0, 7500)
    txs = as_customer.get(f"/v1/customers/{customer_id}/wallet/transactions").body["transactions"]
    kinds = [(t["kind"], t.get("jobId", "")) for t in txs]
    assert ("TRANSFER_KIND_TOP_UP", "") in kinds and ("TRANSFER_KIND_CAPTURE", "job-42") in kinds
    only_captures = as_customer.get(f"/v1/customers/{customer_id}/wallet/transactions"
                                    "?kind=TRANSFER_KIND_CAPTURE").body["transactions"]
    assert [int(t["amountCents"]) for t in only_captures] == [-2500]

    statement = as_reseller.get(f"/v1/resellers/{reseller['reseller']['id']}/commissionStatement")
    assert statement.status == 200, statement.body
    assert int(statement.body["commissionTotal"]["amountMinor"]) == 250
    assert int(statement.body["capturedTotal"]["amountMinor"]) == 2500
    assert statement.body["lines"][0]["customerId"] == customer_id

    assert as_reseller.post("/v1/billing:reconcile", {}).status == 403
    report = admin.post("/v1/billing:reconcile", {})
    assert report.status == 200, report.body
    assert report.body["consistent"] is True and not report.body.get("findings")
    assert admin.get(f"/v1/billing/reconciliations/{report.body['id']}").body["id"] == report.body["id"]
