"""Errors on the HTTP side: `google.rpc.Status` as proto3 JSON, with grpc-gateway's status table.

Upstream errors keep their Status (ErrorInfo, BadRequest, ...) from `grpc-status-details-bin`.
The gateway's own errors use the same shape with domain `gateway.innosystem`, so a client
handles one error format whichever side refused the request.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from innosystem.kit.errors import DOMAIN_SUFFIX, DomainError, to_status

log = logging.getLogger(__name__)

DOMAIN = "gateway" + DOMAIN_SUFFIX
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# grpc-gateway's runtime.HTTPStatusFromCode.
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

# Codes whose plain message (without a Status from the service) may carry a stack trace or an
# address: the client gets a generic message and the log gets the original.
_OPAQUE = {code_pb2.UNKNOWN, code_pb2.INTERNAL, code_pb2.DATA_LOSS, code_pb2.UNAVAILABLE}


def http_status(code: int) -> int:
    return HTTP_STATUS.get(code, 500)


class GatewayError(Exception):
    """A request the gateway itself refuses; `status` is what the client receives."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        violations: Sequence[tuple[str, str]] = (),
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = _status(code.value[0], message, reason, violations, metadata or {}, retry_delay)
        self.http_status = http_status or HTTP_STATUS[self.status.code]
        self.headers = dict(headers or {})


class UpstreamError(Exception):
    """An upstream call failed; `status` is the Status to render (already made safe to show)."""

    def __init__(self, status: status_pb2.Status, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status.message)
        self.status = status
        self.http_status = http_status(status.code)
        self.headers = dict(headers or {})


def _status(code: int, message: str, reason: str, violations: Sequence[tuple[str, str]],
            metadata: Mapping[str, str], retry_delay: float | None = None) -> status_pb2.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
        ])))
    if retry_delay is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(round(retry_delay * 1e9))
        details.append(_pack(info))
    return status_pb2.Status(code=code, message=message, details=details)


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest
          | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def from_domain_error(err: DomainError, upstream: str) -> UpstreamError:
    """A DomainError raised by the common library's clients (kept reason and violations)."""
    status = to_status(err, err.domain or upstream + DOMAIN_SUFFIX)
    if err.domain is None and status.code in _OPAQUE:
        log.warning("%s call failed: %s %s", upstream, err.code.name, err.message)
        status = _generic(status.code, upstream)
    return UpstreamError(status)


def from_rpc_error(exc: grpc.aio.AioRpcError, upstream: str) -> UpstreamError:
    """The Status an upstream sent, from its trailers when it attached one."""
    code = exc.code().value[0]
    status = _status_details(exc)
    if status is None or status.code != code:  # a Status disagreeing with the call's code is ignored
        if code in _OPAQUE:
            log.warning("%s call failed: %s %s", upstream, exc.code().name, exc.details())
            status = _generic(code, upstream)
        else:  # still one ErrorInfo, as every error has; the reason is the code's name
            status = _status(code, exc.details() or exc.code().name, exc.code().name, (), {"service": upstream})
    return UpstreamError(status)


def _generic(code: int, upstream: str) -> status_pb2.Status:
    if code == code_pb2.UNAVAILABLE:
        return _status(code, f"the {upstream} service is unavailable; retry later", "UPSTREAM_UNAVAILABLE",
                       (), {"service": upstream})
    return _status(code, "internal error", "INTERNAL", (), {"service": upstream})


def _status_details(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in exc.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a peer's garbage must not turn into our 500
                log.warning("undecodable %s from upstream", STATUS_DETAILS_KEY)
                return None
    return None


def status_dict(status: status_pb2.Status) -> dict[str, object]:
    return {"code": status.code, "message": status.message, "details": [_detail(d) for d in status.details]}


def status_json(status: status_pb2.Status) -> bytes:
    return json.dumps(status_dict(status), separators=(",", ":"), ensure_ascii=False).encode()


def _detail(detail: any_pb2.Any) -> dict[str, object]:
    try:
        return json_format.MessageToDict(detail, always_print_fields_with_no_presence=True)
    except (TypeError, KeyError, json_format.Error):
        # A detail type this process does not know still reaches the client, as raw bytes.
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}
