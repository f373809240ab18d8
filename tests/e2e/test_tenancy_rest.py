"""The tenancy API through the real gateway and service processes."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Client
from tests.keys.keymanager_process import KeyManagerProcess, start_keymanager

pytestmark = pytest.mark.e2e


def _reason(body: dict) -> str:
    return next(d["reason"] for d in body["details"] if d["@type"].endswith("ErrorInfo"))


def _violations(body: dict) -> list[str]:
    return [v["field"] for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]


@pytest.fixture(scope="module")
def tenants(admin: Client) -> dict:
    reseller = admin.post("/v1/resellers", {"name": "Acme Resale", "email": "ops@acme.example",
                                            "commissionRateBps": 1500})
    assert reseller.status == 200, reseller.body
    as_reseller = admin.as_key(reseller.body["apiKey"])
    first = as_reseller.post("/v1/customers", {"name": "First Co", "email": "first@example.com"})
    second = admin.post("/v1/customers", {"name": "Second Co", "email": "second@example.com"})
    assert first.status == 200 and second.status == 200, (first.body, second.body)
    as_first, as_second = admin.as_key(first.body["apiKey"]), admin.as_key(second.body["apiKey"])
    project = as_first.post(f"/v1/customers/{first.body['customer']['id']}/projects",
                            {"name": "pipeline", "description": "nightly", "tags": ["etl"]})
    assert project.status == 200, project.body
    return {"reseller": reseller.body["reseller"], "first": first.body["customer"],
            "second": second.body["customer"], "as_reseller": as_reseller, "as_first": as_first,
            "as_second": as_second, "project": project.body}


def test_healthz(admin: Client) -> None:
    assert admin.as_key(None).get("/healthz").status == 200


def test_customer_created_with_key_and_reseller(tenants: dict) -> None:
    first = tenants["first"]
    assert first["resellerId"] == tenants["reseller"]["id"]
    assert first["active"] is True and first["createTime"]


def test_customer_reads_itself_but_not_another(tenants: dict) -> None:
    as_first, second = tenants["as_first"], tenants["second"]
    assert as_first.get(f"/v1/customers/{tenants['first']['id']}").body["name"] == "First Co"
    other = as_first.get(f"/v1/customers/{second['id']}")
    assert other.status == 404, other.body
    assert _reason(other.body) == "CUSTOMER_NOT_FOUND"


def test_other_customers_project_is_404_not_403(tenants: dict) -> None:
    project_id = tenants["project"]["id"]
    assert tenants["as_first"].get(f"/v1/projects/{project_id}").status == 200
    assert tenants["as_second"].get(f"/v1/projects/{project_id}").status == 404
    assert tenants["as_second"].get(f"/v1/projects/{uuid.uuid4()}").status == 404
    assert tenants["as_second"].patch(f"/v1/projects/{project_id}", {"name": "mine now"}).status == 404


def test_reseller_manages_its_customers_only(tenants: dict) -> None:
    as_reseller = tenants["as_reseller"]
    listed = as_reseller.get("/v1/customers")
    assert listed.status == 200
    assert {c["id"] for c in listed.body["customers"]} == {tenants["first"]["id"]}
    assert as_reseller.get(f"/v1/customers/{tenants['second']['id']}").status == 404
    assert as_reseller.get(f"/v1/projects/{tenants['project']['id']}").status == 200


def test_a_resellers_path_is_not_ignored_next_to_a_customer(tenants: dict, admin: Client) -> None:
    """`/v1/resellers/{reseller_id}/users?customerId=…` lists that customer's people only if the
    customer is that reseller's; a path id that is no UUID is 404, not the customer's list."""
    reseller, first, second = tenants["reseller"]["id"], tenants["first"]["id"], tenants["second"]["id"]
    for what in ("users", "apiKeys", "auditEvents"):
        assert admin.get(f"/v1/resellers/{reseller}/{what}?customerId={first}").status == 200, what
        assert admin.get(f"/v1/resellers/{reseller}/{what}?customerId={second}").status == 404, what
        assert admin.get(f"/v1/resellers/null,null/{what}?customerId={first}").status == 404, what


def test_me(tenants: dict) -> None:
    me = tenants["as_first"].get("/v1/me")
    assert me.status == 200
    assert me.body["principal"]["kind"] == "PRINCIPAL_KIND_CUSTOMER"
    assert me.body["principal"]["customerId"] == tenants["first"]["id"]
    assert me.body["displayName"] == "First Co"


def test_bad_or_missing_key_is_401(admin: Client) -> None:
    bad = admin.as_key("isk_this_is_not_a_real_key_at_all")
    for client in (bad, admin.as_key(None)):
        resp = client.get("/v1/me")
        assert resp.status == 401, resp.body
        assert resp.body["code"] == 16
    malformed = admin.as_key(None).get("/v1/me", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert malformed.status == 401


@pytest.mark.parametrize("path", ["/v1/customers/0/accessLogs:verify", "/v1/customers?pageSize=-1",
                                  "/v1/projects/not-a-uuid/jobs"])
def test_the_gateway_authenticates_before_validation_or_any_upstream(admin: Client, path: str) -> None:
    """Without credentials (or with a bad key) nothing reaches a service: before, the keys service
    answered the first path with 400, the others were validated too."""
    for client, reason in ((admin.as_key(None), "NO_CREDENTIALS"),
                           (admin.as_key("isk_this_is_not_a_real_key_at_all"), "API_KEY_INVALID")):
        resp = client.get(path)
        assert resp.status == 401, resp.body
        assert resp.body["code"] == 16 and _reason(resp.body) == reason
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_update_with_mask_and_list_pages(tenants: dict) -> None:
    as_first, project_id = tenants["as_first"], tenants["project"]["id"]
    updated = as_first.patch(f"/v1/projects/{project_id}?updateMask=description", {"description": "hourly"})
    assert updated.status == 200, updated.body
    assert updated.body["description"] == "hourly" and updated.body["name"] == "pipeline"
    customer_id = tenants["first"]["id"]
    for i in range(3):
        assert as_first.post(f"/v1/customers/{customer_id}/projects", {"name": f"extra {i}"}).status == 200
    seen, token = [], ""
    while True:
        page = as_first.get(f"/v1/customers/{customer_id}/projects?pageSize=2&pageToken={token}")
        assert page.status == 200 and len(page.body["projects"]) <= 2
        seen += [p["id"] for p in page.body["projects"]]
        token = page.body.get("nextPageToken", "")
        if not token:
            break
    assert len(seen) == len(set(seen)) == 4


def test_delete_customer_with_projects_needs_force(admin: Client) -> None:
    customer = admin.post("/v1/customers", {"name": "Leaving", "email": "bye@example.com"}).body["customer"]
    assert admin.post(f"/v1/customers/{customer['id']}/projects", {"name": "p"}).status == 200
    refused = admin.delete(f"/v1/customers/{customer['id']}")
    assert refused.status == 400 and _reason(refused.body) == "CUSTOMER_HAS_PROJECTS"
    assert admin.delete(f"/v1/customers/{customer['id']}?force=true").status == 200
    assert admin.get(f"/v1/customers/{customer['id']}").status == 404


def test_rotate_api_key(admin: Client) -> None:
    created = admin.post("/v1/customers", {"name": "Rotator", "email": "rot@example.com"}).body
    old = admin.as_key(created["apiKey"])
    rotated = old.post(f"/v1/customers/{created['customer']['id']}:rotateApiKey")
    assert rotated.status == 200 and rotated.body["apiKey"].startswith("isk_")
    assert admin.as_key(rotated.body["apiKey"]).get("/v1/me").status == 200


def test_a_reseller_gets_no_customer_credentials_nor_its_encryption_key(tenants: dict) -> None:
    """Before, the reseller received a working customer key here (and could act, decrypt, as the
    customer) and could clear or repoint the project's encryption key."""
    as_reseller, first, project = tenants["as_reseller"], tenants["first"], tenants["project"]
    refused = as_reseller.post(f"/v1/customers/{first['id']}:rotateApiKey")
    assert refused.status == 403 and _reason(refused.body) == "CUSTOMER_ONLY", refused.body
    assert "apiKey" not in refused.body
    assert tenants["as_first"].get("/v1/me").status == 200  # the customer's key still works
    patched = as_reseller.patch(f"/v1/projects/{project['id']}?updateMask=encryptionKeyId",
                                {"encryptionKeyId": str(uuid.uuid4())})  # clearing: the integration test
    assert patched.status == 403 and _reason(patched.body) == "CUSTOMER_ONLY", patched.body
    assert _violations(patched.body) == ["project.encryption_key_id"]
    # another reseller's customer stays invisible: 404, not 403
    assert as_reseller.post(f"/v1/customers/{tenants['second']['id']}:rotateApiKey").status == 404


