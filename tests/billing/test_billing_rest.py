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
from tests.e2e.conftest import Client, Response

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Tenancy, billing and the gateway as real processes; stopped when this module ends (so no
    second full stack runs beside the e2e suite's)."""
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("billing-stack-logs"),
                       services=("tenancy", "billing"),
                       extra_env={"INNOSYSTEM_BILLING_RESELLER_REFUND_LIMIT_CENTS": "500"}) as running:
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


def _refusal(resp: Response) -> tuple[int, str, str]:
    details = resp.body.get("details", [])
    reason = next((d["reason"] for d in details if d["@type"].endswith("ErrorInfo")), "")
    fields = [v["field"] for d in details if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]
    return resp.status, reason, fields[0] if fields else ""


async def test_refund_adjust_and_statement_through_the_gateway(stack: Stack, admin: Client) -> None:
    reseller = admin.post("/v1/resellers", {"name": "Refund Resale", "email": "refund@example.com",
                                            "commissionRateBps": 0}).body
    as_reseller = admin.as_key(reseller["apiKey"])
    created = as_reseller.post("/v1/customers", {"name": "Refunded", "email": "refunded@example.com"}).body
    cid = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    _wallet_opened(as_customer, cid)
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 5000, "requestId": "fund"}).status == 200
    async with channel(stack.address("billing"), service="jobs", secret=stack.internal_secret.encode()) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        await stub.Reserve(pb.ReserveRequest(hold_id="job-r", customer_id=cid, amount_cents=2000,
                                             currency_code="USD", job_id="job-r"), timeout=10)
        await stub.Capture(pb.CaptureRequest(hold_id="job-r", amount_cents=1500), timeout=10)

    refund = {"jobId": "job-r", "amountCents": 400, "reason": "late result", "requestId": "rf-1"}
    done = as_reseller.post(f"/v1/customers/{cid}/wallet:refund", refund)
    assert done.status == 200, done.body
    assert done.body["transaction"]["kind"] == "TRANSFER_KIND_REFUND"
    assert int(done.body["transaction"]["amountCents"]) == 400 and int(done.body["wallet"]["balanceCents"]) == 3900
    assert as_reseller.post(f"/v1/customers/{cid}/wallet:refund", refund).body["transaction"]["id"] == \
        done.body["transaction"]["id"]
    assert _refusal(as_reseller.post(f"/v1/customers/{cid}/wallet:refund", {**refund, "amountCents": 600,
                                                                            "requestId": "rf-2"})) == \
        (403, "REFUND_ABOVE_RESELLER_LIMIT", "amount_cents")
    assert _refusal(admin.post(f"/v1/customers/{cid}/wallet:refund", {**refund, "amountCents": 1101,
                                                                      "requestId": "rf-3"})) == \
        (400, "REFUND_EXCEEDS_CAPTURE", "amount_cents")
    assert _refusal(admin.post(f"/v1/customers/{cid}/wallet:refund", {**refund, "amountCents": -1,
                                                                      "requestId": "rf-4"})) == \
        (400, "INVALID_AMOUNT", "amount_cents")
    assert _refusal(as_customer.post(f"/v1/customers/{cid}/wallet:refund", {**refund, "requestId": "rf-5"})) == \
        (403, "REFUND_NOT_ALLOWED", "")

    adjust = {"amountCents": "-900", "reason": "manual correction", "requestId": "adj-1"}
    assert _refusal(as_reseller.post(f"/v1/customers/{cid}/wallet:adjust", adjust))[:2] == (403, "ADMIN_ONLY")
    adjusted = admin.post(f"/v1/customers/{cid}/wallet:adjust", adjust)
    assert adjusted.status == 200, adjusted.body
    assert int(adjusted.body["transaction"]["amountCents"]) == -900
    assert int(adjusted.body["wallet"]["balanceCents"]) == 3000
    assert _refusal(admin.post(f"/v1/customers/{cid}/wallet:adjust", {**adjust, "amountCents": "-3001",
                                                                      "requestId": "adj-2"}))[:2] == \
        (400, "INSUFFICIENT_FUNDS")
    assert _refusal(admin.post(f"/v1/customers/{cid}/wallet:adjust", {**adjust, "amountCents": "0",
                                                                      "requestId": "adj-3"})) == \
        (400, "REQUIRED_FIELD_MISSING", "amount_cents")  # the gateway reads 0 as absent
    assert _refusal(admin.post(f"/v1/customers/{cid}/wallet:adjust", {**adjust, "currencyCode": "EU",
                                                                      "requestId": "adj-4"})) == \
        (400, "INVALID_CURRENCY", "currency_code")

    month = time.strftime("%Y-%m", time.gmtime())
    st = as_customer.get(f"/v1/customers/{cid}/statements/{month}")
    assert st.status == 200, st.body
    figures = {k: int(st.body.get(k, 0)) for k in ("openingBalanceCents", "topUpsCents", "chargesCents",
                                                   "refundsCents", "adjustmentsCents", "closingBalanceCents")}
    assert figures == {"openingBalanceCents": 0, "topUpsCents": 5000, "chargesCents": 1500, "refundsCents": 400,
                       "adjustmentsCents": -900, "closingBalanceCents": 3000}
    journal = as_customer.get(f"/v1/customers/{cid}/wallet/transactions").body["transactions"]
    assert sum(int(t["amountCents"]) for t in journal if t["kind"] not in (
        "TRANSFER_KIND_HOLD", "TRANSFER_KIND_VOID", "TRANSFER_KIND_EXPIRE")) == figures["closingBalanceCents"]
    assert _refusal(as_customer.get(f"/v1/customers/{cid}/statements/2026-13")) == (400, "INVALID_MONTH", "month")
    report = admin.post("/v1/billing:reconcile", {})
    assert report.body["consistent"] is True, report.body


