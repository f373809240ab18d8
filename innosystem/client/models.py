"""Typed results: the gateway's JSON (proto3 JSON, camelCase) read into dataclasses.

Each keeps the whole answer in `raw`, so a field the platform adds later is there before this
module names it. Money is integer cents (proto3 JSON sends int64 as a string); times are aware
datetimes; enum values keep their proto names (`JOB_STATUS_SUCCEEDED`), the stable contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

FINAL_STATUSES = frozenset({"JOB_STATUS_SUCCEEDED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"})


def _int(value: Any) -> int:
    return int(value or 0)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; `next_page_token` is empty on the last one."""

    items: list[T]
    next_page_token: str = ""

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Job:
    id: str
    project_id: str
    job_type_id: str
    status: str
    priority: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str = ""
    error_type: str = ""
    attempt_count: int = 0
    cost_cents: int = 0
    estimated_cost_cents: int = 0
    currency_code: str = ""
    request_id: str = ""
    dead_lettered: bool = False
    cancel_requested: bool = False
    create_time: datetime | None = None
    complete_time: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "JOB_STATUS_SUCCEEDED"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(
            id=d["id"], project_id=d.get("projectId", ""), job_type_id=d.get("jobTypeId", ""),
            status=d.get("status", "JOB_STATUS_UNSPECIFIED"), priority=d.get("priority", ""),
            payload=d.get("payload") or {}, result=d.get("result"), error=d.get("error", ""),
            error_type=d.get("errorType", ""), attempt_count=_int(d.get("attemptCount")),
            cost_cents=_int(d.get("costCents")), estimated_cost_cents=_int(d.get("estimatedCostCents")),
            currency_code=d.get("currencyCode", ""), request_id=d.get("requestId", ""),
            dead_lettered=bool(d.get("deadLettered")), cancel_requested=bool(d.get("cancelRequested")),
            create_time=_time(d.get("createTime")), complete_time=_time(d.get("completeTime")), raw=d)


@dataclass(frozen=True)
class JobEvent:
    """One message of a job's watch stream (`GET /v1/jobs/{id}:watch`)."""

    type: str
    job: Job
    event_time: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobEvent:
        return cls(type=d.get("type", ""), job=Job.from_json(d["job"]), event_time=_time(d.get("eventTime")), raw=d)


@dataclass(frozen=True)
class Wallet:
    id: str
    customer_id: str
    currency_code: str
    balance_cents: int
    held_cents: int
    available_cents: int
    credit_limit_cents: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Wallet:
        return cls(id=d.get("id", ""), customer_id=d.get("customerId", ""), currency_code=d.get("currencyCode", ""),
                   balance_cents=_int(d.get("balanceCents")), held_cents=_int(d.get("heldCents")),
                   available_cents=_int(d.get("availableCents")),
                   credit_limit_cents=_int(d.get("creditLimitCents")), raw=d)


@dataclass(frozen=True)
class Transaction:
    id: str
    kind: str
    amount_cents: int
    currency_code: str
    balance_after_cents: int
    job_id: str = ""
    description: str = ""
    create_time: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Transaction:
        return cls(id=d.get("id", ""), kind=d.get("kind", ""), amount_cents=_int(d.get("amountCents")),
                   currency_code=d.get("currencyCode", ""), balance_after_cents=_int(d.get("balanceAfterCents")),
                   job_id=d.get("jobId", ""), description=d.get("description", ""),
                   create_time=_time(d.get("createTime")), raw=d)


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    email: str
    reseller_id: str = ""
    active: bool = True
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Customer:
        return cls(id=d["id"], name=d.get("name", ""), email=d.get("email", ""), reseller_id=d.get("resellerId", ""),
                   active=d.get("active", True), raw=d)


@dataclass(frozen=True)
class CreatedCustomer:
    """A new customer and its API key, which the platform shows this once."""

    customer: Customer
    api_key: str


@dataclass(frozen=True)
class Project:
    id: str
    customer_id: str
    name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Project:
        return cls(id=d["id"], customer_id=d.get("customerId", ""), name=d.get("name", ""),
                   description=d.get("description", ""), tags=list(d.get("tags", [])), raw=d)


@dataclass(frozen=True)
class JobType:
    id: str
    project_id: str
    name: str
    processor_type: str = ""
    base_cost_cents: int = 0  # always 0 now: catalog types have prices, own types the platform fee
    enabled: bool = True
    catalog: bool = False  # the operator's (shared runners serve it) rather than the project's own
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobType:
        return cls(id=d["id"], project_id=d.get("projectId", ""), name=d.get("name", ""),
                   processor_type=d.get("processorType", ""), base_cost_cents=_int(d.get("baseCostCents")),
                   enabled=d.get("enabled", True), catalog=bool(d.get("catalog", False)), raw=d)


@dataclass(frozen=True)
class Me:
    """Who the API key is: `kind` is PRINCIPAL_KIND_ADMIN, _RESELLER, _CUSTOMER or _RUNNER."""

    kind: str
    customer_id: str = ""
    reseller_id: str = ""
    display_name: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Me:
        p = d.get("principal", {})
        return cls(kind=p.get("kind", ""), customer_id=p.get("customerId", ""), reseller_id=p.get("resellerId", ""),
                   display_name=d.get("displayName", ""), raw=d)