def test_a_deactivated_or_rotated_key_stops_working_at_once(admin: Client) -> None:
    """The gateway caches keys for 5 s; before, a deactivated customer's key kept working that long."""
    reseller = admin.post("/v1/resellers", {"name": "Closing", "email": "close@example.com"}).body
    as_reseller = admin.as_key(reseller["apiKey"])
    for round_ in range(5):
        created = as_reseller.post("/v1/customers", {"name": f"Leaver {round_}", "email": "l@example.com"}).body
        customer, cid = admin.as_key(created["apiKey"]), created["customer"]["id"]
        assert customer.get("/v1/me").status == 200  # now cached at the gateway
        assert as_reseller.patch(f"/v1/customers/{cid}?updateMask=active", {"active": False}).status == 200
        refused = customer.get("/v1/me")
        assert refused.status == 401 and _reason(refused.body) == "ACCOUNT_INACTIVE", (round_, refused.body)
    rotating = admin.post("/v1/customers", {"name": "Rotating", "email": "r@example.com"}).body
    old = admin.as_key(rotating["apiKey"])
    assert old.get("/v1/me").status == 200
    assert old.post(f"/v1/customers/{rotating['customer']['id']}:rotateApiKey").status == 200
    assert old.get("/v1/me").status == 401
    # a reseller deactivated: its key and its customers' keys
    kept = as_reseller.post("/v1/customers", {"name": "Kept", "email": "k@example.com"}).body
    as_kept = admin.as_key(kept["apiKey"])
    assert as_kept.get("/v1/me").status == 200 and as_reseller.get("/v1/me").status == 200
    assert admin.patch(f"/v1/resellers/{reseller['reseller']['id']}?updateMask=active",
                       {"active": False}).status == 200
    assert as_kept.get("/v1/me").status == 401 and as_reseller.get("/v1/me").status == 401


