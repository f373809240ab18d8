"""`AsyncClient`: the API of `Client` (sync.py) for asyncio code, sending the same `Call`s.
Its `wait_all` follows many jobs at once, a bounded number of watch streams at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
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
from innosystem.client.sync import POLL_START_SECONDS, STREAM_IDLE_SECONDS

T = TypeVar("T")
# Watch streams one wait_all holds at once: well under a customer's quota of 50 running watches.
WAIT_CONCURRENCY = 16


class AsyncClient:
    """As `Client`, with `await`; use it as an async context manager, or `await aclose()`."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        settings = Settings.load(url, api_key)
        self.url, self.timeout, self.retry = settings.url, timeout, retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=settings.url, headers=wire.headers(settings.api_key),
                                       timeout=timeout, transport=transport)
        self._me: Me | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(call.method, call.path, params=call.params, json=call.body)
            except httpx.TransportError as exc:
                if attempt >= self.retry.attempts or not wire.may_resend(call, exc):
                    raise TransportError(f"{call.method} {call.path}: {exc!r}") from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if attempt < self.retry.attempts and wire.should_retry(call, response.status_code):
                await asyncio.sleep(self.retry.delay(attempt, wire.retry_after(response)))
                continue
            return wire.read(call, response)

    async def pages(self, first: Callable[[str], Call[Page[T]]]) -> AsyncIterator[T]:
        token = ""
        while True:
            page = await self.send(first(token))
            for item in page.items:
                yield item
            if not (token := page.next_page_token):
                return

    async def me(self) -> Me:
        if self._me is None:
            self._me = await self.send(calls.get_me())
        return self._me

    async def _customer(self, customer_id: str | None) -> str:
        if customer_id:
            return customer_id
        if not (found := (await self.me()).customer_id):
            raise ValueError("customer_id is required: this API key is not a customer's")
        return found

    # --- jobs ---------------------------------------------------------------------------------------

    async def submit(self, project_id: str, job_type_id: str, payload: Mapping[str, Any] | None = None, *,
                     priority: str = "", request_id: str = "", schedule_time: datetime | str | None = None,
                     **extra: Any) -> Job:
        body = calls.job_request(job_type_id, payload, priority=priority, request_id_=request_id,
                                 schedule_time=schedule_time, **extra)
        return await self.send(calls.submit_job(project_id, body))

    async def submit_batch(self, project_id: str, jobs: Iterable[Json], *, batch_size: int = wire.MAX_BATCH,
                           on_batch: Callable[[list[Job]], None] | None = None) -> list[Job]:
        out: list[Job] = []
        for batch in wire.batches((calls.with_request_id(j) for j in jobs), batch_size):
            done = await self.send(calls.batch_submit_jobs(project_id, batch))
            out += done
            if on_batch:
                on_batch(done)
        return out

    async def get(self, job_id: str, *, full: bool = True) -> Job:
        return await self.send(calls.get_job(job_id, full=full))

    async def list_jobs(self, project_id: str = "-", **filters: Any) -> Page[Job]:
        return await self.send(calls.list_jobs(project_id, **filters))

    def iter_jobs(self, project_id: str = "-", **filters: Any) -> AsyncIterator[Job]:
        return self.pages(lambda token: calls.list_jobs(project_id, page_token=token, **filters))

    async def cancel(self, job_id: str, reason: str = "") -> Job:
        return await self.send(calls.cancel_job(job_id, reason))

    async def retry_job(self, job_id: str, request_id: str = "") -> Job:
        return await self.send(calls.retry_job(job_id, request_id))

    async def delete_job(self, job_id: str) -> None:
        await self.send(calls.delete_job(job_id))

    async def watch(self, job_id: str, *, idle: float = STREAM_IDLE_SECONDS) -> AsyncIterator[JobEvent]:
        path = calls.watch_job_path(job_id)
        timeout = httpx.Timeout(self.timeout, read=idle)
        async with self._http.stream("GET", path, headers={"Accept": "text/event-stream"},
                                     timeout=timeout) as response:
            if not response.is_success:
                await response.aread()
                raise ApiError(response.status_code, wire.body(response), method="GET", path=path)
            parser = Parser()
            async for line in response.aiter_lines():
                if (event := parser.feed(line)) is None:
                    continue
                if event.name == "error":
                    raise wire.stream_error(event.data, path)
                yield JobEvent.from_json(event.data)

    # `timeout` rather than asyncio.timeout: WaitTimeout carries the last state, as Client.wait does.
    async def wait(self, job_id: str, timeout: float | None = None, *, full: bool = True) -> Job:  # noqa: ASYNC109
        """As Client.wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_START_SECONDS
        while True:
            final: Job | None = None
            streamed = False
            try:
                # Read on to the end of the stream, which the gateway closes after the final status,
                # rather than hang up on it.
                async for event in self.watch(job_id, idle=wire.idle(deadline, STREAM_IDLE_SECONDS)):
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
                return await self.get(job_id) if full else final
            last = await self.get(job_id, full=full)
            if last.final:
                return last
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeout(job_id, timeout or 0.0, last)
            if streamed:  # the stream worked and just ended (its own deadline): no backoff to carry on
                pause = POLL_START_SECONDS
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.retry.maximum)

    async def wait_all(self, job_ids: Iterable[str], timeout: float | None = None,  # noqa: ASYNC109
                       concurrency: int = WAIT_CONCURRENCY, full: bool = False) -> list[Job]:
        """Wait for every job, `concurrency` watches at a time; results in the order of `job_ids`,
        BASIC view unless `full` (as Client.wait_all)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        gate = asyncio.Semaphore(concurrency)

        async def one(job_id: str) -> Job:
            async with gate:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                return await self.wait(job_id, left, full=full)

        return list(await asyncio.gather(*(one(j) for j in job_ids)))

    # --- wallet and access log ------------------------------------------------------------------

    async def wallet(self, customer_id: str | None = None) -> Wallet:
        return await self.send(calls.get_wallet(await self._customer(customer_id)))

    async def transactions(self, customer_id: str | None = None, **filters: Any) -> AsyncIterator[Transaction]:
        customer = await self._customer(customer_id)
        async for item in self.pages(lambda token: calls.list_transactions(customer, page_token=token, **filters)):
            yield item

    async def access_logs(self, customer_id: str | None = None, **filters: str) -> AsyncIterator[Json]:
        customer = await self._customer(customer_id)
        async for item in self.pages(lambda token: calls.list_access_logs(customer, page_token=token, filters=filters)):
            yield item

    async def verify_access_logs(self, customer_id: str | None = None) -> ChainCheck:
        check = ChainCheck()
        async for record in self.access_logs(customer_id):
            if not check.add(record):
                break
        return check

    # --- tenancy and job types --------------------------------------------------------------------

    def customers(self, **filters: Any) -> AsyncIterator[Customer]:
        return self.pages(lambda token: calls.list_customers(page_token=token, **filters))

    async def customer(self, customer_id: str | None = None) -> Customer:
        return await self.send(calls.get_customer(await self._customer(customer_id)))

    async def create_customer(self, name: str, email: str, **kw: Any) -> CreatedCustomer:
        return await self.send(calls.create_customer(name, email, **kw))

    async def projects(self, customer_id: str | None = None, **filters: Any) -> AsyncIterator[Project]:
        customer = await self._customer(customer_id)
        async for item in self.pages(lambda token: calls.list_projects(customer, page_token=token, **filters)):
            yield item

    async def project(self, project_id: str) -> Project:
        return await self.send(calls.get_project(project_id))

    async def create_project(self, name: str, customer_id: str | None = None, **kw: Any) -> Project:
        return await self.send(calls.create_project(await self._customer(customer_id), name, **kw))

    def job_types(self, project_id: str, **filters: Any) -> AsyncIterator[JobType]:
        return self.pages(lambda token: calls.list_job_types(project_id, page_token=token, **filters))

    def catalog_job_types(self, **filters: Any) -> AsyncIterator[JobType]:
        return self.pages(lambda token: calls.list_catalog_job_types(page_token=token, **filters))

    async def job_type(self, job_type_id: str) -> JobType:
        return await self.send(calls.get_job_type(job_type_id))

    async def create_job_type(self, project_id: str, name: str, **kw: Any) -> JobType:
        return await self.send(calls.create_job_type(project_id, name, **kw))
