"""The gateway over real HTTP in front of a real gRPC server (test doubles of the services)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.openapi import render_openapi
from innosystem.kit import principal
from tests.gateway.conftest import config_for, serving
from tests.gateway.doubles import ADMIN_KEY, CUSTOMER_KEY, Recorder, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CUSTOMER = {"Authorization": f"Bearer {CUSTOMER_KEY}"}


def reason(body: dict[str, Any]) -> str:
    return next(d["reason"] for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))


def violations(body: dict[str, Any]) -> list[str]:
    return [v["field"] for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")
            for v in d["fieldViolations"]]


async def json_of(resp: aiohttp.ClientResponse) -> Any:
    assert resp.content_type == "application/json"
    return json.loads(await resp.read())


# --- filling requests and rendering answers ----------------------------------------------------

async def test_path_variable_fills_the_request_and_defaults_are_rendered(client: TestClient,
                                                                          recorder: Recorder) -> None:
    resp = await client.get("/v1/customers/c-42", headers=ADMIN)
    assert resp.status == 200
    body = await json_of(resp)
    assert body == {"id": "c-42", "name": "Customer c-42", "email": "c@example.com", "resellerId": "",
                    "active": False}
    assert recorder.named("GetCustomer")[0].request.customer_id == "c-42"


async def test_percent_encoded_path_value(client: TestClient, recorder: Recorder) -> None:
    assert (await client.get("/v1/customers/a%2Fb%20c", headers=ADMIN)).status == 200
    assert recorder.named("GetCustomer")[0].request.customer_id == "a/b c"


async def test_query_parameters_fill_the_request(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/customers?pageSize=25&page_token=abc&resellerId=r-1", headers=ADMIN)
    assert resp.status == 200
    request = recorder.named("ListCustomers")[0].request
    assert (request.page_size, request.page_token, request.reseller_id) == (25, "abc", "r-1")


async def test_body_field_fills_its_field_and_the_answer_is_lower_camel_case(client: TestClient,
                                                                              recorder: Recorder) -> None:
    resp = await client.post("/v1/customers?requestId=req-1", headers=ADMIN,
                             json={"name": "Acme", "email": "a@acme.example", "active": True})
    assert resp.status == 200
    assert (await json_of(resp))["apiKey"] == "isk_new"
    request = recorder.named("CreateCustomer")[0].request
    assert (request.customer.name, request.customer.active, request.request_id) == ("Acme", True, "req-1")


async def test_patch_with_an_update_mask(client: TestClient, recorder: Recorder) -> None:
    resp = await client.patch("/v1/customers/c-7?updateMask=name,resellerId", headers=ADMIN, json={"name": "New"})
    assert resp.status == 200 and (await json_of(resp))["id"] == "c-7"
    request = recorder.named("UpdateCustomer")[0].request
    assert list(request.update_mask.paths) == ["name", "reseller_id"] and request.customer.name == "New"


async def test_custom_verb_with_an_empty_body(client: TestClient) -> None:
    resp = await client.post("/v1/customers/c-7:rotateApiKey", headers=ADMIN)
    assert resp.status == 200 and await json_of(resp) == {"apiKey": "isk_rotated_c-7"}


async def test_every_field_kind_through_query_and_back(client: TestClient) -> None:
    resp = await client.get("/v1/samples/s1?big=9007199254740993&tags=a&tags=b&color=COLOR_RED&flag=true&"
                            "when=2025-01-31T12:00:00Z&inner.note=hi&maybe=5", headers=ADMIN)
    body = await json_of(resp)
    assert resp.status == 200
    assert body["big"] == "9007199254740993" and body["tags"] == ["a", "b"] and body["color"] == "COLOR_RED"
    assert body["when"] == "2025-01-31T12:00:00Z" and body["inner"] == {"note": "hi", "level": 0}
    assert body["maybe"] == 5 and body["flag"] is True


async def test_response_body_rule(client: TestClient) -> None:
    resp = await client.get("/v1/samples/s1/inner?inner.level=3", headers=ADMIN)
    assert await json_of(resp) == {"note": "", "level": 3}


# --- authentication ------------------------------------------------------------------------------

async def test_the_principal_reaches_the_service_signed(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/me", headers=CUSTOMER)
    assert resp.status == 200
    assert (await json_of(resp))["principal"]["customerId"] == "c-1"
    served = recorder.named("GetMe")[0]
    assert served.principal is not None and served.principal.kind == principal.CUSTOMER
    assert served.principal.customer_id == "c-1"
    assert "authorization" not in served.metadata  # the key itself never travels past the gateway
    auth = recorder.named("Authenticate")[0]
    assert auth.principal is not None and auth.principal.kind == principal.SERVICE
    assert auth.principal.service == "gateway"


async def test_answers_are_cached_by_key(client: TestClient, recorder: Recorder) -> None:
    for _ in range(3):
        assert (await client.get("/v1/me", headers=CUSTOMER)).status == 200
    for _ in range(3):
        assert (await client.get("/v1/me", headers={"Authorization": "Bearer isk_wrong"})).status == 401
    keys = [c.request.api_key for c in recorder.named("Authenticate")]
    assert keys == [CUSTOMER_KEY, "isk_wrong"]


async def test_a_bad_key_is_401_with_the_tenancy_reason(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/me", headers={"Authorization": "Bearer isk_wrong"})
    body = await json_of(resp)
    assert resp.status == 401 and body["code"] == 16 and reason(body) == "API_KEY_INVALID"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert recorder.named("GetMe") == []


@pytest.mark.parametrize("path", ["/v1/me", "/v1/customers/0/accessLogs:verify", "/v1/customers?pageSize=ten",
                                  "/v1/nothing-here"])
async def test_no_key_is_401_before_routing_validation_or_any_upstream_call(client: TestClient, recorder: Recorder,
                                                                            path: str) -> None:
    resp = await client.get(path)
    body = await json_of(resp)
    assert resp.status == 401 and body["code"] == 16 and reason(body) == "NO_CREDENTIALS", body
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert recorder.calls == []


async def test_a_bad_key_is_401_before_validation(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/customers?pageSize=ten", headers={"Authorization": "Bearer isk_wrong"})
    assert resp.status == 401 and reason(await json_of(resp)) == "API_KEY_INVALID"
    assert [c.method for c in recorder.calls] == ["Authenticate"]


async def test_a_forged_principal_header_does_not_pass(client: TestClient, recorder: Recorder) -> None:
    forged = principal.sign(principal.service_principal("jobs"), b"not the secret",
                            "/innosystem.tenancy.v1.TenancyService/GetMe")
    resp = await client.get("/v1/me", headers=dict(forged))
    assert resp.status == 401
    assert recorder.calls == []  # outside principal headers are no credentials


async def test_a_malformed_authorization_header_is_401_at_the_gateway(client: TestClient,
                                                                      recorder: Recorder) -> None:
    resp = await client.get("/v1/me", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert resp.status == 401 and reason(await json_of(resp)) == "MALFORMED_AUTHORIZATION"
    assert recorder.calls == []


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body", "why", "field"), [
    ("POST", "/v1/customers", b'{"name": "x", "email": ', "MALFORMED_JSON", None),
    ("POST", "/v1/customers", b'{"name": "x", "email": "e@x.io", "colour": "red"}', "UNKNOWN_FIELD",
     "customer.colour"),
    ("POST", "/v1/customers", b'{"name": 42, "email": "e@x.io"}', "INVALID_FIELD_VALUE", "customer.name"),
    ("POST", "/v1/customers", b'{"email": "e@x.io"}', "REQUIRED_FIELD_MISSING", "customer.name"),
    ("POST", "/v1/samples/s1:echo", b'{"color": "PURPLE"}', "INVALID_FIELD_VALUE", "color"),
    ("POST", "/v1/samples/s1:echo", b'{"id": "s2"}', "PATH_BODY_MISMATCH", "id"),
    ("DELETE", "/v1/customers/c-1?force=maybe", b"", "INVALID_FIELD_VALUE", "force"),
    ("GET", "/v1/customers?pageSize=ten", b"", "INVALID_FIELD_VALUE", "pageSize"),
    ("GET", "/v1/customers?colour=red", b"", "UNKNOWN_FIELD", "colour"),
    ("GET", "/v1/customers/c-1", b'{"name": "x"}', "BODY_NOT_ALLOWED", None),
])
async def test_each_bad_input_is_a_4xx_that_names_the_problem(client: TestClient, recorder: Recorder, method: str,
                                                              path: str, body: bytes, why: str,
                                                              field: str | None) -> None:
    resp = await client.request(method, path, data=body, headers={**ADMIN, "Content-Type": "application/json"})
    answer = await json_of(resp)
    assert resp.status == 400, answer
    assert answer["code"] == 3 and reason(answer) == why
    if field is not None:
        assert violations(answer) == [field] and field in answer["message"]
    assert [c.method for c in recorder.calls] == ["Authenticate"]  # nothing reached the method


async def test_an_oversized_body_is_413(client: TestClient, recorder: Recorder) -> None:
    huge = b'{"name": "' + b"x" * (32 * 1024) + b'", "email": "e@x.io"}'
    resp = await client.post("/v1/customers", data=huge, headers=ADMIN)
    body = await json_of(resp)
    assert resp.status == 413 and reason(body) == "BODY_TOO_LARGE" and "16384 bytes" in body["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(40):
            yield b" " * 1024

    resp = await client.post("/v1/customers", data=chunks(), headers=ADMIN)
    assert resp.status == 413 and reason(await json_of(resp)) == "BODY_TOO_LARGE"
    assert recorder.named("CreateCustomer") == []


async def test_unknown_path_is_404_and_wrong_method_is_405(client: TestClient) -> None:
    resp = await client.get("/v1/nothing-here", headers=ADMIN)
    body = await json_of(resp)
    assert resp.status == 404 and body["code"] == 5 and reason(body) == "ROUTE_NOT_FOUND"
    resp = await client.put("/v1/customers/c-1", json={}, headers=ADMIN)
    body = await json_of(resp)
    assert resp.status == 405 and resp.headers["Allow"] == "DELETE, GET, PATCH"
    assert reason(body) == "METHOD_NOT_ALLOWED" and body["code"] == 12


# --- upstream errors -----------------------------------------------------------------------------

async def test_an_upstream_status_keeps_error_info_and_bad_request(client: TestClient) -> None:
    resp = await client.delete("/v1/customers/c-1", headers=ADMIN)
    assert resp.status == 400  # FAILED_PRECONDITION
    assert await json_of(resp) == {
        "code": 9,
        "message": "the customer has 2 projects",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CUSTOMER_HAS_PROJECTS",
             "domain": "tenancy.innosystem", "metadata": {"projects": "2"}},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"field": "force", "description": "set force=true to delete the projects too", "reason": ""}]},
            # added by the gateway, in the language the caller accepts (English by default)
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en",
             "message": "The customer still has projects."},
        ],
    }
    assert (await client.delete("/v1/customers/c-1?force=true", headers=ADMIN)).status == 200


async def test_not_found_and_unimplemented_upstream(client: TestClient) -> None:
    resp = await client.get("/v1/customers/missing", headers=ADMIN)
    assert resp.status == 404 and reason(await json_of(resp)) == "CUSTOMER_NOT_FOUND"
    resp = await client.get("/v1/resellers/r-1", headers=ADMIN)  # the double does not implement it
    assert resp.status == 501 and (await json_of(resp))["code"] == 12


async def test_an_upstream_crash_is_an_opaque_500(client: TestClient) -> None:
    resp = await client.get("/v1/customers/boom", headers=ADMIN)
    body = await json_of(resp)
    assert resp.status == 500 and body["code"] == 2
    assert "secret" not in json.dumps(body)


async def test_the_deadline_bounds_the_upstream_call(upstream_port: int, sample_set_path: Path) -> None:
    async with serving(config_for(upstream_port, sample_set_path, deadline_seconds=0.2)) as c:
        resp = await c.get("/v1/customers/slow-5", headers=ADMIN)
        assert resp.status == 504 and (await json_of(resp))["code"] == 4


async def test_an_upstream_that_is_down_is_503(sample_set_path: Path) -> None:
    async with serving(config_for(free_port(), sample_set_path)) as c:
        resp = await c.get("/v1/customers/c-1", headers=ADMIN)  # authentication cannot happen
        body = await json_of(resp)
        assert resp.status == 503 and reason(body) == "UPSTREAM_UNAVAILABLE" and body["code"] == 14
        ready = await c.get("/readyz")
        assert ready.status == 503 and (await json_of(ready))["upstreams"]["tenancy"] == "UNAVAILABLE"
        assert (await c.get("/healthz")).status == 200  # the gateway itself runs


# --- request ids, health, OpenAPI ---------------------------------------------------------------

async def test_request_id_is_propagated_and_echoed(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/customers/c-1", headers={**ADMIN, "X-Request-Id": "req-abc.1"})
    assert resp.headers["X-Request-Id"] == "req-abc.1"
    assert recorder.named("GetCustomer")[0].metadata["x-request-id"] == "req-abc.1"
    resp = await client.get("/v1/nothing", headers={**ADMIN, "X-Request-Id": "bad id\twith spaces"})
    generated = resp.headers["X-Request-Id"]
    assert resp.status == 404 and len(generated) == 32 and generated != "bad id\twith spaces"


async def test_health_and_readiness(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await json_of(resp) == {"status": "SERVING"}
    resp = await client.get("/readyz")
    body = await json_of(resp)
    assert resp.status == 200 and body["status"] == "SERVING" and body["upstreams"]["tenancy"] == "SERVING"


async def test_openapi_is_served_from_the_same_descriptors(client: TestClient, sample_set: bytes) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert await resp.read() == render_openapi(sample_set).encode()