def test_a_top_up_right_after_creating_a_customer_succeeds(tenants: dict, admin: Client) -> None:
    """Before, the wallet was opened by a background loop after the answer: a new user's first
    script (create, then top up) got 404 WALLET_NOT_FOUND."""
    as_reseller = tenants["as_reseller"]
    for n in range(20):
        creator = as_reseller if n % 2 else admin
        created = creator.post("/v1/customers", {"name": f"Eager {n}", "email": "eager@example.com"})
        assert created.status == 200, created.body
        cid = created.body["customer"]["id"]
        topped = creator.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 500, "requestId": f"first-{n}"})
        assert topped.status == 200, (n, topped.body)
        assert int(topped.body["wallet"]["balanceCents"]) == 500


def _token(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", ["[" * 1500 + "]" * 1500, json.dumps([2**80]), json.dumps([True])])
def test_a_malformed_page_token_is_400_on_every_list(tenants: dict, admin: Client, raw: str) -> None:
    """Before: 500 from every list for the nested token (the JSON parser's recursion), and from
    the wallet transactions and access logs for the others (a bigint overflow, a bool in SQL)."""
    cid = tenants["first"]["id"]
    for path in ("/v1/customers", f"/v1/customers/{cid}/projects", f"/v1/customers/{cid}/wallet/transactions",
                 f"/v1/customers/{cid}/accessLogs", "/v1/runners", f"/v1/customers/{cid}/keys"):
        resp = admin.get(f"{path}?pageToken={_token(raw)}")
        assert resp.status == 400, (path, resp.body)
        assert _reason(resp.body) == "INVALID_PAGE_TOKEN" and _violations(resp.body) == ["page_token"], path


def test_an_overlong_request_id_is_400_and_creates_nothing(admin: Client) -> None:
    before = len(admin.get("/v1/customers?pageSize=500").body["customers"])
    resp = admin.post("/v1/customers?requestId=" + "r" * 201, {"name": "Long id", "email": "l@example.com"})
    assert resp.status == 400 and _reason(resp.body) == "INVALID_REQUEST_ID", resp.body  # before: 500
    assert _violations(resp.body) == ["request_id"]
    assert len(admin.get("/v1/customers?pageSize=500").body["customers"]) == before


@pytest.fixture(scope="module")
def keymanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyManagerProcess]:
    km = start_keymanager(tmp_path_factory.mktemp("tenancy-km"), "cmk-tenancy")
    yield km
    km.stop()


