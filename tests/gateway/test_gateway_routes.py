"""The route table built from the descriptor set: what matches, what is 404 and 405."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from gateway.descriptors import DescriptorSetError, build_pool, parse_descriptor_set
from gateway.routes import MethodNotAllowed, RouteNotFound, RouteTable, http_rule, load_routes
from tests.gateway.doubles import SAMPLE_FILE, SAMPLE_SERVICE


def table_of(data: bytes) -> RouteTable:
    files = parse_descriptor_set(data)
    return RouteTable(load_routes(files, build_pool(files)))


@pytest.fixture(scope="module")
def table(sample_set: bytes) -> RouteTable:
    return table_of(sample_set)


def rpc_at(table: RouteTable, method: str, path: str) -> tuple[str, list[str]]:
    found = table.match(method, path)
    return found.route.rpc.full_name, found.path_values


def test_every_http_rule_of_the_descriptor_set_is_routed(descriptor_set: bytes) -> None:
    files = parse_descriptor_set(descriptor_set)
    expected = {f"{f.package}.{s.name}.{m.name}" for f in files.file for s in f.service for m in s.method
                if http_rule(m) is not None and not m.client_streaming}
    routed = {r.rpc.full_name for r in table_of(descriptor_set).routes}
    assert expected and routed == expected


def test_tenancy_routes(table: RouteTable) -> None:
    assert rpc_at(table, "GET", "/v1/customers/c-1") == ("innosystem.tenancy.v1.TenancyService.GetCustomer", ["c-1"])
    assert rpc_at(table, "POST", "/v1/customers/c-1:rotateApiKey") == \
        ("innosystem.tenancy.v1.TenancyService.RotateCustomerApiKey", ["c-1"])
    assert rpc_at(table, "GET", "/v1/customers/c-1/projects")[0].endswith(".ListProjects")
    assert rpc_at(table, "GET", "/v1/me") == ("innosystem.tenancy.v1.TenancyService.GetMe", [])


def test_a_literal_segment_wins_over_a_variable(table: RouteTable) -> None:
    assert rpc_at(table, "GET", "/v1/samples/special") == (f"{SAMPLE_SERVICE}.Special", [])
    assert rpc_at(table, "GET", "/v1/samples/other") == (f"{SAMPLE_SERVICE}.Echo", ["other"])


def test_custom_verb_and_additional_bindings(table: RouteTable) -> None:
    assert rpc_at(table, "POST", "/v1/samples/s1:echo") == (f"{SAMPLE_SERVICE}.Echo", ["s1"])
    assert rpc_at(table, "GET", "/v1/samples/s1:watch") == (f"{SAMPLE_SERVICE}.Watch", ["s1"])
    put = table.match("PUT", "/v1/samples/s1")
    assert put.route.rpc.name == "Echo" and put.route.binding.body == "inner"


def test_a_colon_without_a_known_verb_belongs_to_the_segment(table: RouteTable) -> None:
    assert rpc_at(table, "GET", "/v1/samples/a:b") == (f"{SAMPLE_SERVICE}.Echo", ["a:b"])


def test_double_star_takes_the_rest_of_the_path(table: RouteTable) -> None:
    assert rpc_at(table, "GET", "/v1/notes/a/b%2Fc/d") == (f"{SAMPLE_SERVICE}.Note", ["a/b%2Fc/d"])
    assert rpc_at(table, "GET", "/v1/notes/x%20y") == (f"{SAMPLE_SERVICE}.Note", ["x y"])


def test_percent_encoded_single_segment_is_decoded(table: RouteTable) -> None:
    assert rpc_at(table, "GET", "/v1/customers/a%2Fb%20c")[1] == ["a/b c"]


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/customers/", "/v1/customers/c-1/extra/deep", "/",
                                  "/v1/customers//projects", "/v1/samples/s1:unknownVerb/x"])
def test_unknown_paths_are_not_found(table: RouteTable, path: str) -> None:
    with pytest.raises(RouteNotFound):
        table.match("GET", path)


def test_known_path_with_another_method_lists_the_allowed_ones(table: RouteTable) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("PUT", "/v1/customers/c-1")
    assert caught.value.allowed == ["DELETE", "GET", "PATCH"]
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("DELETE", "/v1/me")
    assert caught.value.allowed == ["GET"]


def test_a_verb_route_of_another_method_is_405_with_the_verbs_methods(table: RouteTable) -> None:
    """`GET …/c-1:rotateApiKey` is not GetCustomer of id "c-1:rotateApiKey" (grpc-gateway's
    fallback): the OpenAPI document says the path has POST only, and `Allow` says so too."""
    with pytest.raises(MethodNotAllowed) as raised:
        table.match("GET", "/v1/customers/c-1:rotateApiKey")
    assert raised.value.allowed == ["POST"]
    assert rpc_at(table, "GET", "/v1/customers/c-1%3ArotateApiKey") == \
        ("innosystem.tenancy.v1.TenancyService.GetCustomer", ["c-1:rotateApiKey"])  # an escaped colon is the id's


def _with_rule(base: bytes, rule: http_pb2.HttpRule, package: str) -> bytes:
    """`base` plus a file with one more method, carrying `rule`."""
    extra = descriptor_pb2.FileDescriptorProto()
    extra.CopyFrom(SAMPLE_FILE)
    extra.name, extra.package = "innosystem/extra.proto", package
    extra.ClearField("message_type")
    extra.ClearField("enum_type")
    extra.ClearField("source_code_info")
    extra.dependency.append(SAMPLE_FILE.name)
    extra.service[0].name = "ExtraService"
    del extra.service[0].method[:]
    sample = ".innosystem.tenancy.v1.Sample"
    method = extra.service[0].method.add(name="Extra", input_type=sample, output_type=sample)
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    files = parse_descriptor_set(base)
    files.file.append(extra)
    return files.SerializeToString()


@pytest.mark.parametrize(("rule", "package", "needle"), [
    (http_pb2.HttpRule(get="/v1/x/{nope}"), "innosystem.tenancy.v1", "no field nope"),
    (http_pb2.HttpRule(get="/v1/x/{inner}"), "innosystem.tenancy.v1", "singular scalar"),
    (http_pb2.HttpRule(get="/v1/x/{tags}"), "innosystem.tenancy.v1", "singular scalar"),
    (http_pb2.HttpRule(get="/v1/x/{id", body=""), "innosystem.tenancy.v1", "unclosed"),
    (http_pb2.HttpRule(post="/v1/x", body="nope"), "innosystem.tenancy.v1", "no field nope"),
    (http_pb2.HttpRule(get="/v1/x"), "innosystem.elsewhere.v1", "no known upstream"),
    (http_pb2.HttpRule(get="/v1/samples/{id}"), "innosystem.tenancy.v1", "clashes"),
])
def test_rules_the_gateway_cannot_serve_fail_at_start(sample_set: bytes, rule: http_pb2.HttpRule, package: str,
                                                      needle: str) -> None:
    data = _with_rule(sample_set, rule, package)
    with pytest.raises(DescriptorSetError, match=needle):
        table_of(data)
