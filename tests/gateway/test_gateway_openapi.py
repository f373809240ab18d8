"""The OpenAPI document: complete, deterministic, and true to the proto3 JSON mapping."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.descriptors import parse_descriptor_set
from gateway.openapi import _int64_pattern, render_openapi
from gateway.routes import http_rule


@pytest.fixture(scope="module")
def doc(sample_set: bytes) -> dict[str, Any]:
    return json.loads(render_openapi(sample_set))


@pytest.fixture(scope="module")
def schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]


def operations(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {op["operationId"]: (method, path, op) for path, item in doc["paths"].items()
            for method, op in item.items()}


def test_every_method_with_an_http_rule_is_an_operation(descriptor_set: bytes) -> None:
    doc = json.loads(render_openapi(descriptor_set))
    files = parse_descriptor_set(descriptor_set)
    expected = {f"{s.name}_{m.name}" for f in files.file for s in f.service for m in s.method
                if http_rule(m) is not None}
    assert expected and expected <= set(operations(doc))
    assert "TenancyService_Authenticate" not in operations(doc)  # internal: no rule, no operation
    assert doc["openapi"] == "3.1.0"


def test_output_is_deterministic_and_sorted(sample_set: bytes) -> None:
    first = render_openapi(sample_set)
    assert first == render_openapi(sample_set)
    assert first == json.dumps(json.loads(first), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_required_and_read_only_follow_field_behavior(schemas: dict[str, Any]) -> None:
    customer = schemas["innosystem.tenancy.v1.Customer"]
    assert customer["required"] == ["name", "email"]
    assert customer["properties"]["id"]["readOnly"] is True
    assert customer["properties"]["createTime"] == {"type": ["string", "null"], "format": "date-time",
                                                    "readOnly": True}  # proto3 JSON: null is "not set"
    assert "readOnly" not in customer["properties"]["name"]


def test_proto3_json_types(schemas: dict[str, Any]) -> None:
    props = schemas["innosystem.tenancy.v1.Sample"]["properties"]
    # proto3 JSON writes a 64-bit integer as a string and reads a string or a number
    assert props["big"] == {"type": ["string", "integer", "null"], "format": "int64", "pattern": "^-?[0-9]{1,18}$",
                            "minimum": -(2**63), "maximum": 2**63 - 1, "description": "A 64-bit count."}
    assert props["count"] == {"type": ["integer", "null"], "format": "int32", "minimum": -(2**31),
                              "maximum": 2**31 - 1}
    assert props["small"]["format"] == "uint32" and props["ratio32"]["format"] == "float"
    assert props["blob"]["format"] == "byte"
    assert props["tags"] == {"type": ["array", "null"], "items": {"type": "string"}}
    assert props["inners"] == {"type": ["array", "null"],
                               "items": {"$ref": "#/components/schemas/innosystem.tenancy.v1.Inner"}}
    assert props["counts"] == {"type": ["object", "null"], "additionalProperties": {
        "type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}}
    assert props["named"]["additionalProperties"] == {"$ref": "#/components/schemas/innosystem.tenancy.v1.Inner"}
    assert props["when"] == {"type": ["string", "null"], "format": "date-time"}
    assert props["wait"]["type"] == ["string", "null"] and props["mask"]["type"] == ["string", "null"]
    # any JSON, but no NUL in a key or a string at any depth (PostgreSQL cannot store one)
    assert props["extra"] == {"type": ["object", "null"], "propertyNames": {"pattern": "^[^\u0000]*$"},
                              "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"}}
    assert props["maybe"]["type"] == ["integer", "null"]
    assert props["color"] == {"anyOf": [{"$ref": "#/components/schemas/innosystem.tenancy.v1.Color"},
                                        {"type": "null"}]}
    assert props["output"]["readOnly"] is True
    color = schemas["innosystem.tenancy.v1.Color"]
    assert color["type"] == ["string", "integer"]  # by name or number, as proto3 JSON reads them
    assert color["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE", 0, 1, 2]
    assert "`COLOR_RED`: Like a tomato." in color["description"]
    assert schemas["innosystem.tenancy.v1.Sample"]["description"] == "A sample of every field kind."
    assert "CountsEntry" not in json.dumps(schemas)  # map entries are not types of their own


def test_recursive_messages_are_components(schemas: dict[str, Any]) -> None:
    inner = schemas["innosystem.tenancy.v1.Inner"]
    assert inner["properties"]["child"] == {"anyOf": [{"$ref": "#/components/schemas/innosystem.tenancy.v1.Inner"},
                                                      {"type": "null"}]}


def test_get_has_path_and_query_parameters(doc: dict[str, Any]) -> None:
    method, path, op = operations(doc)["GatewayTestService_Echo_1"]
    assert (method, path) == ("get", "/v1/samples/{id}")
    params = {p["name"]: p for p in op["parameters"]}
    assert params["id"] == {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    assert params["big"]["in"] == "query" and params["big"]["schema"]["format"] == "int64"
    assert params["inner.note"]["in"] == "query" and params["inner.child.level"]["in"] == "query"
    assert params["tags"]["schema"]["type"] == "array"
    assert params["when"]["schema"]["format"] == "date-time"
    assert "counts" not in params and "extra" not in params and "inners" not in params


def test_body_star_schema_leaves_out_the_path_fields(doc: dict[str, Any]) -> None:
    method, path, op = operations(doc)["GatewayTestService_Echo"]
    assert (method, path) == ("post", "/v1/samples/{id}:echo")
    assert "parameters" in op and [p["in"] for p in op["parameters"]] == ["path"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert "id" not in body["properties"] and "count" in body["properties"]
    assert "required" not in body  # `id`, the only required field, is in the path


def test_body_field_and_other_fields_as_query(doc: dict[str, Any]) -> None:
    _, path, op = operations(doc)["TenancyService_UpdateCustomer"]
    assert path == "/v1/customers/{customer_id}"
    assert op["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/innosystem.tenancy.v1.CustomerUpdate"}
    assert op["requestBody"]["required"] is True
    update = doc["components"]["schemas"]["innosystem.tenancy.v1.CustomerUpdate"]
    assert "required" not in update and "minLength" not in update["properties"]["name"]  # the mask decides
    assert update["properties"]["email"]["pattern"]  # what a value must look like still holds
    assert [p["name"] for p in op["parameters"]] == ["customer_id", "updateMask"]


def test_responses_errors_security_and_tags(doc: dict[str, Any]) -> None:
    _, _, op = operations(doc)["TenancyService_GetCustomer"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/innosystem.tenancy.v1.Customer"}
    assert op["responses"]["default"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/google.rpc.Status"}
    assert op["tags"] == ["innosystem.tenancy.v1.TenancyService"]
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["components"]["schemas"]["google.rpc.Status"]["properties"]["details"]["items"] == \
        {"$ref": "#/components/schemas/google.protobuf.Any"}
    tags = {t["name"]: t.get("description") for t in doc["tags"]}
    assert tags["innosystem.tenancy.v1.GatewayTestService"] == "Exercises the gateway."


def test_streaming_methods_are_event_streams(doc: dict[str, Any]) -> None:
    _, path, op = operations(doc)["GatewayTestService_Watch"]
    assert path == "/v1/samples/{id}:watch"
    assert op["description"] == "Streams the sample back."
    assert list(op["responses"]["200"]["content"]) == ["text/event-stream"]


def test_response_body_and_empty(doc: dict[str, Any]) -> None:
    _, _, op = operations(doc)["GatewayTestService_InnerOnly"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/innosystem.tenancy.v1.Inner"}
    _, _, delete = operations(doc)["TenancyService_DeleteCustomer"]
    assert delete["responses"]["200"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert [p["name"] for p in delete["parameters"]] == ["customer_id", "force"]


def test_every_reference_resolves(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].removeprefix("#/components/schemas/"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs and refs <= set(schemas)
    assert all(schemas[name] for name in schemas)  # no placeholder left empty


def test_what_the_server_enforces_is_in_the_document(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Strictness comes from the generator, so every route has it: closed objects, REQUIRED fields
    that may not be empty, UUID path ids, page sizes, the security scheme and every error answer on
    every operation, and the (innosystem.common.v1.schema) annotations."""
    customer = schemas["innosystem.tenancy.v1.Customer"]
    assert customer["additionalProperties"] is False
    assert customer["properties"]["name"]["minLength"] == 1
    # tenancy's rule; ECMA-262's \s lacks \x1c-\x1f and \x85, which Python's has; no NUL is stored
    assert customer["properties"]["email"]["pattern"] == \
        r"^[^@\s\x00\x1c-\x1f\x85]+@[^@\s\x00\x1c-\x1f\x85]+\.[^@\s\x00\x1c-\x1f\x85]+$"
    hook = schemas["innosystem.jobs.v1.Webhook"]["properties"]
    assert hook["events"]["minItems"] == 1 and "job.succeeded" in hook["events"]["items"]["enum"]
    public = {("post", "/v1/sessions"), ("post", "/v1/invitations/{token}:accept"), ("post", "/v1/passwordResets"),
              ("post", "/v1/passwordResets/{token}:complete")}  # for people without credentials yet
    for method, path, op in operations(doc).values():
        assert op["security"] == ([] if (method, path) in public else [{"bearerAuth": []}]), (method, path)
        for code in ("400", "401", "403", "404", "409", "429", "500", "503", "default"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/google.rpc.Status"}, (method, path, code)
        for p in op.get("parameters", []):
            if p["in"] == "path" and p["name"].endswith("_id"):
                assert p["schema"]["format"] == "uuid", (method, path, p)
            if p["name"] == "pageSize":
                assert p["schema"]["minimum"] == 0


@pytest.mark.parametrize(("low", "high", "nonzero", "good", "bad"), [
    (1, 100_000_000_000, False, ["1", "99999999999", "100000000000", "007"], ["0", "-1", "100000000001"]),
    (0, 100_000_000_000, False, ["0", "100000000000"], ["-1", "999999999999"]),
    (-100, 100, True, ["-5", "99", "100"], ["0", "000", "101"]),
    (None, None, False, ["-123", "0"], ["1234567890123456789", "1.5"]),
])
def test_a_64_bit_bound_as_a_pattern_on_the_string(low: int | None, high: int | None, nonzero: bool,
                                                     good: list[str], bad: list[str]) -> None:
    """Never wider than the bounds (a string the pattern takes is in range); exact at a power of ten."""
    pattern = re.compile(_int64_pattern(low, high, nonzero))
    assert [v for v in good if not pattern.match(v)] == []
    assert [v for v in bad if pattern.match(v)] == []