def test_a_projects_encryption_key_is_checked_when_set(admin: Client, keymanager: KeyManagerProcess) -> None:
    """Before, any string was recorded (a typo, another customer's key, a disabled key) and the
    project's next jobs failed at submit, or were encrypted under a key the customer cannot use."""
    made = [admin.post("/v1/customers", {"name": f"Keyed {n}", "email": "k@example.com"}).body for n in (1, 2)]
    owner, other = (admin.as_key(m["apiKey"]) for m in made)
    owner_id, other_id = (m["customer"]["id"] for m in made)
    key = owner.post(f"/v1/customers/{owner_id}/keys", {
        "endpointUrl": keymanager.grpc_url, "externalKeyId": "cmk-tenancy", "hmacSecrets": [keymanager.secret]})
    assert key.status == 200, key.body
    project = owner.post(f"/v1/customers/{owner_id}/projects", {"name": "sealed"}).body
    other_project = other.post(f"/v1/customers/{other_id}/projects", {"name": "nosy"}).body

    def set_key(client: Client, project_id: str, value: str) -> Any:
        return client.patch(f"/v1/projects/{project_id}?updateMask=encryptionKeyId", {"encryptionKeyId": value})

    for client, project_id, value, reason in (
            (owner, project["id"], str(uuid.uuid4()), "ENCRYPTION_KEY_NOT_FOUND"),  # no such key
            (owner, project["id"], "not-a-key-id", "INVALID_ID"),
            (other, other_project["id"], key.body["id"], "ENCRYPTION_KEY_NOT_FOUND")):  # another customer's
        refused = set_key(client, project_id, value)
        assert refused.status == 400 and _reason(refused.body) == reason, refused.body
        assert _violations(refused.body) == ["project.encryption_key_id"]
    assert other.get(f"/v1/projects/{other_project['id']}").body.get("encryptionKeyId", "") == ""  # unchanged
    assert set_key(owner, project["id"], key.body["id"]).body["encryptionKeyId"] == key.body["id"]

    disabled = owner.post(f"/v1/keys/{key.body['id']}:disable", {"acknowledgeDataLoss": True})
    assert disabled.status == 200, disabled.body
    refused = owner.post(f"/v1/customers/{owner_id}/projects", {"name": "late", "encryptionKeyId": key.body["id"]})
    assert refused.status == 400 and _reason(refused.body) == "ENCRYPTION_KEY_DISABLED", refused.body


@pytest.mark.parametrize(("raw", "status", "needle"), [
    (b'{"name": "x", "email": ', 400, "json"),                    # malformed JSON
    (b'{"name": "x", "email": "e@x.io", "colour": "red"}', 400, "colour"),  # unknown field
    (b'{"name": 42, "email": "e@x.io"}', 400, "name"),            # wrong type
    (b'{"email": "e@x.io"}', 400, "name"),                        # missing required field
    (b'{"name": "x", "email": "not an email"}', 400, "email"),    # invalid value
])
def test_bad_input_is_a_clear_4xx(admin: Client, raw: bytes, status: int, needle: str) -> None:
    resp = admin.call("POST", "/v1/customers", raw=raw)
    assert resp.status == status, resp.body
    text = (resp.body["message"] + " " + " ".join(_violations(resp.body))).lower()
    assert needle in text, resp.body


def test_oversized_body_is_413(admin: Client) -> None:
    huge = b'{"name": "' + b"x" * (5 * 1024 * 1024) + b'", "email": "e@x.io"}'
    resp = admin.call("POST", "/v1/customers", raw=huge)
    assert resp.status == 413, resp.body


def test_unknown_route_is_404_json(admin: Client) -> None:
    resp = admin.get("/v1/nothing-here")
    assert resp.status == 404 and isinstance(resp.body, dict) and "code" in resp.body


def test_bad_input_changes_nothing(admin: Client) -> None:
    before = admin.get("/v1/customers?pageSize=500").body["customers"]
    admin.call("POST", "/v1/customers", raw=b'{"name": "ghost", "email": "nope"}')
    after = admin.get("/v1/customers?pageSize=500").body["customers"]
    assert len(after) == len(before)
