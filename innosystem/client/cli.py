"""The client commands of `innosystem`: jobs, wallet, customers, projects, job-types, tester.

They speak to a running platform through the SDK (innosystem.client), with the URL and API key
from `--url` / `--api-key`, else INNOSYSTEM_URL / INNOSYSTEM_API_KEY, else the config file
(config.py). Human tables by default, `--json` for scripts. Exit codes (docs/client.md):

    0  done (a waited-for job succeeded)       4  not found (404)
    1  a job ended failed or cancelled;         5  the platform could not be reached or answered 5xx
       the tester found a failure               6  a wait ran out (--timeout)
    2  bad usage, a bad input file              3  the platform refused the request (other 4xx)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from innosystem.client.calls import job_request
from innosystem.client.errors import ApiError, TransportError, WaitTimeout
from innosystem.client.models import Job
from innosystem.client.sync import Client

OK, JOB_NOT_SUCCEEDED, USAGE, REFUSED, NOT_FOUND, UNAVAILABLE, TIMED_OUT = range(7)
COMMANDS = ("jobs", "wallet", "customers", "projects", "job-types", "tester")


class UsageError(Exception):
    """Bad input the platform never saw (exit code 2)."""


# --- output -------------------------------------------------------------------------------------

def _short(value: str) -> str:
    """An enum value without its type prefix: JOB_STATUS_SUCCEEDED → SUCCEEDED."""
    for prefix in ("JOB_STATUS_", "PRIORITY_LEVEL_", "PROCESSOR_TYPE_", "TRANSFER_KIND_", "PRINCIPAL_KIND_"):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


@dataclass
class Output:
    as_json: bool

    def items(self, items: Iterable[Any], headers: Sequence[str], row: Callable[[Any], Sequence[Any]]) -> None:
        items = list(items)
        if self.as_json:
            print(json.dumps([i.raw if hasattr(i, "raw") else i for i in items], indent=2))
        else:
            print(table([row(i) for i in items], headers))

    def one(self, item: Any, fields: Sequence[tuple[str, Any]]) -> None:
        if self.as_json:
            print(json.dumps(item.raw if hasattr(item, "raw") else item, indent=2))
        else:
            print(table([(k, v) for k, v in fields], ("field", "value")))


JOB_HEADERS = ("id", "status", "type", "attempts", "cost (cents)", "created")  # money: the API's minor units


def job_row(j: Job) -> tuple[Any, ...]:
    created = j.create_time.strftime("%Y-%m-%d %H:%M:%S") if j.create_time else ""
    return j.id, _short(j.status), j.raw.get("jobTypeName") or j.job_type_id, j.attempt_count, j.cost_cents, created


def job_fields(j: Job) -> list[tuple[str, Any]]:
    fields = [("id", j.id), ("status", _short(j.status)), ("project", j.project_id),
              ("type", j.raw.get("jobTypeName") or j.job_type_id), ("priority", _short(j.priority)),
              ("attempts", j.attempt_count), ("cost (cents)", j.cost_cents), ("currency", j.currency_code),
              ("created", j.create_time or "")]
    if j.result is not None:
        fields.append(("result", json.dumps(j.result)))
    if j.error:
        fields.append(("error", f"{j.error_type}: {j.error}" if j.error_type else j.error))
    return fields


class Progress:
    """One stderr line that redraws in place on a terminal (a line per tenth of the way otherwise)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.done, self.label = total, 0, label
        self.tty = sys.stderr.isatty()

    def advance(self, n: int) -> None:
        before, self.done = self.done, self.done + n
        tenth = 10 * self.done // max(self.total, 1)
        if not self.tty and tenth == 10 * before // max(self.total, 1) and self.done < self.total:
            return  # off a terminal: a line per tenth, not one per job
        width = 30
        filled = width * self.done // max(self.total, 1)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


# --- commands -----------------------------------------------------------------------------------------

