"""EXTERNAL_API processors: the job's payload POSTed (or the configured method) as JSON to the
job type's endpoint, with a timeout per call and retries of transport errors and 5xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from innosystem.runner.backoff import Backoff
from innosystem.runner.processors import Job, JobError, Processor

DEFAULT_TIMEOUT_SECONDS = 30


async def call(processor: Processor, job: Job, session: aiohttp.ClientSession) -> dict[str, Any]:
    config = job.lease.external_api
    url = processor.url or config.url
    if not url:
        raise JobError(f"job type {job.type_name!r} has no external_api.url", type="ConfigurationError",
                       retryable=False)
    method = (config.http_method or "POST").upper()
    timeout = aiohttp.ClientTimeout(total=processor.timeout_seconds or config.timeout_seconds
                                    or job.lease.timeout_seconds or DEFAULT_TIMEOUT_SECONDS)
    retries = config.max_retries if processor.max_retries is None else processor.max_retries
    retries, backoff = max(0, retries), Backoff(initial=0.2, maximum=5.0)
    headers = {"Content-Type": "application/json", "X-Innosystem-Job-Id": job.id,
               "X-Innosystem-Attempt": str(job.attempt)}
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            async with session.request(method, url, json=job.payload, headers=headers, timeout=timeout) as resp:
                body = await resp.text()
                if resp.status >= 500 and not last:
                    await asyncio.sleep(backoff.next())
                    continue
                if resp.status >= 400:
                    raise JobError(f"{method} {url} answered {resp.status}", type=f"Http{resp.status}",
                                   retryable=resp.status >= 500 or resp.status == 429)
                return _as_object(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if last:
                raise JobError(f"{method} {url} failed: {type(exc).__name__}", type=type(exc).__name__) from exc
            await asyncio.sleep(backoff.next())
    raise AssertionError("unreachable")


def _as_object(body: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {"response": body}
    return value if isinstance(value, dict) else {"response": value}
