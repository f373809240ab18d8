"""SubmitJob and BatchSubmitJobs: validate, hold the estimated cost, commit, enqueue.

Order and crash safety: billing reserves the holds (hold id = job id) and commits them, then one
transaction stores the jobs, then the jobs enter Redis: two commits per submit (one where billing
runs in this process on this database and the submit is small: the holds are written by the jobs'
own transaction, services/billing/joined.py, and commit with them or not at all). A crash after the
reserve leaves an active hold without a job, which recovery finds in billing's holds by creation
time and releases after a grace (`Loops._release_orphan_holds`); a submit that could not commit
within half that grace gives its holds back and answers UNAVAILABLE, so recovery never releases
the hold of a submit still in flight. A crash after the commit leaves a Pending job that recovery
enqueues. So a job never waits without a hold and a hold never outlives a job that does not exist
for longer than the grace. A lone submit and a large batch are answered at their commit, their
enqueue following (ANSWERED_AT_COMMIT_FROM); this replica's reads of the queues wait for an
enqueue still landing (`JobQueue.landing`), so a job answered is a job a lease here finds.

Idempotency: with a `request_id` the job id is derived from (project, request id), so a repeat
reserves the same hold (billing is idempotent per hold) and cannot store a second job.

Concurrent single submits of one caller to one project go through the submit together (one read of
the project, its types and prices, one set of holds), as the gateway sends them (gateway/submits.py);
a refusal of the group that is certain to have changed nothing sends each again alone, so each gets
its own answer. At idle a submit goes alone at once.

Isolation: concurrent single submits share one commit (the coalescer), so one submit's bad value
must not fail the others'. Values PostgreSQL cannot store are refused before anything is held
(`check_storable`); a shared commit that fails anyway is retried one submit at a time, so only the
submit that carries the fault fails. Once the jobs are committed the submit has succeeded: a Redis
error while enqueueing is logged and recovery enqueues them (an error would invite a duplicate).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from opentelemetry import propagate
from psycopg.types.json import Jsonb
from sqlalchemy import Table, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit import idempotency
from innosystem.kit import principal as principals
from innosystem.kit.coalescing import Answer, Coalescer, Lanes
from innosystem.kit.db import Rows, Writes, new_id
from innosystem.kit.errors import (
    UNCHANGED_REFUSALS,
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from innosystem.kit.freshness import Labelled, catalog, job_types_of, markup_of
from innosystem.kit.protos import json_dumps, request_hash, to_datetime
from innosystem.kit.validation import MAX_REQUEST_ID, check_converted, check_storable
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs import leases, metrics, pricing
from services.jobs.billing import HoldRequest, Joined, NotJoined, insufficient_funds
from services.jobs.convert import lease_pb, owner_text, plain
from services.jobs.handoff import Claim
from services.jobs.models import IdempotencyKey, Job, JobAttempt, JobStatusChange, JobType, NewJob
from services.jobs.queue import QueueItem, ScheduledItem
from services.jobs.repository import JobsRepository
from services.jobs.runtime import PENDING, RUNNING, SCHEDULED, Changes, Deps, priority_name, queue_name
from services.jobs.service import PERSISTENCE, PRIORITIES, _retry_policy
from services.jobs.tenants import ProjectOwner

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_TRACE_ENTRIES = 8
HOLD_MARGIN = timedelta(days=7)  # a hold's life from the job's start; renewed while the job lasts longer
MAX_CACHED_PROJECTS = 10_000  # whose job types a replica keeps for submits
# Concurrent single submits share a commit; a second one may be under way beside a commit of
# fewer submits than this (light load: a submit need not wait for another's commit), not beside a
# larger one (a burst: what arrives meanwhile goes together next). 64 submits in flight: 0.9
# against 1.2 ms of CPU each with two commits always allowed (docs/performance.md, session 7).
OVERLAP_BELOW = 4
# A batch of at least this many jobs is written while billing reserves its holds (`_write_reserving`):
# a batch of 1,000 then waits for the longer of the two rather than their sum. Smaller ones (a few
# rows go with the COMMIT anyway; coalesced single submits) reserve first: written meanwhile they
# cost more CPU than they save (docs/performance.md, session 13).
EARLY_WRITE_ROWS = 100
# Concurrent single submits of one caller and project, at most this many through one submit; two
# such submits under way at once (the second only beside a small first, as OVERLAP_BELOW). gRPC
# singles, 64 in flight: docs/performance.md, session 18.
SINGLES_GROUP = 100
SINGLES_IN_FLIGHT = 2
# A call of one job, or of at least this many, is answered at its commit, its jobs landing in Redis
# after (`JobQueue.landing`): a lone submit 0.5-1.4 ms sooner at 50/s, a batch of 1,000 its enqueue
# (about 15 ms) sooner. A call between (the gateway's gathered singles, at most 100; the jobs
# service's own groups) waits for its enqueue: that wait is the window the next ones gather in,
# and without it they went in more, smaller commits (docs/performance.md, session 29).
ANSWERED_AT_COMMIT_FROM = 500
JOB_ID_NAMESPACE = uuid.UUID("5d0c8f61-3a43-4f53-9a53-6a0b7c0f7e11")


_JOBS = cast(Table, Job.__table__)  # Core inserts: no ORM bulk machinery per row
_STATUS_CHANGES = cast(Table, JobStatusChange.__table__)
_ATTEMPTS = cast(Table, JobAttempt.__table__)
_CHANGE_COLUMNS = ("job_id", "status", "time", "attempt", "reason")
_PAYLOAD = pb.SubmitJobRequest.DESCRIPTOR.fields_by_name["payload"]


_XID = "SELECT pg_current_xact_id()::text"  # the transaction that stores a submit: its rows' xmin


class _TooSlow(Exception):
    """The job's commit would come too late for the holds reserved for it (see the module's doc)."""


class _Refused(Exception):
    """Billing refused a group whose jobs were written while it reserved: written again without it."""

    def __init__(self, refusals: list[Exception | None]) -> None:
        super().__init__("a group was refused")
        self.refusals = refusals


def _lease_claimed(new: Sequence[Prepared], claim: Claim, now: datetime, ttl_seconds: float) -> list[Prepared]:
    """The claimed jobs as they are stored: Running, leased to the runner of the call that takes
    them, their first attempt begun (what the lease statement `runsql._START` sets)."""
    handed = [p for p in new if p.job.id in claim.by_job]
    for p in handed:
        job, call = p.job, claim.by_job[p.job.id].request
        job.status, job.attempt_count, job.lease_id = RUNNING, 1, uuid.uuid4()
        job.runner_id, job.lease_session_id = call.runner_id, call.session_id
        job.lease_start_time = job.start_time = now
        timeout = job.settings.get("timeout_seconds")
        job.lease_expire_time = now + timedelta(seconds=min(ttl_seconds, 300 if timeout is None else timeout))
    return handed


def _unlease(handed: Sequence[Prepared]) -> None:
    """Back as submitted (Pending), for a commit that failed."""
    for p in handed:
        job = p.job
        job.status, job.attempt_count, job.lease_id, job.runner_id, job.lease_session_id = PENDING, 0, None, "", ""
        job.lease_start_time = job.start_time = job.lease_expire_time = None


async def _in_turn(steps: Sequence[Awaitable[None]]) -> None:
    for step in steps:
        await step


async def _quietly(step: Awaitable[None], what: str) -> None:
    """A follow-up whose failure must not turn a stored submit into an error."""
    try:
        await step
    except Exception as exc:
        log.warning("%s failed (%s)", what, _kind(exc))


def _count_submitted(stored: Sequence[Prepared]) -> None:
    for (job_type, priority), count in Counter((p.job.job_type_name, p.job.priority) for p in stored).items():
        metrics.submitted.add(count, {"job_type": job_type, "priority": priority_name(priority)})


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def job_id_for(project_id: uuid.UUID, request_id: str) -> uuid.UUID:
    return uuid.uuid5(JOB_ID_NAMESPACE, f"{project_id}/{request_id}") if request_id else new_id()


def fingerprint(r: pb.SubmitJobRequest) -> bytes:
    """What tells a repeat of a submit from another request with its request id: the request
    without its trace context, which a retry carries anew (its own span) and which the gateway
    sets on each submit it sends in a batch (gateway/submits.py)."""
    if not r.trace_context:
        return request_hash(r)
    content = pb.SubmitJobRequest()
    content.CopyFrom(r)
    content.ClearField("trace_context")
    return request_hash(content)


@dataclass
class Prepared:
    job: NewJob
    hash: bytes
    position: int  # in the request (batch item index)
    id_text: str  # the job's id as text, made once (its hold's id, its queue entry)
    existing: bool = False
    payload_json: bytes | None = None  # the payload as JSON, measured once and stored as is
    settings_json: Jsonb | None = None  # the settings as stored, serialized once for a batch's items of one type
    # The hash with the trace context, as submits stored before `fingerprint` remembered theirs.
    legacy_hash: bytes | None = None

    def values(self) -> list[Any]:
        """The job's row (`NewJob.values`), its payload and settings as serialized once."""
        stored: dict[str, Jsonb] = {}
        if self.payload_json is not None:
            text = self.payload_json
            stored["payload"] = Jsonb(self.job.payload, dumps=lambda _: text)
        if self.settings_json is not None:
            stored["settings"] = self.settings_json
        return self.job.values(**stored)


