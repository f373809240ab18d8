"""Catalog types, prices, markups and a project's currency through the real gateway, tenancy,
billing and jobs processes: the routes, who may call them, and errors that name the field."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("pricing-stack-logs"),
                       services=("tenancy", "billing", "jobs")) as running:
        yield running


@pytest.fixture(scope="module")
def world(stack: Stack) -> dict[str, Any]:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    reseller = admin.post("/v1/resellers", {"name": "Resale", "email": "r@example.com", "commissionRateBps": 1000})
    assert reseller.status == 200, reseller.body
    as_reseller = admin.as_key(reseller.body["apiKey"])
    made = as_reseller.post("/v1/customers", {"name": "Priced Co", "email": "p@example.com"})
    assert made.status == 200, made.body
    cid = made.body["customer"]["id"]
    me = admin.as_key(made.body["apiKey"])
    deadline = time.monotonic() + 30
    while admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 1000, "requestId": f"f-{cid}"}).status \
            != 200:  # the wallet opens right after the customer
        assert time.monotonic() < deadline, "no wallet"
        time.sleep(0.05)
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "main"})
    assert project.status == 200, project.body
    return {"admin": admin, "reseller": as_reseller, "me": me, "customer": cid, "project": project.body["id"]}


def _error(resp: Any) -> tuple[str, list[str]]:
    details = resp.body["details"]
    reason = next(d["reason"] for d in details if d["@type"].endswith("ErrorInfo"))
    fields = [v["field"] for d in details if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]
    return reason, fields


def test_the_operator_prices_a_catalog_type_and_a_customer_pays_it_marked_up(world: dict[str, Any]) -> None:
    admin, me, project = world["admin"], world["me"], world["project"]
    name = f"ocr-{uuid.uuid4().hex[:6]}"
    refused = me.post("/v1/jobTypes", {"name": name})
    assert refused.status == 403 and _error(refused)[0] == "CATALOG_ADMIN_ONLY"
    made = admin.post("/v1/jobTypes", {"name": name, "processorType": "PROCESSOR_TYPE_ASYNC"})
    assert made.status == 200 and made.body["catalog"] is True and not made.body.get("projectId"), made.body
    type_id = made.body["id"]
    assert [t["id"] for t in me.get(f"/v1/jobTypes?name={name}").body["jobTypes"]] == [type_id]
    assert me.get(f"/v1/projects/{project}/jobTypes").body.get("jobTypes", []) == []  # the project's own only

    unpriced = me.post(f"/v1/projects/{project}/jobs", {"jobTypeId": type_id})
    assert unpriced.status == 400 and _error(unpriced) == ("PRICE_NOT_FOUND", ["job_type_id"]), unpriced.body
    for body, reason, field in (
            ({"currencyCode": "USD", "model": "PRICE_MODEL_PER_UNIT", "unitPriceCents": "5", "capCents": "4"},
             "CAP_BELOW_UNIT_PRICE", "price.cap_cents"),
            ({"currencyCode": "QQQ", "unitPriceCents": "5"}, "UNKNOWN_CURRENCY", "price.currency_code"),
            ({"currencyCode": "USD", "unitPriceCents": "99999999999"}, "INVALID_PRICE", "price.unit_price_cents")):
        bad = admin.post(f"/v1/jobTypes/{type_id}/prices", body)
        assert bad.status == 400 and _error(bad) == (reason, [field]), bad.body
    assert me.post(f"/v1/jobTypes/{type_id}/prices", {"currencyCode": "USD", "unitPriceCents": "1"}).status == 403
    price = admin.post(f"/v1/jobTypes/{type_id}/prices", {
        "currencyCode": "USD", "model": "PRICE_MODEL_PER_UNIT", "unitPriceCents": "2", "capCents": "40"})
    assert price.status == 200 and price.body["model"] == "PRICE_MODEL_PER_UNIT", price.body
    listed = me.get(f"/v1/jobTypes/{type_id}/prices").body["prices"]
    assert [p["id"] for p in listed] == [price.body["id"]]  # the refused ones added nothing

    cid = world["customer"]
    assert me.patch(f"/v1/customers/{cid}/priceMarkup", {"markupBps": 500}).status == 403
    out_of_range = world["reseller"].patch(f"/v1/customers/{cid}/priceMarkup", {"markupBps": 200000})
    assert out_of_range.status == 400
    marked = world["reseller"].patch(f"/v1/customers/{cid}/priceMarkup", {"markupBps": 2500})
    assert marked.status == 200 and marked.body["markupBps"] == 2500, marked.body
    assert me.get(f"/v1/customers/{cid}/priceMarkup").body["markupBps"] == 2500
    job = me.post(f"/v1/projects/{project}/jobs", {"jobTypeId": type_id})
    assert job.status == 200, job.body
    assert (job.body["estimatedCostCents"], job.body["priceId"]) == ("50", price.body["id"])  # the cap, +25 %
    wallet = me.get(f"/v1/customers/{cid}/wallet").body
    assert wallet["heldCents"] == "50"


def test_own_types_carry_no_price_and_a_projects_currency_is_checked(world: dict[str, Any]) -> None:
    me, project = world["me"], world["project"]
    priced = me.post(f"/v1/projects/{project}/jobTypes", {"name": "mine", "baseCostCents": "12"})
    assert priced.status == 400 and _error(priced) == ("PRICE_SET_BY_OPERATOR", ["job_type.base_cost_cents"])
    own = me.post(f"/v1/projects/{project}/jobTypes", {"name": "mine"})
    assert own.status == 200 and not own.body.get("catalog"), own.body
    free = me.post(f"/v1/projects/{project}/jobs", {"jobTypeId": own.body["id"]})
    assert free.status == 200 and free.body.get("estimatedCostCents", "0") == "0"  # the platform fee: 0 here

    bad = me.patch(f"/v1/projects/{project}?updateMask=billingCurrencyCode", {"billingCurrencyCode": "ABC"})
    assert bad.status == 400 and _error(bad) == ("UNKNOWN_CURRENCY", ["project.billing_currency_code"]), bad.body
    euro = me.patch(f"/v1/projects/{project}?updateMask=billingCurrencyCode", {"billingCurrencyCode": "EUR"})
    assert euro.status == 200 and euro.body["billingCurrencyCode"] == "EUR", euro.body
    job = me.post(f"/v1/projects/{project}/jobs", {"jobTypeId": own.body["id"]})
    assert job.status == 200 and job.body["currencyCode"] == "EUR", job.body