def test_credit_grants_through_the_gateway(stack: Stack, admin: Client) -> None:
    created = admin.post("/v1/customers", {"name": "Promo", "email": "promo@example.com"}).body
    cid = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    _wallet_opened(as_customer, cid)
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7 * 86400))
    grant = {"amountCents": 2500, "expireTime": expire, "reason": "welcome credit", "requestId": "welcome"}
    done = admin.post(f"/v1/customers/{cid}/wallet:grantCredit", grant)
    assert done.status == 200, done.body
    assert done.body["transaction"]["kind"] == "TRANSFER_KIND_CREDIT_GRANT"
    assert (int(done.body["wallet"]["balanceCents"]), int(done.body["wallet"]["grantedCents"])) == (2500, 2500)
    assert admin.post(f"/v1/customers/{cid}/wallet:grantCredit", grant).body["grant"]["id"] == done.body["grant"]["id"]
    assert _refusal(as_customer.post(f"/v1/customers/{cid}/wallet:grantCredit", {**grant, "requestId": "mine"}))[:2] \
        == (403, "ADMIN_ONLY")
    assert _refusal(admin.post(f"/v1/customers/{cid}/wallet:grantCredit", {
        **grant, "requestId": "past", "expireTime": "2020-01-01T00:00:00Z"})) == \
        (400, "INVALID_EXPIRE_TIME", "expire_time")
    listed = as_customer.get(f"/v1/customers/{cid}/wallet/creditGrants").body["creditGrants"]
    assert [(g["reason"], int(g["remainingCents"]), g["status"]) for g in listed] == \
        [("welcome credit", 2500, "CREDIT_GRANT_STATUS_ACTIVE")]
    st = as_customer.get(f"/v1/customers/{cid}/statements/{time.strftime('%Y-%m', time.gmtime())}").body
    assert int(st["creditsGrantedCents"]) == int(st["closingBalanceCents"]) == 2500