@dataclass(frozen=True)
class _Single:
    """A single submit waiting to go with others of its caller and project."""

    caller: Principal
    request: pb.SubmitJobRequest
    trace: dict[str, str]  # its call's trace context, injected in its own task


@dataclass
class Group:
    """One call's new jobs, stored all or none."""

    owner: ProjectOwner
    fresh: list[Prepared]
    scope: str
    single: bool
    together: bool  # stored in a commit shared with other calls' groups (single submits)

    def prefix(self, position: int) -> str:
        return "" if self.single else f"requests[{position}]."


def _bad(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)


def _renamed(err: DomainError, old: str, new: str) -> DomainError:
    err.violations = [(f.replace(old, new, 1), d.replace(old, new, 1)) for f, d in err.violations]
    err.message = err.message.replace(old, new, 1)
    err.args = (err.message,)
    return err


def _kind(exc: BaseException) -> str:
    """An error's kind for the log, without its text: a database error's text may quote the value
    (a payload) that it could not store."""
    orig = getattr(exc, "orig", None)
    return type(orig or exc).__name__


_TRACE = object()  # the memo's key for the call's trace context
_TRACES = object()  # … for each item's own call's, when single submits go together
# … and with the text of a job type's id, as the items name it: the type's `_Terms`


@dataclass(frozen=True, slots=True)
class _Terms:
    """What a call's jobs of one type share: the type's defaults, its settings as the jobs keep them
    (one dict and its JSON for all of them), the estimated cost and the queue. Plain attributes:
    read for every item of a batch, where the type's ORM attributes cost a lookup each."""

    id: uuid.UUID
    name: str
    priority: int
    persistence: int
    retry: dict[str, Any]
    settings: dict[str, Any]
    settings_json: Jsonb
    cost: int
    queue: str


