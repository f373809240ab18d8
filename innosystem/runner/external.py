"""EXTERNAL_API processors: the job's payload POSTed (or the configured method) as JSON to the
job type's endpoint, with a timeout per call and retries of transport errors and 5xx.

The URL is the job type's, set by a customer, and the runner may be a shared one inside the
operator's network, so every call goes through the egress guard (`innosystem.kit.egress`) with
the runner operator's policy: https only and public addresses only (checked on the address the
connection is made to, so DNS rebinding does not pass), unless the operator allow-lists the host
(`innosystem runner --egress-allow-host HOST[:PORT]` or `INNOSYSTEM_RUNNER_EGRESS_ALLOW_HOSTS`);
no redirects; the answer capped in size. A refused call fails the job at once (not retryable) with
the guard's reason code as the error type; the error says what failed, never what the endpoint
answered.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

from innosystem.kit import egress
from innosystem.runner.backoff import Backoff
from innosystem.runner.processors import Job, JobError, Processor

DEFAULT_TIMEOUT_SECONDS = 30
ALLOW_ENV = "INNOSYSTEM_RUNNER_EGRESS_ALLOW_HOSTS"
# Retrying these cannot help: the guard (or the endpoint's answer) will be the same next time.
_FINAL = {egress.BLOCKED, egress.REDIRECT, egress.TOO_LARGE}


def policy_from_env(extra: list[str] | tuple[str, ...] = ()) -> egress.Policy:
    """The runner operator's egress policy: its own environment variable (in the embedded stack
    the runner shares an environment with the keys service, whose allow-list is not the runner's)."""
    return egress.Policy.from_env(ALLOW_ENV, extra=extra)


async def call(processor: Processor, job: Job, http: egress.Client) -> dict[str, Any]:
    config = job.lease.external_api
    url = processor.url or config.url
    if not url:
        raise JobError(f"job type {job.type_name!r} has no external_api.url", type="ConfigurationError",
                       retryable=False)
    method = (config.http_method or "POST").upper()
    limit = float(processor.timeout_seconds or config.timeout_seconds or job.lease.timeout_seconds
                  or DEFAULT_TIMEOUT_SECONDS)
    retries = config.max_retries if processor.max_retries is None else processor.max_retries
    retries, backoff = max(0, retries), Backoff(initial=0.2, maximum=5.0)
    headers = {"Content-Type": "application/json", "X-Innosystem-Job-Id": job.id,
               "X-Innosystem-Attempt": str(job.attempt)}
    where = _where(url)
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            answer = await http.request(method, url, json=job.payload, headers=headers, time_limit=limit)
        except egress.EgressError as exc:
            if exc.reason in _FINAL:
                raise JobError(f"{method} {where}: refused by the runner's egress guard: {exc.message}"
                               if exc.reason == egress.BLOCKED else f"{method} {where}: {exc.message}",
                               type=exc.reason, retryable=False) from None
            if last:
                raise JobError(f"{method} {where} failed: {exc.message}", type=exc.reason) from None
            await asyncio.sleep(backoff.next())
            continue
        if answer.status >= 500 and not last:
            await asyncio.sleep(backoff.next())
            continue
        if answer.status >= 400:
            raise JobError(f"{method} {where} answered {answer.status}", type=f"Http{answer.status}",
                           retryable=answer.status >= 500 or answer.status == 429)
        return _as_object(answer.body.decode(errors="replace"))
    raise AssertionError("unreachable")


def _where(url: str) -> str:
    """The URL without its query (it may carry a token) for error messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _as_object(body: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {"response": body}
    return value if isinstance(value, dict) else {"response": value}