def test_low_balance_alert_through_the_gateway(stack: Stack, admin: Client) -> None:
    created = admin.post("/v1/customers", {"name": "Alerted", "email": "alerted@example.com"}).body
    cid = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    _wallet_opened(as_customer, cid)
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 1000, "requestId": "f"}).status == 200
    changed = as_customer.patch(f"/v1/customers/{cid}/wallet?updateMask=low_balance_threshold_cents",
                                {"lowBalanceThresholdCents": "400"})
    assert changed.status == 200, changed.body
    assert int(changed.body["lowBalanceThresholdCents"]) == 400 and not changed.body.get("lowBalanceAlerted")
    assert _refusal(as_customer.patch(f"/v1/customers/{cid}/wallet?updateMask=credit_limit_cents",
                                      {"creditLimitCents": "5"}))[:2] == (403, "ADMIN_ONLY")
    assert _refusal(as_customer.patch(f"/v1/customers/{cid}/wallet?updateMask=low_balance_threshold_cents",
                                      {"lowBalanceThresholdCents": "-1"})) == \
        (400, "INVALID_AMOUNT", "wallet.low_balance_threshold_cents")
    adjusted = admin.post(f"/v1/customers/{cid}/wallet:adjust", {"amountCents": "-700", "reason": "r",
                                                                 "requestId": "a"})
    assert adjusted.status == 200 and adjusted.body["wallet"]["lowBalanceAlerted"] is True
    events = as_customer.get(f"/v1/customers/{cid}/wallet/events").body["events"]
    assert [(e["type"], int(e["availableCents"]), int(e["thresholdCents"])) for e in events] == \
        [("wallet.low_balance", 300, 400)]


async def test_spending_limits_through_the_gateway(stack: Stack, admin: Client) -> None:
    created = admin.post("/v1/customers", {"name": "Limited", "email": "limited@example.com"}).body
    cid = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    _wallet_opened(as_customer, cid)
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 5000, "requestId": "f"}).status == 200
    project = as_customer.post(f"/v1/customers/{cid}/projects", {"name": "capped"})
    assert project.status == 200, project.body
    pid = project.body["id"]
    set_ = as_customer.post(f"/v1/customers/{cid}/wallet:setSpendingLimit",
                            {"projectId": pid, "monthlyLimitCents": "100"})
    assert set_.status == 200, set_.body
    assert (set_.body["projectId"], int(set_.body["monthlyLimitCents"]), int(set_.body.get("spentCents", 0))) == \
        (pid, 100, 0)
    assert _refusal(as_customer.post(f"/v1/customers/{cid}/wallet:setSpendingLimit",
                                     {"monthlyLimitCents": "-1"})) == (400, "INVALID_AMOUNT", "monthly_limit_cents")
    async with channel(stack.address("billing"), service="jobs", secret=stack.internal_secret.encode()) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        await stub.Reserve(pb.ReserveRequest(hold_id=f"l1-{cid}", customer_id=cid, amount_cents=80,
                                             currency_code="USD", project_id=pid), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Reserve(pb.ReserveRequest(hold_id=f"l2-{cid}", customer_id=cid, amount_cents=21,
                                                 currency_code="USD", project_id=pid), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SPENDING_LIMIT_REACHED" in str(refused.value.trailing_metadata())
    listed = as_customer.get(f"/v1/customers/{cid}/wallet/spendingLimits").body["spendingLimits"]
    assert [(x["projectId"], int(x["spentCents"])) for x in listed] == [(pid, 80)]
    assert int(as_customer.get(f"/v1/customers/{cid}/wallet").body["heldCents"]) == 80


async def test_usage_as_json_and_csv_through_the_gateway(stack: Stack, admin: Client) -> None:
    reseller = admin.post("/v1/resellers", {"name": "Usage Resale", "email": "usage@example.com",
                                            "commissionRateBps": 0}).body
    as_reseller = admin.as_key(reseller["apiKey"])
    created = as_reseller.post("/v1/customers", {"name": "User", "email": "user@example.com"}).body
    cid = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    _wallet_opened(as_customer, cid)
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 5000, "requestId": "f"}).status == 200
    async with channel(stack.address("billing"), service="jobs", secret=stack.internal_secret.encode()) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        for job, cost, jt in (("u1", 100, "resize"), ("u2", 300, "resize"), ("u3", 50, "ocr")):
            await stub.Reserve(pb.ReserveRequest(hold_id=job, customer_id=cid, amount_cents=cost, currency_code="USD",
                                                 job_id=job, project_id="proj", job_type_id=jt), timeout=10)
            await stub.Capture(pb.CaptureRequest(hold_id=job, amount_cents=cost), timeout=10)
    report = as_customer.get(f"/v1/customers/{cid}/usage?groupBy=USAGE_GROUPING_JOB_TYPE")
    assert report.status == 200, report.body
    assert [(x["group"], int(x["jobCount"]), int(x["amountCents"])) for x in report.body["lines"]] == \
        [("ocr", 1, 50), ("resize", 2, 400)]
    table = as_customer.get(f"/v1/customers/{cid}/usage?groupBy=USAGE_GROUPING_JOB_TYPE",
                            headers={"Accept": "text/csv"})
    assert table.status == 200 and table.headers["Content-Type"].startswith("text/csv")
    assert table.body.splitlines() == ["group,currencyCode,jobCount,amountCents", "ocr,USD,1,50", "resize,USD,2,400"]
    across = as_reseller.get(f"/v1/resellers/{reseller['reseller']['id']}/usage?groupBy=USAGE_GROUPING_CUSTOMER")
    assert [(x["group"], int(x["amountCents"])) for x in across.body["lines"]] == [(cid, 450)]
    assert _refusal(as_customer.get(f"/v1/customers/{cid}/usage?startTime=2026-12-05T00:00:00Z"
                                    "&endTime=2026-12-04T00:00:00Z")) == (400, "INVALID_TIME_RANGE", "end_time")