def _trace_context(request: pb.SubmitJobRequest, memo: dict[Any, Any], position: int) -> dict[str, str]:
    """The item's own trace context, else its call's (injected once per call, a copy per job)."""
    if request.trace_context:
        return {k: v for k, v in list(request.trace_context.items())[:MAX_TRACE_ENTRIES]}
    if (traces := memo.get(_TRACES)) is not None:
        return dict(traces[position])
    carrier: dict[str, str] | None = memo.get(_TRACE)
    if carrier is None:
        carrier = memo[_TRACE] = {}
        propagate.inject(carrier)
    return dict(carrier)


class Submission:
    def __init__(self, deps: Deps, visible_project: Any) -> None:
        self.deps = deps
        self._visible_project = visible_project
        self._coalescer: Coalescer[Group, None] = Coalescer(self._store_together, concurrency=2,
                                                            overlap_below=OVERLAP_BELOW)
        # single submits by caller and project: what arrives while one is under way goes together
        self._singles: Lanes[tuple[bytes, str], _Single, Job | NewJob] = Lanes(
            self._submit_singles, MAX_CACHED_PROJECTS, max_batch=SINGLES_GROUP, concurrency=SINGLES_IN_FLIGHT,
            overlap_below=OVERLAP_BELOW)
        self._alone: set[tuple[bytes, str]] = set()  # lanes with a submit under way outside them
        # concurrent submits read their projects' job types in one query
        self._type_loader: Coalescer[uuid.UUID, dict[uuid.UUID, JobType]] = Coalescer(self._load_types)
        # a project's job types by id, the catalog (its types and prices), a customer's markup (basis
        # points): each kept while its change token stays the one it was read with (`kit.freshness`)
        self._types_of: Labelled[uuid.UUID, dict[uuid.UUID, JobType]] = Labelled(MAX_CACHED_PROJECTS)
        self._catalog: Labelled[str, pricing.Catalog] = Labelled(1)
        self._markups: Labelled[uuid.UUID, int] = Labelled(MAX_CACHED_PROJECTS)

    async def submit(self, caller: Principal, request: pb.SubmitJobRequest) -> Job | NewJob:
        check_storable(request)
        key = (caller.SerializeToString(deterministic=True), request.project_id)
        lane = self._singles(key)
        if key in self._alone or not lane.idle():  # another submit of the caller's is under way: go together
            trace: dict[str, str] = {}
            if not request.trace_context:
                propagate.inject(trace)  # the group runs in another call's task
            return await lane.submit(_Single(caller, request, trace))
        self._alone.add(key)
        try:
            (job,) = await self._submit(caller, request.project_id, [request], single=True)
        finally:
            self._alone.discard(key)
        return job

    async def _submit_singles(self, items: Sequence[_Single]) -> Sequence[Job | NewJob | BaseException]:
        """Concurrent single submits of one caller to one project as one submit, each job with its
        own call's trace; refused for certain before anything changed, each goes again alone."""
        first = items[0]
        try:
            return await self._submit(first.caller, first.request.project_id, [i.request for i in items],
                                      single=len(items) == 1, traces=[i.trace for i in items])
        except DomainError as exc:
            if len(items) == 1 or exc.code not in UNCHANGED_REFUSALS:
                raise
        return await asyncio.gather(*(self._submit_one(i) for i in items), return_exceptions=True)

    async def _submit_one(self, item: _Single) -> Job | NewJob:
        (job,) = await self._submit(item.caller, item.request.project_id, [item.request], single=True,
                                    traces=[item.trace])
        return job

    async def batch_submit(self, caller: Principal, request: pb.BatchSubmitJobsRequest) -> list[Job | NewJob]:
        if not 1 <= len(request.requests) <= MAX_BATCH:
            raise _bad("requests", f"a batch has 1 to {MAX_BATCH} jobs, got {len(request.requests)}",
                       "INVALID_BATCH_SIZE")
        for i, item in enumerate(request.requests):
            if item.project_id and item.project_id != request.project_id:
                raise _bad(f"requests[{i}].project_id", "must be empty or the batch's project", "PROJECT_MISMATCH")
        check_storable(request, converted=_PAYLOAD)  # each payload as `_prepare` converts it
        return await self._submit(caller, request.project_id, list(request.requests), single=False)

    async def _submit(self, caller: Principal, project_id: str, requests: Sequence[pb.SubmitJobRequest],
                      single: bool, traces: Sequence[dict[str, str]] | None = None) -> list[Job | NewJob]:
        """`traces`: each request's own call's trace context (single submits that go together)."""
        types_token = self._ask_types_token(project_id)  # read together with the project's token
        tokens = self.deps.tokens
        catalog_token = tokens.ask(catalog()) if tokens else None  # … in the same Redis call
        # a customer's key names its customer: its markup's token goes in that call too
        hint = caller.customer_id if caller.kind == principals.CUSTOMER else ""
        markup_token = tokens.ask(markup_of(uuid.UUID(hint))) if tokens and _is_uuid(hint) else None
        owner: ProjectOwner = await self._visible_project(caller, project_id, fresh=True)
        if not owner.active:  # before anything is held
            raise FailedPrecondition(f"project {project_id} is inactive and takes no new jobs", field="project_id",
                                     reason="PROJECT_INACTIVE")
        now = self.deps.now()
        prefix = (lambda i: "") if single else (lambda i: f"requests[{i}].")
        if tokens and (markup_token is None or hint != str(owner.customer_id)):  # an admin's or reseller's
            markup_token = tokens.ask(markup_of(owner.customer_id))
        types = await self._types(owner, requests, prefix, types_token)
        shared = await self._catalog_now(catalog_token)
        markup = await self._markup(owner.customer_id, markup_token)
        memo: dict[Any, Any] = {}  # what a call's items share: the same type's settings, the caller's trace
        if traces is not None:
            memo[_TRACES] = traces
        prepared = [self._prepare(owner, types, shared, markup, r, prefix(i), now, i, memo)
                    for i, r in enumerate(requests)]
        scope = f"SubmitJob:{owner.project_id}"
        seen: dict[uuid.UUID, int] = {}
        for i, p in enumerate(prepared):  # the same request id twice in one batch is one job
            if p.job.id in seen:
                raise _bad(prefix(i) + "request_id", "appears twice in the batch", "DUPLICATE_REQUEST_ID")
            seen[p.job.id] = i
        found: dict[uuid.UUID, Job] = {}
        if any(p.job.request_id for p in prepared):
            found = await self._replays(prepared, scope, prefix)
        fresh = [p for p in prepared if not p.existing]
        if fresh and owner.encryption_key_id:
            await self._encrypt(owner, fresh)
        if fresh:
            try:
                await self._store_one(Group(owner, fresh, scope, single, together=traces is not None or single))
            except Aborted:  # a concurrent repeat of a request id stored it first: answer with its job
                found = await self._replays(prepared, scope, prefix)
                if not all(p.existing for p in prepared):
                    raise
        return [found.get(p.job.id, p.job) if p.existing else p.job for p in prepared]

    async def _encrypt(self, owner: ProjectOwner, fresh: Sequence[Prepared]) -> None:
        """Encrypted project: only the sensitive fields' ciphertext is stored (keys service)."""
        encryptor = self.deps.encryptor
        if encryptor is None:
            raise Unavailable("the project encrypts its jobs but the keys service is not configured",
                              reason="ENCRYPTION_UNAVAILABLE")

        async def one(p: Prepared) -> None:
            job = p.job
            job.payload, paths = await encryptor.encrypt(
                owner.encryption_key_id, str(owner.customer_id), str(owner.project_id), str(job.id), "payload",
                job.payload or {}, job.settings.get("sensitive_fields", []))
            job.encryption = {"key_id": owner.encryption_key_id, "encrypted_fields": paths}
            p.payload_json = None  # the ciphertext is stored, not the payload measured

        await asyncio.gather(*(one(p) for p in fresh))

    async def _replays(self, prepared: list[Prepared], scope: str, prefix: Any) -> dict[uuid.UUID, Job]:
        """Marks the requests whose request id already made a job; those jobs by id."""
        async with self.deps.db.session() as s:
            earlier = await idempotency.replay_many(s, IdempotencyKey, scope,
                                                    [(p.job.request_id, p.hash) for p in prepared])
            legacy = [i for i, (p, found) in enumerate(zip(prepared, earlier, strict=True))
                      if isinstance(found, DomainError) and p.legacy_hash is not None]
            if legacy:  # remembered with its trace context, before `fingerprint`
                again = await idempotency.replay_many(s, IdempotencyKey, scope, [
                    (prepared[i].job.request_id, prepared[i].legacy_hash or b"") for i in legacy])
                for i, found in zip(legacy, again, strict=True):
                    earlier[i] = found
            for i, (p, found) in enumerate(zip(prepared, earlier, strict=True)):
                if isinstance(found, DomainError):
                    raise _renamed(found, "request_id", prefix(i) + "request_id")
                p.existing = found is not None
            existing_ids = [p.job.id for p in prepared if p.existing]
            if not existing_ids:
                return {}
            return {j.id: j for j in (await s.execute(select(Job).where(Job.id.in_(existing_ids)))).scalars()}

    def _ask_types_token(self, project_id: str) -> asyncio.Future[str] | None:
        try:
            return self.deps.tokens.ask(job_types_of(uuid.UUID(project_id))) if self.deps.tokens else None
        except ValueError:  # not a project id: the project lookup says so
            return None

    async def _types(self, owner: ProjectOwner, requests: Sequence[pb.SubmitJobRequest],
                     prefix: Any, token_asked: asyncio.Future[str] | None) -> dict[uuid.UUID, JobType]:
        """The project's job types, by id: from the cache while their change token (`kit.freshness`,
        set after every change to them) stays the same, else read afresh. An id not among them
        (another project's type) is not found."""
        named: set[str] = set()  # a batch names the same few types: each parsed once
        for i, r in enumerate(requests):
            if r.job_type_id in named:
                continue
            try:
                uuid.UUID(r.job_type_id)
            except ValueError:
                raise NotFound(f"{prefix(i)}job_type_id: job type {r.job_type_id!r} not found",
                               field=prefix(i) + "job_type_id", reason="JOB_TYPE_NOT_FOUND") from None
            named.add(r.job_type_id)
        pid = owner.project_id
        return await self._types_of.get(pid, token_asked, lambda: self._type_loader.submit(pid))

    async def _catalog_now(self, token_asked: asyncio.Future[str] | None) -> pricing.Catalog:
        """The catalog types and their prices: a submit reads no price while the catalog's change
        token (set after every change to a catalog type or price) stays the same."""
        async def fetch() -> pricing.Catalog:
            async with self.deps.db.session() as s:
                return pricing.Catalog.of(*await JobsRepository(s).catalog())
        return await self._catalog.get("", token_asked, fetch)

    async def _markup(self, customer_id: uuid.UUID, token_asked: asyncio.Future[str] | None) -> int:
        """The customer's markup in basis points, kept while its change token stays the same."""
        async def fetch() -> int:
            async with self.deps.db.session() as s:
                return (await JobsRepository(s).markups([customer_id]))[customer_id]
        return await self._markups.get(customer_id, token_asked, fetch)

    async def _load_types(self, projects: Sequence[uuid.UUID]) -> list[dict[uuid.UUID, JobType]]:
        async with self.deps.db.session() as s:
            rows = (await s.execute(select(JobType).where(JobType.project_id.in_(set(projects))))).scalars().all()
        return [{r.id: r for r in rows if r.project_id == project} for project in projects]

    def _prepare(self, owner: ProjectOwner, types: dict[uuid.UUID, JobType], shared: pricing.Catalog, markup: int,
                 r: pb.SubmitJobRequest, prefix: str, now: datetime, position: int,
                 memo: dict[Any, Any]) -> Prepared:
        config = self.deps.config
        currency = owner.billing_currency or config.default_currency  # the project's: its wallet, its prices
        terms: _Terms | None = memo.get(r.job_type_id)  # a batch names the same few types
        if terms is None:
            terms = memo[r.job_type_id] = self._terms(owner, types, shared, markup, r.job_type_id, currency, now,
                                                      prefix)
        payload: dict[str, Any] = {}
        payload_json = b"{}"
        if r.HasField("payload"):
            try:
                payload = plain(r.payload)
                payload_json = json_dumps(payload)  # its numbers finite: `plain` refused any other
            except ValueError:
                check_converted(r.payload, None, prefix + "payload")  # names the number
                raise
            check_converted(r.payload, payload_json, prefix + "payload")  # a NUL (a batch's, `check_storable`)
        size = len(payload_json)
        if size > config.max_payload_bytes:
            raise _bad(prefix + "payload", f"is {size} bytes, more than the limit of {config.max_payload_bytes}",
                       "PAYLOAD_TOO_LARGE")
        priority = r.priority or terms.priority
        if priority not in PRIORITIES:
            raise _bad(prefix + "priority", f"unknown priority {r.priority}", "INVALID_PRIORITY")
        persistence = r.persistence_policy or terms.persistence
        if persistence not in PERSISTENCE:
            raise _bad(prefix + "persistence_policy", f"unknown persistence policy {r.persistence_policy}",
                       "INVALID_PERSISTENCE_POLICY")
        retry = terms.retry
        if r.HasField("retry_policy"):
            rp = r.retry_policy
            try:
                retry = _retry_policy({"max_attempts": rp.max_attempts,
                                       "initial_interval_seconds": rp.initial_interval_seconds,
                                       "backoff_multiplier": rp.backoff_multiplier,
                                       "max_interval_seconds": rp.max_interval_seconds,
                                       "non_retryable_error_types": list(rp.non_retryable_error_types)})
            except DomainError as err:
                raise _renamed(err, "job_type.default_retry_policy", prefix + "retry_policy") from None
        schedule = None
        if r.HasField("schedule_time"):
            schedule = to_datetime(r.schedule_time)
            horizon = now + timedelta(days=config.max_schedule_days)
            if schedule > horizon:
                raise _bad(prefix + "schedule_time", f"is more than {config.max_schedule_days} days ahead",
                           "SCHEDULE_TOO_FAR")
            if schedule <= now:
                schedule = None
        if len(r.request_id) > MAX_REQUEST_ID:
            raise _bad(prefix + "request_id", f"at most {MAX_REQUEST_ID} characters", "INVALID_REQUEST_ID")
        job_id = job_id_for(owner.project_id, r.request_id)
        id_text = str(job_id)
        cost = terms.cost
        job = NewJob(
            id=job_id, project_id=owner.project_id, customer_id=owner.customer_id, reseller_id=owner.reseller_id,
            job_type_id=terms.id, job_type_name=terms.name,
            queue_name=terms.queue,
            status=SCHEDULED if schedule else PENDING, priority=priority, persistence_policy=persistence,
            settings=terms.settings,
            payload=payload, result=None, error="", error_type="", runner_id="", attempt_count=0,
            next_attempt_time=schedule, cost_cents=0, estimated_cost_cents=cost,
            currency_code=currency, hold_id=id_text if cost > 0 else "",
            hold_expire_time=(schedule or now) + HOLD_MARGIN if cost > 0 else None,
            retry_count=0, create_time=now, schedule_time=schedule, queue_time=None if schedule else now,
            update_time=now, request_id=r.request_id, cancel_requested=False, cancel_reason="",
            lease_session_id="", dead_lettered=False, trace_context=_trace_context(r, memo, position), purged=False,
            **retry,
        )
        if not r.request_id:  # only a request id is remembered, with its request's fingerprint
            return Prepared(job, b"", position, id_text, payload_json=payload_json, settings_json=terms.settings_json)
        return Prepared(job, fingerprint(r), position, id_text, payload_json=payload_json,
                        settings_json=terms.settings_json, legacy_hash=request_hash(r) if r.trace_context else None)

    def _terms(self, owner: ProjectOwner, types: dict[uuid.UUID, JobType], shared: pricing.Catalog, markup: int,
               job_type_id: str, currency: str, now: datetime, prefix: str) -> _Terms:
        """What a call's items that name this type share, worked out at the first of them."""
        type_id = uuid.UUID(job_type_id)  # `_types` refused any other
        jt = types.get(type_id) or shared.types.get(type_id)
        if jt is None:  # unknown, or another project's (another customer's) type: not found either way
            raise NotFound(f"{prefix}job_type_id: job type {job_type_id} not found in this project",
                           field=prefix + "job_type_id", reason="JOB_TYPE_NOT_FOUND")
        if not jt.enabled:
            raise FailedPrecondition(f"{prefix}job_type_id: job type {jt.name} is disabled",
                                     field=prefix + "job_type_id", reason="JOB_TYPE_DISABLED")
        settings, settings_json, cost = self._settings(jt, shared, markup, currency, now, prefix)
        retry = {"retry_max_attempts": jt.retry_max_attempts,
                 "retry_initial_interval_seconds": jt.retry_initial_interval_seconds,
                 "retry_backoff_multiplier": jt.retry_backoff_multiplier,
                 "retry_max_interval_seconds": jt.retry_max_interval_seconds,
                 "non_retryable_error_types": list(jt.non_retryable_error_types or ())}
        # a call's items are one project's: one queue per type
        queue = queue_name(jt.name, jt.required_tags or (), None if jt.catalog else owner.customer_id)
        return _Terms(jt.id, jt.name, jt.default_priority, jt.default_persistence_policy, retry, settings,
                      settings_json, cost, queue)

    def _settings(self, jt: JobType, shared: pricing.Catalog, markup: int, currency: str, now: datetime,
                  prefix: str) -> tuple[dict[str, Any], Jsonb, int]:
        """A type's settings as its jobs keep them (with the price terms they settle at), serialized
        once, and the estimated cost: the same for every item of a call that names the type."""
        if jt.catalog:  # the price version in force now, kept on the job: capture settles at it
            price = shared.price(jt.id, currency, now)
            if price is None:
                raise FailedPrecondition(f"{prefix}job_type_id: job type {jt.name} has no price in {currency} yet",
                                         field=prefix + "job_type_id", reason="PRICE_NOT_FOUND",
                                         metadata={"currency_code": currency})
            terms = pricing.marked_up(pricing.terms(price), markup)  # the customer's reseller's markup
        else:  # runs on the customer's own runners: the platform fee
            terms = pricing.fee_terms(self.deps.config.platform_fee_cents)
        settings = {"timeout_seconds": jt.timeout_seconds, "max_cost_cents": jt.max_cost_cents,
                    "over_capture_policy": jt.over_capture_policy, "charge_on_failure": jt.charge_on_failure,
                    "processor_type": jt.processor_type, "external_api": jt.external_api,
                    "max_batch_size": jt.max_batch_size, "required_tags": list(jt.required_tags or ()),
                    "sensitive_fields": list(jt.sensitive_fields or ()), "price": terms}
        text = json.dumps(settings, separators=(",", ":"))
        return settings, Jsonb(settings, dumps=lambda _: text), pricing.estimate(terms)

    async def _store_one(self, group: Group) -> None:
        if group.together:
            await self._coalescer.submit(group)  # concurrent single submits share a commit
        else:
            after: list[Awaitable[None]] = []
            try:
                (outcome,) = await self._store([group], after)
                if 1 < len(group.fresh) < ANSWERED_AT_COMMIT_FROM:
                    await self.deps.queue.landed()
            finally:
                await _in_turn(after)
            if outcome is not None:
                raise outcome

    async def _store_together(self, groups: Sequence[Group]) -> list[Exception | None] | Answer[None]:
        """Concurrent single submits' `_store`, the job events of jobs handed to long polls
        following in the same worker; answered at the commit if alone, else once their jobs
        landed in Redis (ANSWERED_AT_COMMIT_FROM)."""
        after: list[Awaitable[None]] = []
        try:
            outcomes = await self._store(groups, after)
            if sum(len(g.fresh) for g in groups) > 1:
                await self.deps.queue.landed()
        except BaseException:
            await _in_turn(after)  # what did commit still gets its events
            raise
        return Answer(outcomes, _in_turn(after)) if after else outcomes

    async def _store(self, groups: Sequence[Group], after: list[Awaitable[None]]) -> list[Exception | None]:
        """Reserves every group's holds in one billing call (billing commits them), then one
        transaction stores the jobs of every group whose holds were all granted; then the jobs
        enter Redis, landing after the answer. Returns each group's refusal or error (None:
        stored). A large batch's jobs are written while billing reserves (`_write_reserving`);
        they commit only after."""
        ids = [p.job.id for g in groups for p in g.fresh]
        if len(groups) > 1 and len(set(ids)) < len(ids):  # repeats of one request id: the first one wins
            return await self._one_by_one(groups, after)
        held = [p for g in groups for p in g.fresh if p.job.hold_id]
        reserved = time.monotonic()
        refusals: list[Exception | None] | None = None  # not known yet: reserved while the jobs are written
        # billing beside us on our database: the holds go in the jobs' own transaction
        joined = self.deps.billing.joined(self.deps.db, len(held)) if held else None
        if not held:
            refusals = [None] * len(groups)
        elif len(ids) < EARLY_WRITE_ROWS and joined is None:
            refusals = list(await self._reserve(groups))
        try:
            try:
                refusals = await self._commit(groups, refusals, held, reserved, after, joined)
            except _Refused as refused:  # rolled back: the granted groups' jobs go in alone
                refusals = await self._commit(groups, refused.refusals, held, reserved, after)
            except NotJoined:  # rolled back, nothing held: the holds the usual way, then the jobs
                joined = None
                refusals = list(await self._reserve(groups))
                reserved = time.monotonic()
                refusals = await self._commit(groups, refusals, held, reserved, after)
        except (IntegrityError, Aborted):
            if len(groups) > 1:  # one group's concurrent repeat spoiled the shared commit: go one by one
                return await self._one_by_one(groups, after)
            return [Aborted("a concurrent submit with the same request_id won; repeat to get its job",
                            reason="CONCURRENT_REQUEST")]
        except _TooSlow:  # rolled back before COMMIT: surely not stored
            await self._give_back(held)
            return [Unavailable("the submit could not be stored in time; repeat it", reason="SUBMIT_TIMED_OUT")
                    for _ in groups]
        except DomainError:
            raise  # billing's answer for the whole call (unavailable, …): no one item is at fault
        except Exception as exc:
            if len(groups) > 1:
                # Something in one group failed the shared commit (a value validation let through):
                # each group alone, so the fault fails only its own submit. Nothing was committed,
                # and the holds reserved meanwhile are reserved again idempotently (same hold ids).
                log.warning("a shared submit commit of %d submits failed (%s); retrying each alone",
                            len(groups), _kind(exc))
                return await self._one_by_one(groups, after)
            if isinstance(exc, DataError):  # the request carries a value PostgreSQL refuses
                # raised by a statement, so before COMMIT: surely not stored, its holds can go now
                # (other errors may come from an ambiguous COMMIT: recovery's sweep decides on those;
                # holds written by the jobs' transaction went with it, but an earlier attempt's stay)
                await self._give_back(held)
                return [InvalidArgument(f"a value in the request cannot be stored ({_kind(exc)})",
                                        reason="UNSTORABLE_VALUE")]
            raise
        stored = [p for g, refused in zip(groups, refusals, strict=True) if refused is None for p in g.fresh]
        if stored and all(p.job.status == RUNNING for p in stored):  # all handed to long polls
            _count_submitted(stored)
        elif stored:  # answered before it lands: this replica's reads of the queues wait for it
            # committed is submitted: if Redis fails, recovery puts the jobs there
            self.deps.queue.landing(_quietly(self._enqueue(stored),
                                             f"the enqueue of {len(stored)} committed jobs (recovery will)"))
        return refusals

    async def _commit(self, groups: Sequence[Group], refusals: list[Exception | None] | None,
                      held: Sequence[Prepared], reserved: float, after: list[Awaitable[None]],
                      joined: Any = None) -> list[Exception | None]:
        """One transaction for the jobs of every granted group; the refusals. With `joined` (billing
        in this process on this database: `Billing.joined`), the holds are written by that
        transaction and commit with the jobs in its one round trip (NotJoined: billing could not
        take them there, or one of its guards failed the transaction; nothing held). With
        `refusals` not known yet otherwise, every group's jobs are written while billing decides
        (`_write_reserving`), and a refusal rolls them back (`_Refused`). Jobs that idle long polls
        of this replica can take are stored leased to them and handed over after the commit (`handoff`)."""
        deps = self.deps
        claim: Claim | None = None
        handed: list[Prepared] = []
        reserves: Joined | None = None
        committed = False
        try:
            async with deps.db.transaction() as s:
                writes = Writes()
                if joined is not None:
                    reserves = await deps.billing.reserve_in(joined, s, writes, self._holds(groups))
                    decided = self._refusals(groups, reserves.outcomes)
                    if self._granted_refused(groups, reserves.outcomes, decided):
                        raise NotJoined()  # rolled back: the usual way releases a refused group's granted holds
                    refusals = list(decided)
                new = [p for g, refused in zip(groups, refusals or [None] * len(groups), strict=True)
                       if refused is None for p in g.fresh]
                claim = deps.idle.claim([(p.job.id, p.job.queue_name, p.job.customer_id) for p in new
                                         if p.job.status == PENDING])
                handed = _lease_claimed(new, claim, deps.now(), deps.config.lease_ttl_seconds)
                if refusals is None:
                    refusals = await self._write_reserving(s, writes, groups)
                    if any(r is not None for r in refusals):
                        raise _Refused(refusals)
                else:
                    await self._write(s, writes, new)
                for g, refused in zip(groups, refusals, strict=True):
                    if refused is None:  # the job id comes from the request id: a repeat fails on the job's key
                        idempotency.remember_many(writes, IdempotencyKey, g.scope, [
                            (p.job.request_id, p.hash, p.job.id) for p in g.fresh if p.job.request_id])
                if held and time.monotonic() - reserved > deps.config.orphan_hold_grace_seconds / 2:
                    # recovery may soon take these holds for a dead submit's: give them back instead
                    # (holds written here go with the rollback; some may be an earlier attempt's)
                    raise _TooSlow()
                try:
                    written = await writes.commit(s, _XID if handed else None)
                except DBAPIError as exc:
                    if joined is not None and joined.failed(exc):  # billing's guard: nothing stored
                        raise NotJoined() from None
                    raise
                committed = True
                if handed:  # their ends are decided from what was stored (`LeaseCopies`)
                    deps.copies.keep_handed([p.job for p in handed], int(written[0][0]), deps.now())
        finally:
            if claim and committed:  # stored (even if the connection's return failed): the calls get their jobs
                deps.idle.deliver(claim, {p.job.id: lease_pb(p.job) for p in handed})
            elif claim:  # nothing was stored: the jobs are Pending again (a retry may store them), the calls look again
                _unlease(handed)
                deps.idle.release(claim)
            if reserves is not None:  # after the runners got their jobs
                await _quietly(reserves.ended(committed), "billing's follow-up of the holds")
        if claim:
            after.append(leases.record_started(deps, [p.job for p in handed], handed[0].job.lease_start_time))
        return refusals

    async def _write_reserving(self, s: Any, writes: Writes, groups: Sequence[Group]) -> list[Exception | None]:
        """Every group's jobs written (by COPY) while billing reserves their holds: the two round
        trips overlap, and a batch of 1,000 waits for the longer of them rather than their sum.
        Returns the refusals; an error while writing waits for the reserve first, so what it
        held is known to whoever gives it back."""
        reserving = asyncio.ensure_future(self._reserve(groups))
        try:
            await self._write(s, writes, [p for g in groups for p in g.fresh])
        except BaseException:
            await asyncio.gather(reserving, return_exceptions=True)
            raise
        return list(await reserving)

    @staticmethod
    async def _write(s: Any, writes: Writes, new: Sequence[Prepared]) -> None:
        """New jobs and their first status change (and for a job handed to a long poll, its attempt
        and its second): a few rows go with the COMMIT in one round trip, a batch's by COPY at once
        (`kit.db.Writes`)."""
        if not new:
            return
        await writes.insert(s, _JOBS, Rows(NewJob.__slots__, [p.values() for p in new]))
        changes: list[tuple[Any, ...]] = []  # _CHANGE_COLUMNS
        for p in new:
            job = p.job
            if job.status == SCHEDULED:
                changes.append((job.id, SCHEDULED, job.create_time, 0,
                                f"submitted, scheduled for {job.schedule_time:%Y-%m-%dT%H:%M:%SZ}"))
                continue
            changes.append((job.id, PENDING, job.create_time, 0, "submitted"))
            if job.status == RUNNING:
                changes.append((job.id, RUNNING, job.lease_start_time, 1, f"leased by runner {job.runner_id}"))
        await writes.insert(s, _STATUS_CHANGES, Rows(_CHANGE_COLUMNS, changes))
        if started := [p.job for p in new if p.job.status == RUNNING]:
            await writes.insert(s, _ATTEMPTS, [
                {"job_id": j.id, "attempt": 1, "lease_id": j.lease_id, "runner_id": j.runner_id,
                 "outcome": pb.ATTEMPT_OUTCOME_RUNNING, "start_time": j.lease_start_time} for j in started])

    async def _give_back(self, held: Sequence[Prepared]) -> None:
        """Holds of a submit whose commit surely failed: released now rather than by recovery's
        sweep; if billing cannot be reached, the sweep releases them after its grace."""
        if not held:
            return
        try:
            await self.deps.billing.release([p.job.hold_id for p in held], "submit not stored")
        except Exception as exc:
            log.warning("cannot release the holds of a failed submit now (%s); recovery will", _kind(exc))

    async def _one_by_one(self, groups: Sequence[Group], after: list[Awaitable[None]]) -> list[Exception | None]:
        """Each group in its own commit; one group's error is its own outcome, so it cannot fail the
        groups stored before it (their callers would hear an error for a committed job)."""
        out: list[Exception | None] = []
        for g in groups:
            try:
                out.append((await self._store([g], after))[0])
            except Exception as exc:
                out.append(exc)
        return out

    async def _reserve(self, groups: Sequence[Group]) -> list[DomainError | None]:
        """One billing call for every group's holds; a group with any refusal gets none (its granted
        holds are released) and its first refusal, naming the item."""
        outcomes = await self.deps.billing.reserve(self._holds(groups))
        refusals = self._refusals(groups, outcomes)
        if give_back := self._granted_refused(groups, outcomes, refusals):
            await self.deps.billing.release(give_back, "submit refused")
        return refusals

    @staticmethod
    def _held(groups: Sequence[Group]) -> list[tuple[int, Prepared]]:
        """(group index, job) of every job with a hold, in the order of the billing call."""
        return [(gi, p) for gi, g in enumerate(groups) for p in g.fresh if p.job.hold_id]

    def _holds(self, groups: Sequence[Group]) -> list[HoldRequest]:
        return [HoldRequest(p.job.hold_id, owner_text(groups[gi].owner.customer_id), p.job.estimated_cost_cents,
                            p.job.currency_code, p.id_text, p.job.hold_expire_time, owner_text(p.job.project_id),
                            owner_text(p.job.job_type_id)) for gi, p in self._held(groups)]

    def _refusals(self, groups: Sequence[Group], outcomes: Sequence[DomainError | None]
                  ) -> list[DomainError | None]:
        """Each group's first refusal, naming the item (None: all its holds granted)."""
        refusals: list[DomainError | None] = [None] * len(groups)
        for (gi, p), err in zip(self._held(groups), outcomes, strict=True):
            if err is not None and refusals[gi] is None:
                refusals[gi] = self._refusal(groups[gi], p, err)
        return refusals

    def _granted_refused(self, groups: Sequence[Group], outcomes: Sequence[DomainError | None],
                         refusals: Sequence[DomainError | None]) -> list[str]:
        """The granted holds of refused groups (a group's holds are all or none)."""
        return [p.job.hold_id for (gi, p), err in zip(self._held(groups), outcomes, strict=True)
                if err is None and refusals[gi] is not None]

    @staticmethod
    def _refusal(group: Group, p: Prepared, err: DomainError) -> DomainError:
        prefix = group.prefix(p.position)
        field = prefix + "job_type_id"
        if err.reason in ("INSUFFICIENT_FUNDS", "CREDIT_LIMIT_EXCEEDED"):
            return insufficient_funds(err, prefix.rstrip(".") or "project_id")
        if err.reason == "SPENDING_LIMIT_REACHED":  # billing's monthly limit of the customer or project
            where = prefix.rstrip(".") or "project_id"
            return FailedPrecondition(f"{where}: {err.message}", field=where, reason=err.reason, metadata=err.metadata)
        if err.reason == "CURRENCY_MISMATCH":
            return FailedPrecondition(f"{field}: the customer has no wallet in the project's billing currency "
                                      f"({err.message})", field=field, reason=err.reason)
        return err

    async def _enqueue(self, fresh: Sequence[Prepared]) -> None:
        deps = self.deps
        changes = Changes()
        ready = [QueueItem(p.id_text, p.job.queue_name, owner_text(p.job.customer_id), p.job.priority,
                           p.job.create_time.timestamp())
                 for p in fresh if p.job.status == PENDING]
        later = [ScheduledItem(p.id_text, p.job.queue_name, owner_text(p.job.customer_id), p.job.priority,
                               p.job.schedule_time.timestamp()) for p in fresh
                 if p.job.status == SCHEDULED and p.job.schedule_time is not None]
        if ready:
            await deps.queue.enqueue(ready)
            changes.ready_queues.update(i.job_type for i in ready)
        if later:
            await deps.queue.schedule(later)
            changes.scheduled = True
        _count_submitted(fresh)
        await changes.publish(deps.signals)