def _read_jobs(path: str, job_type: str | None) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file as a submit body, checked before anything is sent: a line is
    a whole submit body (with `jobTypeId`) or, with --type, just the payload."""
    source = sys.stdin if path == "-" else Path(path).open(encoding="utf-8")
    jobs = []
    with source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise UsageError(f"{path}:{number}: a line must be a JSON object")
            if "jobTypeId" in item:
                jobs.append(item)
            elif job_type:
                jobs.append(job_request(job_type, item))
            else:
                raise UsageError(f"{path}:{number}: no jobTypeId, and no --type for lines that are payloads")
    if not jobs:
        raise UsageError(f"{path}: no jobs")
    return jobs


def _final_code(jobs: Iterable[Job]) -> int:
    return OK if all(j.succeeded for j in jobs) else JOB_NOT_SUCCEEDED


def jobs_submit(c: Client, a: argparse.Namespace, out: Output) -> int:
    if a.file:
        jobs = _read_jobs(a.file, a.type)
        progress = Progress(len(jobs), "submitted")
        try:
            submitted = c.submit_batch(a.project, jobs, batch_size=a.batch_size,
                                       on_batch=lambda done: progress.advance(len(done)))
        finally:
            progress.close()
    else:
        if not a.type:
            raise UsageError("--type is required (or --file with jobTypeId on each line)")
        try:
            payload = json.loads(a.payload)
        except ValueError as exc:
            raise UsageError(f"--payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise UsageError("--payload must be a JSON object")
        submitted = [c.submit(a.project, a.type, payload, priority=a.priority or "", request_id=a.request_id or "")]
    if a.wait:
        waiting = Progress(len(submitted), "finished") if len(submitted) > 1 else None
        finished = []
        for job in submitted:
            finished.append(c.wait(job.id, a.timeout, full=len(submitted) == 1))
            if waiting:
                waiting.advance(1)
        if waiting:
            waiting.close()
        submitted = finished
    if len(submitted) == 1:
        out.one(submitted[0], job_fields(submitted[0]))
    else:
        out.items(submitted, JOB_HEADERS, job_row)
    return _final_code(submitted) if a.wait else OK


def jobs_get(c: Client, a: argparse.Namespace, out: Output) -> int:
    job = c.get(a.job)
    out.one(job, job_fields(job))
    return OK


def jobs_list(c: Client, a: argparse.Namespace, out: Output) -> int:
    jobs = c.iter_jobs(a.project, status=a.status or "", job_type_id=a.type or "", page_size=min(a.limit, 1000))
    out.items(islice(jobs, a.limit), JOB_HEADERS, job_row)
    return OK


def jobs_watch(c: Client, a: argparse.Namespace, out: Output) -> int:
    last: Job | None = None
    for event in c.watch(a.job):
        last = event.job
        if out.as_json:
            print(json.dumps(event.raw), flush=True)
        else:
            when = event.event_time.strftime("%H:%M:%S") if event.event_time else ""
            print(f"{when}  {_short(event.type.removeprefix('JOB_EVENT_TYPE_'))}  {_short(last.status)}", flush=True)
    return _final_code([last]) if last is not None and last.final else UNAVAILABLE


def jobs_cancel(c: Client, a: argparse.Namespace, out: Output) -> int:
    job = c.cancel(a.job, a.reason or "")
    out.one(job, job_fields(job))
    return OK


def jobs_retry(c: Client, a: argparse.Namespace, out: Output) -> int:
    job = c.retry_job(a.job)
    out.one(job, job_fields(job))
    return OK


def wallet_show(c: Client, a: argparse.Namespace, out: Output) -> int:
    w = c.wallet(a.customer)
    out.one(w, [("customer", w.customer_id), ("currency", w.currency_code), ("balance (cents)", w.balance_cents),
                ("held (cents)", w.held_cents), ("available (cents)", w.available_cents),
                ("credit limit (cents)", w.credit_limit_cents)])
    return OK


def wallet_transactions(c: Client, a: argparse.Namespace, out: Output) -> int:
    items = islice(c.transactions(a.customer, job_id=a.job or "", page_size=min(a.limit, 500)), a.limit)
    out.items(items, ("id", "kind", "amount (cents)", "balance after (cents)", "job", "created"),
              lambda t: (t.id, _short(t.kind), t.amount_cents, t.balance_after_cents, t.job_id,
                         t.create_time.strftime("%Y-%m-%d %H:%M:%S") if t.create_time else ""))
    return OK


def customers_list(c: Client, a: argparse.Namespace, out: Output) -> int:
    out.items(islice(c.customers(), a.limit), ("id", "name", "email", "reseller"),
              lambda x: (x.id, x.name, x.email, x.reseller_id))
    return OK


def customers_get(c: Client, a: argparse.Namespace, out: Output) -> int:
    x = c.customer(a.customer)
    out.one(x, [("id", x.id), ("name", x.name), ("email", x.email), ("reseller", x.reseller_id), ("active", x.active)])
    return OK


def customers_create(c: Client, a: argparse.Namespace, out: Output) -> int:
    made = c.create_customer(a.name, a.email, reseller_id=a.reseller or "", request_id_=a.request_id or "")
    if out.as_json:
        print(json.dumps({"customer": made.customer.raw, "apiKey": made.api_key}, indent=2))
    else:
        print(table([("id", made.customer.id), ("name", made.customer.name), ("api key", made.api_key)],
                    ("field", "value")))
        print("The API key is shown this once; keep it in a secret store.", file=sys.stderr)
    return OK


def projects_list(c: Client, a: argparse.Namespace, out: Output) -> int:
    out.items(islice(c.projects(a.customer), a.limit), ("id", "name", "description", "tags"),
              lambda p: (p.id, p.name, p.description, ",".join(p.tags)))
    return OK


def projects_get(c: Client, a: argparse.Namespace, out: Output) -> int:
    p = c.project(a.project)
    out.one(p, [("id", p.id), ("customer", p.customer_id), ("name", p.name), ("description", p.description),
                ("tags", ",".join(p.tags))])
    return OK


def projects_create(c: Client, a: argparse.Namespace, out: Output) -> int:
    p = c.create_project(a.name, a.customer, description=a.description or "", tags=a.tag or None,
                         request_id_=a.request_id or "")
    out.one(p, [("id", p.id), ("name", p.name)])
    return OK


def job_types_list(c: Client, a: argparse.Namespace, out: Output) -> int:
    out.items(islice(c.job_types(a.project), a.limit), ("id", "name", "processor", "enabled"),
              lambda t: (t.id, t.name, _short(t.processor_type), t.enabled))
    return OK


def job_types_catalog(c: Client, a: argparse.Namespace, out: Output) -> int:
    out.items(islice(c.catalog_job_types(), a.limit), ("id", "name", "processor", "enabled"),
              lambda t: (t.id, t.name, _short(t.processor_type), t.enabled))
    return OK


def job_types_get(c: Client, a: argparse.Namespace, out: Output) -> int:
    t = c.job_type(a.job_type)
    out.one(t, [("id", t.id), ("project", t.project_id), ("name", t.name), ("processor", _short(t.processor_type)),
                ("catalog", t.catalog), ("enabled", t.enabled)])
    return OK


def job_types_create(c: Client, a: argparse.Namespace, out: Output) -> int:
    processor = a.processor if a.processor.startswith("PROCESSOR_TYPE_") else f"PROCESSOR_TYPE_{a.processor.upper()}"
    t = c.create_job_type(a.project, a.name, processor_type=processor,
                          request_id_=a.request_id or "")
    out.one(t, [("id", t.id), ("name", t.name), ("processor", _short(t.processor_type))])
    return OK


# --- the parser -------------------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the gateway (default: INNOSYSTEM_URL, the config file, http://127.0.0.1:8080)")
    common.add_argument("--api-key", help="API key (default: INNOSYSTEM_API_KEY or the config file)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--timeout", type=float, default=None, help="seconds to wait for a job (default: no limit)")
    return common


def _add(group: Any, name: str, handler: Callable[..., int], help_: str,
         common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_, parents=[common])
    parser.set_defaults(client_handler=handler, client_main=run)
    return parser


def _limit(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    return parser


def add_commands(sub: Any) -> None:
    """Add the client commands to `innosystem`'s subparsers."""
    common = _common()

    jobs = sub.add_parser("jobs", help="submit, inspect, watch, cancel and retry jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="COMMAND")
    submit = _add(jobs, "submit", jobs_submit, "submit a job, or every line of a JSON-lines file", common)
    submit.add_argument("project", help="project id")
    submit.add_argument("--type", help="job type id (for --file: of lines that are bare payloads)")
    submit.add_argument("--payload", default="{}", help="the job's input, a JSON object")
    submit.add_argument("--file", help="JSON-lines file (- for stdin): a submit body or a payload per line")
    submit.add_argument("--batch-size", type=int, default=500, help="jobs per request with --file (1-1000)")
    submit.add_argument("--priority", help="critical, high, medium or low")
    submit.add_argument("--request-id", help="idempotency key (default: generated)")
    submit.add_argument("--wait", action="store_true",
                        help="wait until the job(s) are final; exit 1 unless all succeed")
    _add(jobs, "get", jobs_get, "show a job", common).add_argument("job", help="job id")
    listing = _limit(_add(jobs, "list", jobs_list, "list jobs", common))
    listing.add_argument("project", nargs="?", default="-", help="project id (default: every project you see)")
    listing.add_argument("--status", help="only jobs in this status (e.g. succeeded)")
    listing.add_argument("--type", help="only jobs of this job type id")
    _add(jobs, "watch", jobs_watch, "follow a job's events until it is final", common).add_argument("job")
    cancel = _add(jobs, "cancel", jobs_cancel, "cancel a job", common)
    cancel.add_argument("job")
    cancel.add_argument("--reason", help="recorded in the job's status history")
    _add(jobs, "retry", jobs_retry, "send a failed job back to the queue", common).add_argument("job")

    wallet = sub.add_parser("wallet", help="a customer's wallet and its transactions", parents=[common])
    wallet.set_defaults(client_handler=wallet_show, client_main=run)
    wallet.add_argument("--customer", help="customer id (default: the API key's own)")
    wallet_sub = wallet.add_subparsers(dest="wallet_command", metavar="COMMAND")
    tx = _limit(_add(wallet_sub, "transactions", wallet_transactions, "list the wallet's transactions, newest first",
                     common))
    tx.add_argument("--customer", help="customer id (default: the API key's own)")
    tx.add_argument("--job", help="only this job's transactions")

    customers = sub.add_parser("customers", help="customers (admins and resellers)").add_subparsers(
        dest="customers_command", required=True, metavar="COMMAND")
    _limit(_add(customers, "list", customers_list, "list customers", common))
    _add(customers, "get", customers_get, "show a customer", common).add_argument("customer", nargs="?")
    create = _add(customers, "create", customers_create, "create a customer (prints its API key once)", common)
    create.add_argument("name")
    create.add_argument("email")
    create.add_argument("--reseller", help="the reseller id (admins)")
    create.add_argument("--request-id", help="idempotency key (default: generated)")

    projects = sub.add_parser("projects", help="a customer's projects").add_subparsers(
        dest="projects_command", required=True, metavar="COMMAND")
    plist = _limit(_add(projects, "list", projects_list, "list projects", common))
    plist.add_argument("--customer", help="customer id (default: the API key's own)")
    _add(projects, "get", projects_get, "show a project", common).add_argument("project")
    pcreate = _add(projects, "create", projects_create, "create a project", common)
    pcreate.add_argument("name")
    pcreate.add_argument("--customer", help="customer id (default: the API key's own)")
    pcreate.add_argument("--description")
    pcreate.add_argument("--tag", action="append", help="a tag (repeatable)")
    pcreate.add_argument("--request-id", help="idempotency key (default: generated)")

    types = sub.add_parser("job-types", help="a project's job types").add_subparsers(
        dest="job_types_command", required=True, metavar="COMMAND")
    tlist = _limit(_add(types, "list", job_types_list, "list a project's job types", common))
    tlist.add_argument("project")
    _limit(_add(types, "catalog", job_types_catalog, "list the operator's catalog types (shared runners serve them)",
                common))
    _add(types, "get", job_types_get, "show a job type", common).add_argument("job_type")
    tcreate = _add(types, "create", job_types_create, "create a job type", common)
    tcreate.add_argument("project")
    tcreate.add_argument("name")
    tcreate.add_argument("--processor", default="sync", help="sync, async, external_api or batch (default sync)")
    tcreate.add_argument("--request-id", help="idempotency key (default: generated)")

    from innosystem.client import tester

    tester.add_arguments(sub.add_parser("tester", help="exercise every public endpoint of a running platform"))


def run(args: argparse.Namespace) -> int:
    """Run the command `add_commands` parsed; errors become a message on stderr and an exit code."""
    handler: Callable[[Client, argparse.Namespace, Output], int] = args.client_handler
    try:
        with Client(args.url, args.api_key) as client:
            return handler(client, args, Output(args.json))
    except UsageError as exc:
        print(f"innosystem: {exc}", file=sys.stderr)
        return USAGE
    except ApiError as exc:
        print(f"innosystem: {exc}", file=sys.stderr)
        if exc.http_status == 404:
            return NOT_FOUND
        return UNAVAILABLE if exc.http_status >= 500 else REFUSED
    except TransportError as exc:
        print(f"innosystem: {exc}", file=sys.stderr)
        return UNAVAILABLE
    except WaitTimeout as exc:
        print(f"innosystem: {exc}", file=sys.stderr)
        return TIMED_OUT
    except (OSError, ValueError) as exc:  # an unreadable --file; a customer id that the key does not imply
        print(f"innosystem: {exc}", file=sys.stderr)
        return USAGE


