"""Every REST call the client makes, as data: method, path, query, body and how to read the answer.

The sync `Client` and the async `AsyncClient` send the same `Call`s, so an endpoint is described
once. Paths and JSON shapes are the gateway's (docs/openapi.json); ids are quoted into the path.
Mutations carry an idempotency key, generated here when the caller gives none, so a retry after a
lost answer returns the first answer instead of doing the work twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from innosystem.client.models import (
    CreatedCustomer,
    Customer,
    Job,
    JobType,
    Me,
    Page,
    Project,
    Transaction,
    Wallet,
)

T = TypeVar("T")
Json = dict[str, Any]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    # Sending it twice is harmless (a read, or a mutation with an idempotency key): a request that
    # may have reached the platform is repeated only then.
    idempotent: bool = True


def _id(value: str) -> str:
    return quote(str(value), safe="")


def _query(**values: Any) -> dict[str, str]:
    return {k: (v.isoformat() if isinstance(v, datetime) else str(v)) for k, v in values.items()
            if v not in (None, "", 0)}


def request_id() -> str:
    return str(uuid.uuid4())


def _page(key: str, item: Callable[[Json], T]) -> Callable[[Any], Page[T]]:
    return lambda d: Page([item(x) for x in (d or {}).get(key, [])], (d or {}).get("nextPageToken", ""))


def job_request(job_type_id: str, payload: Mapping[str, Any] | None = None, *, priority: str = "",
                request_id_: str = "", schedule_time: datetime | str | None = None,
                **extra: Any) -> Json:
    """One job as a submit body (or a batch item); `extra` passes other SubmitJobRequest fields
    (camelCase, e.g. retryPolicy) through unchanged."""
    body: Json = {"jobTypeId": job_type_id, "payload": dict(payload or {}), "requestId": request_id_ or request_id()}
    if priority:
        body["priority"] = priority if priority.startswith("PRIORITY_LEVEL_") else f"PRIORITY_LEVEL_{priority.upper()}"
    if schedule_time:
        body["scheduleTime"] = schedule_time.isoformat() if isinstance(schedule_time, datetime) else schedule_time
    return {**body, **extra}


def with_request_id(job: Mapping[str, Any]) -> Json:
    """A batch item with its idempotency key fixed before the first send, so a retry reuses it."""
    return dict(job) if job.get("requestId") else {**job, "requestId": request_id()}


# --- jobs ---------------------------------------------------------------------------------------

def submit_job(project_id: str, job: Json) -> Call[Job]:
    return Call("POST", f"/v1/projects/{_id(project_id)}/jobs", Job.from_json, body=job)


def batch_submit_jobs(project_id: str, jobs: list[Json]) -> Call[list[Job]]:
    return Call("POST", f"/v1/projects/{_id(project_id)}/jobs:batchSubmit",
                lambda d: [Job.from_json(j) for j in d.get("jobs", [])], body={"requests": jobs})


def get_job(job_id: str, *, full: bool = True) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{_id(job_id)}", Job.from_json,
                params={"view": "JOB_VIEW_FULL" if full else "JOB_VIEW_BASIC"})


def list_jobs(project_id: str = "-", *, status: str = "", job_type_id: str = "", page_size: int = 0,
              page_token: str = "", full: bool = False, customer_id: str = "") -> Call[Page[Job]]:
    if status and not status.startswith("JOB_STATUS_"):
        status = f"JOB_STATUS_{status.upper()}"
    return Call("GET", f"/v1/projects/{_id(project_id)}/jobs", _page("jobs", Job.from_json),
                params=_query(status=status, jobTypeId=job_type_id, pageSize=page_size, pageToken=page_token,
                              customerId=customer_id, view="JOB_VIEW_FULL" if full else ""))


def cancel_job(job_id: str, reason: str = "") -> Call[Job]:
    return Call("POST", f"/v1/jobs/{_id(job_id)}:cancel", Job.from_json, body=_query(reason=reason))


def retry_job(job_id: str, request_id_: str = "") -> Call[Job]:
    return Call("POST", f"/v1/jobs/{_id(job_id)}:retry", Job.from_json,
                body={"requestId": request_id_ or request_id()})


def delete_job(job_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/jobs/{_id(job_id)}", lambda _: None)


def watch_job_path(job_id: str) -> str:
    return f"/v1/jobs/{_id(job_id)}:watch"


# --- wallet and access log --------------------------------------------------------------------------

def get_wallet(customer_id: str) -> Call[Wallet]:
    return Call("GET", f"/v1/customers/{_id(customer_id)}/wallet", Wallet.from_json)


def list_transactions(customer_id: str, *, job_id: str = "", page_size: int = 0,
                      page_token: str = "") -> Call[Page[Transaction]]:
    return Call("GET", f"/v1/customers/{_id(customer_id)}/wallet/transactions",
                _page("transactions", Transaction.from_json),
                params=_query(jobId=job_id, pageSize=page_size, pageToken=page_token))


def list_access_logs(customer_id: str, *, page_size: int = 1000, page_token: str = "",
                     filters: Mapping[str, str] | None = None) -> Call[Page[Json]]:
    """Records oldest first, as the chain runs (verification needs that order)."""
    return Call("GET", f"/v1/customers/{_id(customer_id)}/accessLogs", _page("records", dict),
                params={**_query(pageSize=page_size, pageToken=page_token, **(filters or {})), "oldestFirst": "true"})


# --- tenancy and job types ----------------------------------------------------------------------------

def get_me() -> Call[Me]:
    return Call("GET", "/v1/me", Me.from_json)


def list_customers(*, page_size: int = 0, page_token: str = "") -> Call[Page[Customer]]:
    return Call("GET", "/v1/customers", _page("customers", Customer.from_json),
                params=_query(pageSize=page_size, pageToken=page_token))


def get_customer(customer_id: str) -> Call[Customer]:
    return Call("GET", f"/v1/customers/{_id(customer_id)}", Customer.from_json)


def create_customer(name: str, email: str, *, reseller_id: str = "", request_id_: str = "") -> Call[CreatedCustomer]:
    return Call("POST", "/v1/customers",
                lambda d: CreatedCustomer(Customer.from_json(d["customer"]), d.get("apiKey", "")),
                params={"requestId": request_id_ or request_id()},
                body={"name": name, "email": email, **_query(resellerId=reseller_id)})


def list_projects(customer_id: str, *, page_size: int = 0, page_token: str = "") -> Call[Page[Project]]:
    return Call("GET", f"/v1/customers/{_id(customer_id)}/projects", _page("projects", Project.from_json),
                params=_query(pageSize=page_size, pageToken=page_token))


def get_project(project_id: str) -> Call[Project]:
    return Call("GET", f"/v1/projects/{_id(project_id)}", Project.from_json)


def create_project(customer_id: str, name: str, *, description: str = "", tags: list[str] | None = None,
                   request_id_: str = "") -> Call[Project]:
    return Call("POST", f"/v1/customers/{_id(customer_id)}/projects", Project.from_json,
                params={"requestId": request_id_ or request_id()},
                body={"name": name, **_query(description=description), **({"tags": tags} if tags else {})})


def list_job_types(project_id: str, *, page_size: int = 0, page_token: str = "") -> Call[Page[JobType]]:
    return Call("GET", f"/v1/projects/{_id(project_id)}/jobTypes", _page("jobTypes", JobType.from_json),
                params=_query(pageSize=page_size, pageToken=page_token))


def list_catalog_job_types(*, page_size: int = 0, page_token: str = "", name: str = "") -> Call[Page[JobType]]:
    """The operator's catalog types: usable by every project, served by shared runners."""
    return Call("GET", "/v1/jobTypes", _page("jobTypes", JobType.from_json),
                params=_query(pageSize=page_size, pageToken=page_token, name=name))


def get_job_type(job_type_id: str) -> Call[JobType]:
    return Call("GET", f"/v1/jobTypes/{_id(job_type_id)}", JobType.from_json)


def create_job_type(project_id: str, name: str, *, processor_type: str = "PROCESSOR_TYPE_SYNC",
                    request_id_: str = "", **fields: Any) -> Call[JobType]:
    """`fields` passes other JobType fields (camelCase, e.g. timeoutSeconds) through unchanged."""
    return Call("POST", f"/v1/projects/{_id(project_id)}/jobTypes", JobType.from_json,
                params={"requestId": request_id_ or request_id()},
                body={"name": name, "processorType": processor_type, **fields})  # an own type: the platform fee
