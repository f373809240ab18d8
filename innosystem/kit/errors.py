"""Domain errors, and their one mapping to and from `google.rpc.Status`.

Services raise these; the server's error interceptor turns them into a Status with one
`ErrorInfo` (reason in UPPER_SNAKE, domain = the service) and, where a field is wrong, a
`BadRequest` with field violations. Clients turn a received Status back into the same
exception with `from_rpc_error`, so a reason survives hops between services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN_SUFFIX = ".innosystem"
# Refusals certain to have changed nothing (a bad item, a wallet short, a request id reused …): a
# call of several submits refused so may send each again alone, to its own answer.
UNCHANGED_REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE})


class DomainError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
        domain: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations: list[tuple[str, str]] = list(violations)
        if field is not None:
            self.violations.insert(0, (field, message))
        self.metadata = dict(metadata or {})
        self.domain = domain

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


_BY_CODE: dict[grpc.StatusCode, type[DomainError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Aborted, PermissionDenied,
                Unauthenticated, ResourceExhausted, Unavailable, DeadlineExceeded, Unimplemented, DomainError)
}


def to_status(err: DomainError, domain: str) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=err.domain or domain, metadata=err.metadata)
    details = [_pack(info)]
    if err.violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in err.violations
        ])
        details.append(_pack(bad))
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=details)


def internal_status(trace_id: str) -> status_pb2.Status:
    """What a client sees for an unexpected exception: nothing but where to look in the logs."""
    message = f"internal error (trace id {trace_id})" if trace_id else "internal error"
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)


def rpc_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The error a unary call answered with `status` raises: its code, details and the Status in
    the trailers (where `from_rpc_error` reads the reason and field violations). For an answer
    that did not come by a call (a stream's message, a service in the same process)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=status.message)


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError) -> DomainError:
    """Rebuild the domain error a peer raised, keeping its reason and field violations."""
    code: grpc.StatusCode = exc.code()
    message: str = exc.details() or code.name
    reason, domain, metadata, violations = None, None, {}, []
    status = _status_of(exc)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(code, DomainError)
    err = cls(message, reason=reason or code.name, violations=violations, metadata=metadata, domain=domain)
    err.code = code
    return err


def _status_of(exc: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
