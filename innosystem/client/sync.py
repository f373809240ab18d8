"""`Client`: the platform's REST API from blocking code (scripts, the CLI). `AsyncClient` in
aio.py is the same API for asyncio; both send the `Call`s of calls.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

import httpx

from innosystem.client import calls, wire
from innosystem.client.accesslog import ChainCheck
from innosystem.client.calls import Call, Json
from innosystem.client.config import Settings
from innosystem.client.errors import ApiError, TransportError, WaitTimeout
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
from innosystem.client.sse import Parser

T = TypeVar("T")
# A watch stream without a byte for this long is taken as lost (the gateway's keepalive is 15 s).
STREAM_IDLE_SECONDS = 45.0
# Polling, only when a watch stream cannot be had (watch quota, a gateway going away): from this
# interval up to the retry policy's maximum.
POLL_START_SECONDS = 0.2


class Client:
    """A session with one platform and one API key; use it as a context manager, or close() it.

    url / api_key default to INNOSYSTEM_URL / INNOSYSTEM_API_KEY, then the config file (config.py).
    `timeout` bounds each HTTP request; `retry` says how often and how patiently a request that met
    a 429, an UNAVAILABLE or a lost connection is sent again.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        settings = Settings.load(url, api_key)
        self.url, self.timeout, self.retry = settings.url, timeout, retry or RetryPolicy()
        self._http = httpx.Client(base_url=settings.url, headers=wire.headers(settings.api_key), timeout=timeout,
                                  transport=transport)
        self._me: Me | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the one place that sends -------------------------------------------------------------

    def send(self, call: Call[T]) -> T:
        """Send one call, repeating it per the retry policy; its result, or ApiError / TransportError."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(call.method, call.path, params=call.params, json=call.body)
            except httpx.TransportError as exc:
                if attempt >= self.retry.attempts or not wire.may_resend(call, exc):
                    raise TransportError(f"{call.method} {call.path}: {exc!r}") from exc
                time.sleep(self.retry.delay(attempt))
                continue
            if attempt < self.retry.attempts and wire.should_retry(call, response.status_code):
                time.sleep(self.retry.delay(attempt, wire.retry_after(response)))
                continue
            return wire.read(call, response)

    def pages(self, first: Callable[[str], Call[Page[T]]]) -> Iterator[T]:
        """Every item of a list, fetching pages as they are consumed."""
        token = ""
        while True:
            page = self.send(first(token))
            yield from page.items
            if not (token := page.next_page_token):
                return

    # --- who am I -------------------------------------------------------------------------------

    def me(self) -> Me:
        if self._me is None:
            self._me = self.send(calls.get_me())
        return self._me

    def _customer(self, customer_id: str | None) -> str:
        if customer_id:
            return customer_id
        if not (found := self.me().customer_id):
            raise ValueError("customer_id is required: this API key is not a customer's")
        return found

    # --- jobs ---------------------------------------------------------------------------------------

    def submit(self, project_id: str, job_type_id: str, payload: Mapping[str, Any] | None = None, *,
               priority: str = "", request_id: str = "", schedule_time: datetime | str | None = None,
               **extra: Any) -> Job:
        """Submit one job. The idempotency key (`request_id`) is generated when not given and reused
        by every retry, so a lost answer never makes a second job."""
        body = calls.job_request(job_type_id, payload, priority=priority, request_id_=request_id,
                                 schedule_time=schedule_time, **extra)
        return self.send(calls.submit_job(project_id, body))

    def submit_batch(self, project_id: str, jobs: Iterable[Json], *, batch_size: int = wire.MAX_BATCH,
                     on_batch: Callable[[list[Job]], None] | None = None) -> list[Job]:
        """Submit many jobs, `batch_size` (at most 1000) per request, in order. Each item is a
        `job_request(...)` or a dict with at least `jobTypeId`; one without `requestId` gets one.
        `on_batch` is called after each batch (a progress bar)."""
        out: list[Job] = []
        for batch in wire.batches((calls.with_request_id(j) for j in jobs), batch_size):
            done = self.send(calls.batch_submit_jobs(project_id, batch))
            out += done
            if on_batch:
                on_batch(done)
        return out

    def get(self, job_id: str, *, full: bool = True) -> Job:
        return self.send(calls.get_job(job_id, full=full))

    def list_jobs(self, project_id: str = "-", **filters: Any) -> Page[Job]:
        """One page; filters: status, job_type_id, page_size, page_token, full, customer_id."""
        return self.send(calls.list_jobs(project_id, **filters))

    def iter_jobs(self, project_id: str = "-", **filters: Any) -> Iterator[Job]:
        return self.pages(lambda token: calls.list_jobs(project_id, page_token=token, **filters))

    def cancel(self, job_id: str, reason: str = "") -> Job:
        return self.send(calls.cancel_job(job_id, reason))

    def retry_job(self, job_id: str, request_id: str = "") -> Job:
        return self.send(calls.retry_job(job_id, request_id))

    def delete_job(self, job_id: str) -> None:
        self.send(calls.delete_job(job_id))

    def watch(self, job_id: str, *, idle: float = STREAM_IDLE_SECONDS) -> Iterator[JobEvent]:
        """The job's events as they happen (SSE): a snapshot first, then each change; the stream
        ends after the final status. An error after the stream opened raises ApiError; `idle`
        seconds without a byte (not even a keepalive) raise httpx.ReadTimeout."""
        path = calls.watch_job_path(job_id)
        timeout = httpx.Timeout(self.timeout, read=idle)
        with self._http.stream("GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
            if not response.is_success:
                response.read()
                raise ApiError(response.status_code, wire.body(response), method="GET", path=path)
            parser = Parser()
            for line in response.iter_lines():
                if (event := parser.feed(line)) is None:
                    continue
                if event.name == "error":
                    raise wire.stream_error(event.data, path)
                yield JobEvent.from_json(event.data)

    def wait(self, job_id: str, timeout: float | None = None, *, full: bool = True) -> Job:
        """Block until the job is final and return it (FULL view unless not `full`); WaitTimeout after `timeout`
        seconds (None: no limit). Follows the watch stream; when no stream can be had (the watch
        quota, a gateway shutting down, a lost connection) it reads the job with backoff and tries
        the stream again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_START_SECONDS
        while True:
            final: Job | None = None
            streamed = False
            try:
                # Read on to the end of the stream, which the gateway closes after the final status,
                # rather than hang up on it.
                for event in self.watch(job_id, idle=wire.idle(deadline, STREAM_IDLE_SECONDS)):
                    streamed = True
                    if event.job.final:
                        final = event.job
                    elif deadline is not None and time.monotonic() > deadline:
                        break
            except ApiError as exc:
                if exc.http_status not in wire.STREAM_FALLBACK_STATUS:
                    raise
            except (httpx.TransportError, TransportError):
                pass
            if final is not None:
                return self.get(job_id) if full else final
            last = self.get(job_id, full=full)
            if last.final:
                return last
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeout(job_id, timeout or 0.0, last)
            if streamed:  # the stream worked and just ended (its own deadline): no backoff to carry on
                pause = POLL_START_SECONDS
            time.sleep(pause)
            pause = min(pause * 2, self.retry.maximum)

    def wait_all(self, job_ids: Iterable[str], timeout: float | None = None, *, full: bool = False) -> list[Job]:
        """Wait for every job, in order; `timeout` bounds the whole wait. BASIC view unless `full`
        (one read more per job): status, cost and error, not payload and result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for job_id in job_ids:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            out.append(self.wait(job_id, left, full=full))
        return out

    # --- wallet and access log ------------------------------------------------------------------

    def wallet(self, customer_id: str | None = None) -> Wallet:
        return self.send(calls.get_wallet(self._customer(customer_id)))

    def transactions(self, customer_id: str | None = None, **filters: Any) -> Iterator[Transaction]:
        """Newest first; filters: job_id, page_size."""
        customer = self._customer(customer_id)
        return self.pages(lambda token: calls.list_transactions(customer, page_token=token, **filters))

    def access_logs(self, customer_id: str | None = None, **filters: str) -> Iterator[Json]:
        """Access records oldest first (filters as the REST API names them, e.g. jobId)."""
        customer = self._customer(customer_id)
        return self.pages(lambda token: calls.list_access_logs(customer, page_token=token, filters=filters))

    def verify_access_logs(self, customer_id: str | None = None) -> ChainCheck:
        """Recompute the whole hash chain here, page by page, stopping at the first break."""
        check = ChainCheck()
        for record in self.access_logs(customer_id):
            if not check.add(record):
                break
        return check

    # --- tenancy and job types --------------------------------------------------------------------

    def customers(self, **filters: Any) -> Iterator[Customer]:
        return self.pages(lambda token: calls.list_customers(page_token=token, **filters))

    def customer(self, customer_id: str | None = None) -> Customer:
        return self.send(calls.get_customer(self._customer(customer_id)))

    def create_customer(self, name: str, email: str, **kw: Any) -> CreatedCustomer:
        return self.send(calls.create_customer(name, email, **kw))

    def projects(self, customer_id: str | None = None, **filters: Any) -> Iterator[Project]:
        customer = self._customer(customer_id)
        return self.pages(lambda token: calls.list_projects(customer, page_token=token, **filters))

    def project(self, project_id: str) -> Project:
        return self.send(calls.get_project(project_id))

    def create_project(self, name: str, customer_id: str | None = None, **kw: Any) -> Project:
        return self.send(calls.create_project(self._customer(customer_id), name, **kw))

    def job_types(self, project_id: str, **filters: Any) -> Iterator[JobType]:
        return self.pages(lambda token: calls.list_job_types(project_id, page_token=token, **filters))

    def catalog_job_types(self, **filters: Any) -> Iterator[JobType]:
        return self.pages(lambda token: calls.list_catalog_job_types(page_token=token, **filters))

    def job_type(self, job_type_id: str) -> JobType:
        return self.send(calls.get_job_type(job_type_id))

    def create_job_type(self, project_id: str, name: str, **kw: Any) -> JobType:
        return self.send(calls.create_job_type(project_id, name, **kw))
