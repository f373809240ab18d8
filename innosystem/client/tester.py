"""`innosystem tester`: exercise every public endpoint of a running platform and write a log.

It creates a tenant of its own with the admin key (a reseller, a customer with a funded wallet, a
project, job types, a runner), drives the API through it as the admin, the reseller and the
customer, checks each answer's status, and deletes what it made. Jobs are scheduled an hour ahead
and cancelled, so no runner needs to be online. Then every operation of the platform's own
OpenAPI document that the scenario did not reach is probed with unknown ids: it must answer with a
refusal (4xx other than 401), never a 5xx. One log per run, `logs/tester-<UTC time>.log`: each
request, its answer (secrets redacted) and its time. Exit 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx

from innosystem.client import wire

SECRET_FIELDS = {"apiKey", "token", "signingSecret", "secret", "sharedSecret"}
BODY_LOG_LIMIT = 2000
_PARAM = re.compile(r"\{[^}]+\}")


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "«redacted»" if k in SECRET_FIELDS and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass
class Check:
    name: str
    method: str
    template: str
    status: int
    ok: bool
    note: str = ""


@dataclass
class Tester:
    base: str
    keys: dict[str, str]  # role → API key; never logged
    log: TextIO
    timeout: float = 30.0
    checks: list[Check] = field(default_factory=list)
    covered: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base, timeout=self.timeout, headers={"User-Agent": wire.USER_AGENT})

    def call(self, name: str, method: str, template: str, ids: dict[str, str] | None = None, *,
             role: str = "admin", body: Any = None, params: dict[str, str] | None = None,
             expect: tuple[int, ...] = (200,), stream: bool = False, log_answer: bool = True) -> Any:
        """One request; the answer's JSON (None when it failed). `template` is the OpenAPI path."""
        path = template.format(**(ids or {}))
        headers = wire.headers(self.keys.get(role, ""))
        started = time.perf_counter()
        status, answer, note = 0, None, ""
        try:
            if stream:  # an event stream opens with 200 and text/event-stream; nothing more is awaited
                with self.http.stream(method, path, params=params, headers=headers) as response:
                    status = response.status_code
                    kind = response.headers.get("content-type", "")
                    if status == 200 and not kind.startswith("text/event-stream"):
                        note = f"content-type {kind}, not text/event-stream"
                    if status != 200:
                        response.read()
                        answer = wire.body(response)
            else:
                response = self.http.request(method, path, params=params, json=body, headers=headers)
                status, answer = response.status_code, wire.body(response)
        except httpx.HTTPError as exc:
            note = f"no answer: {exc!r}"
        elapsed = (time.perf_counter() - started) * 1000
        ok = status in expect and not note
        if not ok and not note:
            note = f"expected {'/'.join(map(str, expect))}"
        self.covered.add((method.lower(), template))
        self.checks.append(Check(name, method, template, status, ok, note))
        logged = answer if log_answer or not ok else f"({len(json.dumps(answer))} characters)"
        self._write(name, method, path, params, role, body, status, logged, elapsed, ok, note)
        return answer if ok else None

    def _write(self, name: str, method: str, path: str, params: dict[str, str] | None, role: str, body: Any,
               status: int, answer: Any, elapsed: float, ok: bool, note: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        query = ("?" + "&".join(f"{k}={v}" for k, v in params.items())) if params else ""
        verdict = "ok" if ok else f"FAIL ({note})"
        print(f"{stamp} {method} {path}{query} as={role} -> {status} {elapsed:.1f}ms {verdict}  [{name}]",
              file=self.log)
        for label, value in (("request", body), ("answer", answer)):
            if value not in (None, "", {}):
                text = json.dumps(redact(value), ensure_ascii=False) if not isinstance(value, str) else value
                print(f"    {label}: {text[:BODY_LOG_LIMIT]}", file=self.log)
        self.log.flush()

    def close(self) -> None:
        self.http.close()


def _id(answer: Any, *path: str) -> str:
    """A nested id from an answer, or a fresh UUID so that later steps run (and fail) rather than crash."""
    for key in path:
        answer = answer.get(key) if isinstance(answer, dict) else None
    return str(answer) if answer else str(uuid.uuid4())


def scenario(t: Tester) -> None:
    run = uuid.uuid4().hex[:10]
    rid = f"tester-{run}"
    t.call("who am I", "GET", "/v1/me")

    reseller = t.call("create reseller", "POST", "/v1/resellers", params={"requestId": f"{rid}-reseller"},
                      body={"name": f"Tester {run}", "email": f"tester-{run}@example.com", "commissionRateBps": 1000})
    ids = {"reseller_id": _id(reseller, "reseller", "id")}
    t.keys["reseller"] = (reseller or {}).get("apiKey", "")
    t.call("get reseller", "GET", "/v1/resellers/{reseller_id}", ids)
    t.call("list resellers", "GET", "/v1/resellers", params={"pageSize": "5"})
    t.call("update reseller", "PATCH", "/v1/resellers/{reseller_id}", ids, params={"updateMask": "name"},
           body={"name": f"Tester {run} (renamed)"})
    rotated = t.call("rotate reseller key", "POST", "/v1/resellers/{reseller_id}:rotateApiKey", ids, body={})
    t.keys["reseller"] = (rotated or {}).get("apiKey", t.keys["reseller"])
    t.call("commission statement", "GET", "/v1/resellers/{reseller_id}/commissionStatement", ids, role="reseller")

    customer = t.call("create customer", "POST", "/v1/customers", role="reseller",
                      params={"requestId": f"{rid}-customer"},
                      body={"name": f"Tester {run} customer", "email": f"tester-{run}-c@example.com"})
    ids["customer_id"] = _id(customer, "customer", "id")
    t.keys["customer"] = (customer or {}).get("apiKey", "")
    t.call("list customers", "GET", "/v1/customers", role="reseller")
    t.call("get customer", "GET", "/v1/customers/{customer_id}", ids, role="customer")
    t.call("update customer", "PATCH", "/v1/customers/{customer_id}", ids, role="reseller",
           params={"updateMask": "name"}, body={"name": f"Tester {run} customer (renamed)"})
    rotated = t.call("rotate customer key", "POST", "/v1/customers/{customer_id}:rotateApiKey", ids,
                     role="customer", body={})
    t.keys["customer"] = (rotated or {}).get("apiKey", t.keys["customer"])

    # The wallet is opened as the customer is created, a moment later (an outbox): the top-up may
    # first find none. It is asked again, briefly, on 404 only.
    for attempt in range(50):
        t.call("top up wallet", "POST", "/v1/customers/{customer_id}/wallet:topUp", ids,
               body={"amountCents": 10_000, "requestId": f"{rid}-top-up", "description": "tester credit"},
               expect=(200,) if attempt == 49 else (200, 404))
        if t.checks[-1].status != 404:
            break
        time.sleep(0.2)
    t.call("get wallet", "GET", "/v1/customers/{customer_id}/wallet", ids, role="customer")
    t.call("update wallet", "PATCH", "/v1/customers/{customer_id}/wallet", ids,
           params={"updateMask": "creditLimitCents"}, body={"creditLimitCents": 0})
    t.call("wallet transactions", "GET", "/v1/customers/{customer_id}/wallet/transactions", ids, role="customer")

    project = t.call("create project", "POST", "/v1/customers/{customer_id}/projects", ids, role="customer",
                     params={"requestId": f"{rid}-project"}, body={"name": f"tester-{run}", "tags": ["tester"]})
    ids["project_id"] = _id(project, "id")
    t.call("list projects", "GET", "/v1/customers/{customer_id}/projects", ids, role="customer")
    t.call("get project", "GET", "/v1/projects/{project_id}", ids, role="customer")
    t.call("update project", "PATCH", "/v1/projects/{project_id}", ids, role="customer",
           params={"updateMask": "description"}, body={"description": "made by innosystem tester"})

    job_type = t.call("create job type", "POST", "/v1/projects/{project_id}/jobTypes", ids, role="customer",
                      params={"requestId": f"{rid}-type"},
                      body={"name": "echo", "processorType": "PROCESSOR_TYPE_SYNC"})  # own type: the platform fee
    ids["job_type_id"] = _id(job_type, "id")
    t.call("list catalog job types", "GET", "/v1/jobTypes", role="customer")
    t.call("list job types", "GET", "/v1/projects/{project_id}/jobTypes", ids, role="customer")
    t.call("get job type", "GET", "/v1/jobTypes/{job_type_id}", ids, role="customer")
    t.call("update job type", "PATCH", "/v1/jobTypes/{job_type_id}", ids, role="customer",
           params={"updateMask": "description"}, body={"description": "tester"})

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    job = t.call("submit job", "POST", "/v1/projects/{project_id}/jobs", ids, role="customer",
                 body={"jobTypeId": ids["job_type_id"], "payload": {"n": 0}, "scheduleTime": later,
                       "requestId": f"{rid}-job"})
    ids["job_id"] = _id(job, "id")
    batch = t.call("batch submit", "POST", "/v1/projects/{project_id}/jobs:batchSubmit", ids, role="customer",
                   body={"requests": [{"jobTypeId": ids["job_type_id"], "payload": {"n": n}, "scheduleTime": later,
                                       "requestId": f"{rid}-batch-{n}"} for n in (1, 2)]})
    t.call("get job", "GET", "/v1/jobs/{job_id}", ids, role="customer", params={"view": "JOB_VIEW_FULL"})
    t.call("list jobs", "GET", "/v1/projects/{project_id}/jobs", ids, role="customer")
    t.call("watch job", "GET", "/v1/jobs/{job_id}:watch", ids, role="customer", stream=True)
    t.call("watch jobs", "GET", "/v1/projects/{project_id}/jobs:watch", ids, role="customer", stream=True)
    t.call("watch queue statistics", "GET", "/v1/queueStats:watch", stream=True)
    t.call("queue stats", "GET", "/v1/queueStats", role="customer")
    t.call("project queue stats", "GET", "/v1/projects/{project_id}/queueStats", ids, role="customer")
    t.call("dead letters", "GET", "/v1/projects/{project_id}/deadLetterJobs", ids, role="customer")
    t.call("decrypt fields of a job that is not encrypted", "POST", "/v1/jobs/{job_id}:decryptFields", ids,
           role="customer", body={"fields": ["payload.n"]}, expect=(403,))
    t.call("cancel job", "POST", "/v1/jobs/{job_id}:cancel", ids, role="customer", body={"reason": "tester"})
    t.call("retry a job that did not fail", "POST", "/v1/jobs/{job_id}:retry", ids, role="customer",
           body={"requestId": f"{rid}-retry"}, expect=(400,))
    t.call("delete job", "DELETE", "/v1/jobs/{job_id}", ids, role="customer")
    for n, other in enumerate((batch or {}).get("jobs", [])):
        t.call(f"cancel batch job {n}", "POST", "/v1/jobs/{job_id}:cancel", {"job_id": other["id"]},
               role="customer", body={})

    t.call("list client keys", "GET", "/v1/customers/{customer_id}/keys", ids, role="customer")
    t.call("project key of a project without one", "GET", "/v1/projects/{project_id}/projectKey", ids,
           role="customer", expect=(404,))
    t.call("access log", "GET", "/v1/customers/{customer_id}/accessLogs", ids, role="customer")
    t.call("verify access log", "GET", "/v1/customers/{customer_id}/accessLogs:verify", ids, role="customer")
    t.call("watch access log", "GET", "/v1/customers/{customer_id}/accessLogs:watch", ids, role="customer",
           stream=True)
    t.call("list notification channels", "GET", "/v1/customers/{customer_id}/notificationChannels", ids,
           role="customer")
    t.call("notification channel without a URL is refused", "POST",
           "/v1/customers/{customer_id}/notificationChannels", ids, role="customer",
           body={"displayName": "tester"}, expect=(400,))

    runner = t.call("create runner", "POST", "/v1/runners", role="customer", params={"requestId": f"{rid}-runner"},
                    body={"name": f"tester-{run}", "scope": "RUNNER_SCOPE_CUSTOMER"})
    ids["runner_id"] = _id(runner, "runner", "id")
    t.call("list runners", "GET", "/v1/runners", role="customer")
    t.call("get runner", "GET", "/v1/runners/{runner_id}", ids, role="customer")
    t.call("update runner", "PATCH", "/v1/runners/{runner_id}", ids, role="customer",
           params={"updateMask": "description"}, body={"description": "tester"})
    t.call("rotate runner token", "POST", "/v1/runners/{runner_id}:rotateToken", ids, role="customer", body={})

    reconciled = t.call("reconcile (dry run)", "POST", "/v1/billing:reconcile",
                        body={"customerId": ids["customer_id"], "dryRun": True})
    t.call("list reconciliations", "GET", "/v1/billing/reconciliations", params={"pageSize": "5"})
    t.call("get reconciliation", "GET", "/v1/billing/reconciliations/{reconciliation_id}",
           {"reconciliation_id": _id(reconciled, "id")})

    # Clean up: what the tester made goes, in the order the platform allows.
    t.call("delete runner", "DELETE", "/v1/runners/{runner_id}", ids, role="customer")
    t.call("delete job type", "DELETE", "/v1/jobTypes/{job_type_id}", ids, role="customer")
    t.call("delete project", "DELETE", "/v1/projects/{project_id}", ids, role="customer")
    t.call("delete customer", "DELETE", "/v1/customers/{customer_id}", ids, params={"force": "true"})
    t.call("delete reseller", "DELETE", "/v1/resellers/{reseller_id}", ids)


# Operations on the caller's own session cookie: a caller with an API key and no session has none,
# so its 401 is the right answer there.
SESSION_ONLY = frozenset({("get", "/v1/sessions/current"), ("delete", "/v1/sessions/current")})


def probe_the_rest(t: Tester, document: dict[str, Any]) -> None:
    """Every documented operation the scenario did not reach, with unknown ids and an empty body:
    a refusal, never a server error (and never a 401 for a valid key, except on `SESSION_ONLY`)."""
    for template, operations in sorted(document.get("paths", {}).items()):
        for method in ("get", "post", "patch", "put", "delete"):
            if method not in operations or (method, template) in t.covered:
                continue
            path_ids = {name.strip("{}"): str(uuid.uuid4()) for name in _PARAM.findall(template)}
            t.call(f"probe {operations[method].get('operationId', '')}", method.upper(), template, path_ids,
                   body={} if method in ("post", "patch", "put") else None,
                   stream=template.endswith(":watch"),  # an event stream that opens is not awaited to its end
                   expect=(200, 400, 401, 403, 404, 409, 412, 422, 429) if (method, template) in SESSION_ONLY
                   else (200, 400, 403, 404, 409, 412, 422, 429))


@contextmanager
def _log_file(directory: Path) -> Iterator[tuple[Path, TextIO]]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"tester-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.log"
    with path.open("w", encoding="utf-8") as log:
        yield path, log


def run(args: argparse.Namespace) -> int:
    with _log_file(Path(args.logs_dir)) as (path, log):
        print(f"# innosystem tester against {args.url} at {datetime.now(UTC).isoformat()}", file=log)
        t = Tester(args.url.rstrip("/"), {"admin": args.admin_key}, log)
        try:
            document = t.call("OpenAPI document", "GET", "/openapi.json", log_answer=False) or {}
            scenario(t)
            probe_the_rest(t, document)
        finally:
            t.close()
        operations = {(m, p) for p, ops in document.get("paths", {}).items() for m in ops
                      if m in ("get", "post", "patch", "put", "delete")}
        failed = [c for c in t.checks if not c.ok]
        summary = (f"{len(t.checks)} calls, {len(t.checks) - len(failed)} passed, {len(failed)} failed; "
                   f"{len(operations & t.covered)}/{len(operations)} documented operations exercised")
        print(f"# {summary}", file=log)
    for c in failed:
        print(f"FAIL {c.method} {c.template}: {c.status} {c.note}  [{c.name}]", file=sys.stderr)
    print(f"tester: {summary}; log: {path}")
    return 1 if failed or not operations else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="the gateway (default: INNOSYSTEM_URL or http://127.0.0.1:8080)")
    parser.add_argument("--admin-key", default=None, help="an admin API key (default: INNOSYSTEM_ADMIN_API_KEY)")
    parser.add_argument("--logs-dir", default="logs", help="where the run's log goes (default: logs)")
    parser.set_defaults(client_main=main)


def main(args: argparse.Namespace) -> int:
    import os

    args.url = args.url or os.environ.get("INNOSYSTEM_URL") or "http://127.0.0.1:8080"
    args.admin_key = args.admin_key or os.environ.get("INNOSYSTEM_ADMIN_API_KEY") or ""
    if not args.admin_key:
        print("innosystem tester: --admin-key (or INNOSYSTEM_ADMIN_API_KEY) is required", file=sys.stderr)
        return 2
    return run(args)
