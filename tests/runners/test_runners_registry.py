"""The runner registry through the real gateway: create (token once), read, list, scoping,
maintenance, rotation and deletion."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Client
from tests.runners.conftest import reason

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tenants(admin: Client) -> dict[str, Any]:
    first = admin.post("/v1/customers", {"name": "Registry One", "email": "one@example.com"})
    second = admin.post("/v1/customers", {"name": "Registry Two", "email": "two@example.com"})
    assert first.status == 200 and second.status == 200, (first.body, second.body)
    as_first = admin.as_key(first.body["apiKey"])
    project = as_first.post(f"/v1/customers/{first.body['customer']['id']}/projects", {"name": "p"})
    assert project.status == 200, project.body
    return {"first": first.body["customer"], "as_first": as_first, "as_second": admin.as_key(second.body["apiKey"]),
            "second": second.body["customer"], "project": project.body["id"]}


def test_admin_registers_a_shared_runner_and_gets_its_token_once(admin: Client) -> None:
    created = admin.post("/v1/runners", {"name": "shared-1", "allowedProcessors": ["echo"]},
                         headers={})
    assert created.status == 200, created.body
    runner, token = created.body["runner"], created.body["token"]
    assert token.startswith("isr_") and len(token) > 30
    assert runner["scope"] == "RUNNER_SCOPE_SHARED" and runner["status"] == "RUNNER_STATUS_OFFLINE"
    got = admin.get(f"/v1/runners/{runner['id']}")
    assert got.status == 200 and "token" not in got.body and got.body["name"] == "shared-1"
    assert got.body["allowedProcessors"] == ["echo"]


def test_create_is_idempotent_on_request_id(admin: Client) -> None:
    rid = uuid.uuid4().hex
    first = admin.call("POST", f"/v1/runners?requestId={rid}", {"name": "idem"})
    again = admin.call("POST", f"/v1/runners?requestId={rid}", {"name": "idem"})
    assert first.status == 200 and again.status == 200, (first.body, again.body)
    assert again.body["runner"]["id"] == first.body["runner"]["id"]
    assert first.body["token"] and not again.body.get("token")


def test_customer_runner_is_its_own_and_invisible_to_others(tenants: dict[str, Any], admin: Client) -> None:
    as_first, as_second = tenants["as_first"], tenants["as_second"]
    created = as_first.post("/v1/runners", {"name": "mine"})
    assert created.status == 200, created.body
    runner = created.body["runner"]
    assert runner["scope"] == "RUNNER_SCOPE_CUSTOMER" and runner["customerId"] == tenants["first"]["id"]
    assert as_first.get(f"/v1/runners/{runner['id']}").status == 200
    for resp in (as_second.get(f"/v1/runners/{runner['id']}"),
                 as_second.patch(f"/v1/runners/{runner['id']}", {"name": "stolen"}),
                 as_second.delete(f"/v1/runners/{runner['id']}"),
                 as_second.post(f"/v1/runners/{runner['id']}:rotateToken", {})):
        assert resp.status == 404, resp.body
        assert reason(resp.body) == "RUNNER_NOT_FOUND"
    listed = as_first.get("/v1/runners")
    assert listed.status == 200
    assert {r["id"] for r in listed.body["runners"]} == {runner["id"]}
    assert runner["id"] not in {r["id"] for r in as_second.get("/v1/runners").body.get("runners", [])}
    assert runner["id"] in {r["id"] for r in admin.get(f"/v1/runners?customerId={tenants['first']['id']}")
                            .body["runners"]}


def test_customer_cannot_register_a_shared_runner(tenants: dict[str, Any]) -> None:
    resp = tenants["as_first"].post("/v1/runners", {"name": "sneaky", "scope": "RUNNER_SCOPE_SHARED"})
    assert resp.status == 403, resp.body
    assert reason(resp.body) == "SHARED_RUNNER_ADMIN_ONLY"


@pytest.mark.parametrize(("body", "field"), [
    ({"name": ""}, "runner.name"),
    ({"name": "x" * 201}, "runner.name"),
    ({"name": "ok", "allowedProcessors": [""]}, "runner.allowed_processors"),
    ({"name": "ok", "scope": "RUNNER_SCOPE_CUSTOMER"}, "runner.customer_id"),
])
def test_bad_input_is_400_naming_the_field(admin: Client, body: dict[str, Any], field: str) -> None:
    resp = admin.post("/v1/runners", body)
    assert resp.status == 400, resp.body
    fields = [v["field"] for d in resp.body["details"] if d["@type"].endswith("BadRequest")
              for v in d["fieldViolations"]]
    assert field in fields or any(f.startswith(field) for f in fields), resp.body


def test_maintenance_is_set_and_cleared_by_patch(admin: Client) -> None:
    runner = admin.post("/v1/runners", {"name": "maint"}).body["runner"]
    patched = admin.patch(f"/v1/runners/{runner['id']}?updateMask=status", {"status": "RUNNER_STATUS_MAINTENANCE"})
    assert patched.status == 200 and patched.body["status"] == "RUNNER_STATUS_MAINTENANCE", patched.body
    listed = admin.get("/v1/runners?status=RUNNER_STATUS_MAINTENANCE")
    assert runner["id"] in {r["id"] for r in listed.body["runners"]}
    bad = admin.patch(f"/v1/runners/{runner['id']}?updateMask=status", {"status": "RUNNER_STATUS_BUSY"})
    assert bad.status == 400 and reason(bad.body) == "INVALID_STATUS"
    back = admin.patch(f"/v1/runners/{runner['id']}?updateMask=status", {"status": "RUNNER_STATUS_AVAILABLE"})
    assert back.body["status"] == "RUNNER_STATUS_OFFLINE"  # back in service, but not connected


def test_list_pages_with_a_token(admin: Client) -> None:
    for i in range(3):
        assert admin.post("/v1/runners", {"name": f"paged-{i}"}).status == 200
    seen: list[str] = []
    token = ""
    while True:
        page = admin.get(f"/v1/runners?pageSize=2&pageToken={token}")
        assert page.status == 200 and len(page.body.get("runners", [])) <= 2
        seen += [r["id"] for r in page.body.get("runners", [])]
        token = page.body.get("nextPageToken", "")
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 3


def test_delete_then_404(admin: Client) -> None:
    runner = admin.post("/v1/runners", {"name": "doomed"}).body["runner"]
    assert admin.delete(f"/v1/runners/{runner['id']}").status == 200
    assert admin.get(f"/v1/runners/{runner['id']}").status == 404
