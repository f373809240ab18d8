"""What the client raises: the platform's `google.rpc.Status` as an exception, and the client's own
failures (a wait that ran out, a platform that could not be reached after every retry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


class ClientError(Exception):
    """Anything the client raises."""


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ApiError(ClientError):
    """The platform refused the request: the HTTP status, the gRPC code, the stable `reason`
    (UPPER_SNAKE, from `google.rpc.ErrorInfo`) and, when a field was wrong, which one and why."""

    def __init__(self, http_status: int, body: Any, *, method: str = "", path: str = "") -> None:
        status = body if isinstance(body, dict) else {}
        self.http_status = http_status
        self.code: int = int(status.get("code", 0) or 0)
        self.message: str = str(status.get("message") or (body if isinstance(body, str) else "") or "")
        self.reason: str = ""
        self.domain: str = ""
        self.metadata: dict[str, str] = {}
        self.field_violations: list[FieldViolation] = []
        for detail in status.get("details", []) or []:
            kind = detail.get("@type")
            if kind == _ERROR_INFO:
                self.reason = detail.get("reason", "")
                self.domain = detail.get("domain", "")
                self.metadata = dict(detail.get("metadata", {}))
            elif kind == _BAD_REQUEST:
                self.field_violations += [FieldViolation(v.get("field", ""), v.get("description", ""))
                                          for v in detail.get("fieldViolations", [])]
        self.body = body
        where = f"{method} {path}: " if method else ""
        reason = f" {self.reason}" if self.reason else ""
        fields = "".join(f"; {v.field}: {v.description}" for v in self.field_violations
                         if v.description not in self.message)
        super().__init__(f"{where}HTTP {http_status}{reason}: {self.message}{fields}")


class TransportError(ClientError):
    """The platform could not be reached (or answered garbage) after every retry."""


@dataclass
class WaitTimeout(ClientError):
    """A wait ran out before the job reached a final status; `job` is its last known state."""

    job_id: str
    timeout: float
    job: Any = field(default=None)

    def __str__(self) -> str:
        return f"job {self.job_id} was not final after {self.timeout:g}s"
