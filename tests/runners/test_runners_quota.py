"""Runners per customer are capped (`INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER`, default 100), against
the real stack: the registration past the cap is refused with 429 `QUOTA_EXCEEDED` naming the
limit, stores nothing, and concurrent registrations cannot overshoot it."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import Client, Response
from tests.runners.conftest import reason
from tests.runners.world import tenant

pytestmark = pytest.mark.e2e

CAP = 100  # the default: the test stack does not set INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER


def _register(client: Client, request_id: str = "", **body: str) -> Response:
    query = f"?requestId={request_id}" if request_id else ""
    return client.post(f"/v1/runners{query}", {"name": request_id or f"quota-{uuid.uuid4().hex[:8]}", **body})


def _count(client: Client, customer_id: str) -> int:
    total, token = 0, ""
    while True:
        page = client.get(f"/v1/runners?pageSize=500&customerId={customer_id}&pageToken={token}")
        assert page.status == 200, page.body
        total += len(page.body.get("runners", []))
        token = page.body.get("nextPageToken", "")
        if not token:
            return total


def test_runners_per_customer_are_capped_and_concurrent_registrations_cannot_pass_the_cap(admin: Client) -> None:
    t = tenant(admin)
    with ThreadPoolExecutor(8) as pool:  # up to five places left
        answers = list(pool.map(lambda _: _register(t.client), range(CAP - 5)))
    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200][:1]
    first_of_last = _register(t.client, request_id="last-place")
    assert first_of_last.status == 200

    # Ten registrations race for the last four places: exactly four win.
    with ThreadPoolExecutor(10) as pool:
        racing = list(pool.map(lambda _: _register(t.client), range(10)))
    assert sorted(a.status for a in racing) == [200] * 4 + [429] * 6, [a.body for a in racing]
    assert _count(t.client, t.customer_id) == CAP

    refused = _register(t.client)
    assert refused.status == 429 and reason(refused.body) == "QUOTA_EXCEEDED", refused.body
    assert "runners per customer" in refused.body["message"] and str(CAP) in refused.body["message"]
    info = next(d for d in refused.body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["metadata"] == {"limit": "runners_per_customer", "max": str(CAP), "current": str(CAP)}
    # An admin registering a runner for the customer counts against the same cap.
    for_customer = _register(admin, scope="RUNNER_SCOPE_CUSTOMER", customerId=t.customer_id)
    assert for_customer.status == 429 and reason(for_customer.body) == "QUOTA_EXCEEDED"
    assert _count(t.client, t.customer_id) == CAP  # nothing stored by a refusal

    # A repeat of an accepted registration still answers (with the token withheld) at the cap.
    again = _register(t.client, request_id="last-place")
    assert again.status == 200 and again.body["runner"]["id"] == first_of_last.body["runner"]["id"]
    assert not again.body.get("token")

    # A deletion frees a place; another customer's cap is its own; shared runners are not capped here.
    assert t.client.delete(f"/v1/runners/{first_of_last.body['runner']['id']}").status == 200
    assert _register(t.client).status == 200
    assert _register(t.client).status == 429
    assert _register(tenant(admin).client).status == 200
    assert _register(admin).status == 200
