"""The InnoSystem client SDK: the REST gateway from Python (docs/client.md).

    from innosystem.client import Client, job_request

    with Client("http://127.0.0.1:8080", api_key) as client:
        job = client.submit(project_id, job_type_id, {"hello": "world"})
        done = client.wait(job.id, timeout=60)

`Client` is blocking, `AsyncClient` the same API for asyncio. Errors are `ApiError` (HTTP status,
gRPC code, `reason`, `field_violations`), `TransportError` and `WaitTimeout`. `webhooks.verify`
checks a webhook delivery's signature; `accesslog.verify` an access log's hash chain.
"""

from innosystem.client.accesslog import ChainCheck
from innosystem.client.aio import AsyncClient
from innosystem.client.calls import job_request
from innosystem.client.errors import ApiError, ClientError, FieldViolation, TransportError, WaitTimeout
from innosystem.client.models import (
    CreatedCustomer,
    Customer,
    Job,
    JobEvent,
    JobType,
    Me,
    Page,
    Project,
    Transaction,
    Wallet,
)
from innosystem.client.retry import RetryPolicy
from innosystem.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "ChainCheck",
    "Client",
    "ClientError",
    "CreatedCustomer",
    "Customer",
    "FieldViolation",
    "Job",
    "JobEvent",
    "JobType",
    "Me",
    "Page",
    "Project",
    "RetryPolicy",
    "Transaction",
    "TransportError",
    "WaitTimeout",
    "Wallet",
    "job_request",
]