def test_wallets_per_currency_and_rates_through_the_gateway(stack: Stack, admin: Client) -> None:
    created = admin.post("/v1/customers", {"name": "Euro", "email": "euro@example.com"}).body
    cid = created["customer"]["id"]
    as_customer = admin.as_key(created["apiKey"])
    _wallet_opened(as_customer, cid)
    opened = as_customer.post(f"/v1/customers/{cid}/wallets", {"currencyCode": "EUR"})
    assert opened.status == 200 and opened.body["currencyCode"] == "EUR", opened.body
    assert _refusal(as_customer.post(f"/v1/customers/{cid}/wallets", {"currencyCode": "EUR"}))[:2] == \
        (409, "WALLET_EXISTS")
    assert _refusal(as_customer.post(f"/v1/customers/{cid}/wallets", {"currencyCode": "XYZ"})) == \
        (400, "UNKNOWN_CURRENCY", "currency_code")
    assert [w["currencyCode"] for w in as_customer.get(f"/v1/customers/{cid}/wallets").body["wallets"]] == \
        ["USD", "EUR"]
    topped = admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 700, "currencyCode": "EUR",
                                                              "requestId": "eur"})
    assert topped.status == 200 and topped.body["wallet"]["currencyCode"] == "EUR"
    eur = as_customer.get(f"/v1/customers/{cid}/wallet?currencyCode=EUR").body
    usd = as_customer.get(f"/v1/customers/{cid}/wallet").body
    assert (int(eur["balanceCents"]), int(usd.get("balanceCents", 0))) == (700, 0)

    rate = admin.post("/v1/exchangeRates", {"baseCurrencyCode": "EUR", "quoteCurrencyCode": "NZD",
                                            "ratePpm": "1800000"})
    assert rate.status == 200, rate.body
    assert _refusal(as_customer.post("/v1/exchangeRates", {"baseCurrencyCode": "EUR", "quoteCurrencyCode": "NZD",
                                                           "ratePpm": "1"}))[:2] == (403, "ADMIN_ONLY")
    assert _refusal(admin.post("/v1/exchangeRates", {"baseCurrencyCode": "EUR", "quoteCurrencyCode": "NZD",
                                                     "ratePpm": "-1"})) == \
        (400, "INVALID_RATE", "exchange_rate.rate_ppm")
    listed = as_customer.get("/v1/exchangeRates?baseCurrencyCode=EUR&quoteCurrencyCode=NZD").body["exchangeRates"]
    assert [r["id"] for r in listed] == [rate.body["id"]]
    report = as_customer.get(f"/v1/customers/{cid}/usage?reportingCurrencyCode=NZD")
    assert report.status == 200 and report.body.get("lines", []) == []
