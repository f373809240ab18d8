"""Error mapping: the gRPC → HTTP table, upstream Status passed through, safe fallbacks."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2

from gateway.errors import (
    DOMAIN,
    STATUS_DETAILS_KEY,
    GatewayError,
    from_domain_error,
    from_rpc_error,
    http_status,
    status_dict,
    status_json,
)
from innosystem.kit.errors import InvalidArgument, Unavailable, to_status

GRPC_GATEWAY_TABLE = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
}


@pytest.mark.parametrize(("name", "expected"), sorted(GRPC_GATEWAY_TABLE.items()))
def test_grpc_codes_map_to_grpc_gateway_http_statuses(name: str, expected: int) -> None:
    assert http_status(grpc.StatusCode[name].value[0]) == expected


def test_an_unknown_code_is_a_500() -> None:
    assert http_status(99) == 500


def rpc_error(code: grpc.StatusCode, details: str, status: status_pb2.Status | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if status is not None:
        trailing.add(STATUS_DETAILS_KEY, status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def test_an_upstream_status_keeps_its_error_info_and_field_violations() -> None:
    err = InvalidArgument("bad email", reason="EMAIL_INVALID", field="customer.email", metadata={"k": "v"})
    status = to_status(err, "tenancy.innosystem")
    out = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad email", status), "tenancy")
    assert out.http_status == 400
    assert status_dict(out.status) == {
        "code": 3,
        "message": "bad email",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "EMAIL_INVALID",
             "domain": "tenancy.innosystem", "metadata": {"k": "v"}},
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "customer.email", "description": "bad email", "reason": ""}]},
        ],
    }


def test_a_plain_upstream_error_gets_an_error_info_with_the_code_name() -> None:
    out = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "no such thing"), "jobs")
    body = status_dict(out.status)
    assert out.http_status == 404 and body["message"] == "no such thing"
    assert body["details"][0]["reason"] == "NOT_FOUND" and body["details"][0]["domain"] == DOMAIN


def test_a_status_that_disagrees_with_the_call_code_is_ignored() -> None:
    lying = status_pb2.Status(code=0, message="fine")
    out = from_rpc_error(rpc_error(grpc.StatusCode.PERMISSION_DENIED, "no", lying), "jobs")
    assert out.status.code == 7 and out.http_status == 403


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS])
def test_opaque_upstream_failures_do_not_leak_their_message(code: grpc.StatusCode) -> None:
    out = from_rpc_error(rpc_error(code, "Traceback: secret at /srv/app.py line 3"), "billing")
    assert "secret" not in status_json(out.status).decode()
    assert out.http_status == 500


def test_a_connection_failure_is_a_503_without_the_address() -> None:
    out = from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; "
                                                                "ipv4:10.0.0.7:50052"), "billing")
    body = status_dict(out.status)
    assert out.http_status == 503 and "10.0.0.7" not in json.dumps(body)
    assert body["details"][0]["reason"] == "UPSTREAM_UNAVAILABLE"
    assert body["details"][0]["metadata"] == {"service": "billing"}


def test_domain_errors_from_the_common_client_keep_their_reason() -> None:
    out = from_domain_error(InvalidArgument("nope", reason="X", domain="tenancy.innosystem"), "tenancy")
    assert status_dict(out.status)["details"][0] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "X", "domain": "tenancy.innosystem",
        "metadata": {}}
    down = from_domain_error(Unavailable("failed to connect to 127.0.0.1:1"), "tenancy")
    assert down.http_status == 503 and "127.0.0.1" not in status_json(down.status).decode()


def test_gateway_errors_carry_error_info_and_bad_request() -> None:
    err = GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_FIELD", "unknown field x",
                       violations=[("x", "unknown field x")])
    body = status_dict(err.status)
    assert err.http_status == 400
    assert body["details"][0]["reason"] == "UNKNOWN_FIELD" and body["details"][0]["domain"] == DOMAIN
    assert body["details"][1]["fieldViolations"][0]["field"] == "x"
    assert GatewayError(grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_ALLOWED", "m", http_status=405).http_status == 405


def test_a_detail_of_an_unknown_type_is_still_rendered() -> None:
    status = status_pb2.Status(code=3, message="m", details=[any_pb2.Any(type_url="type.example.com/x.Y",
                                                                          value=b"\x01\x02")])
    assert status_dict(status)["details"] == [{"@type": "type.example.com/x.Y", "value": "AQI="}]
