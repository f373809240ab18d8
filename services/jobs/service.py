"""Jobs use cases: each method is one transaction, authorization included.

Job types (this session's scope). A job type belongs to a project; its owner (customer and
reseller) is learned from tenancy once, at create, and stored on the row, so every later
read and write is scoped in SQL. Another tenant's project or job type is NOT_FOUND.

Catalog types are the operator's: no owner, readable by everyone, changed by admins only, priced
by appended `JobTypePrice` versions. A customer's own type costs the platform fee, so it carries
no price of its own (a non-zero base or maximum cost is PRICE_SET_BY_OPERATOR).
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from innosystem.billing.v1 import billing_pb2
from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.kit import idempotency, pagination, quota
from innosystem.kit import principal as principals
from innosystem.kit.currencies import ISO_4217
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from innosystem.kit.freshness import ChangeTokens, catalog, job_types_of
from innosystem.kit.scope import Scope
from innosystem.kit.validation import id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs import pricing
from services.jobs.models import IdempotencyKey, JobType, JobTypePrice
from services.jobs.repository import JobsRepository
from services.jobs.tenants import ProjectOwner

log = logging.getLogger(__name__)

ProjectLookup = Callable[[uuid.UUID, bool], Awaitable[ProjectOwner | None]]

F = "job_type."  # field paths in errors are relative to the request
RP = F + "default_retry_policy."
EA = F + "external_api."

PRIORITIES = frozenset(range(enums.PRIORITY_LEVEL_LOW, enums.PRIORITY_LEVEL_CRITICAL + 1))
PERSISTENCE = frozenset(range(enums.PERSISTENCE_POLICY_MINIMAL, enums.PERSISTENCE_POLICY_ARCHIVE + 1))
PROCESSORS = frozenset(range(enums.PROCESSOR_TYPE_SYNC, enums.PROCESSOR_TYPE_BATCH + 1))
OVER_CAPTURE = frozenset(billing_pb2.OverCapturePolicy.values())
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
SENSITIVE = re.compile(r"^(payload|result)(\.[^.\s]+)+$")

MAX_DESCRIPTION, MAX_VERSION = 4000, 64
MAX_TAGS, MAX_TAG_LEN = 50, 64
MAX_ERROR_TYPES, MAX_ERROR_TYPE_LEN = 50, 200
MAX_SENSITIVE, MAX_SENSITIVE_LEN = 100, 200
MAX_COST_CENTS = 10_000_000  # 100,000.00 per job: anything above is a typo, not a price
MAX_TIMEOUT_SECONDS = 24 * 3600
DEFAULT_TIMEOUT_SECONDS = 300
MAX_ATTEMPTS = 100
MAX_INTERVAL_SECONDS = 7 * 24 * 3600
MAX_MULTIPLIER = 100.0
DEFAULT_RETRY: dict[str, Any] = {
    "retry_max_attempts": 3, "retry_initial_interval_seconds": 1, "retry_backoff_multiplier": 2.0,
    "retry_max_interval_seconds": 300, "non_retryable_error_types": [],
}
DEFAULT_MAX_BATCH, MAX_BATCH = 100, 10_000
DEFAULT_MAX_JOB_TYPES = 500  # per customer, over all its projects
MAX_JOB_TYPES_SETTING = "INNOSYSTEM_JOBS_MAX_JOB_TYPES_PER_CUSTOMER"
MAX_URL_LEN, MAX_EXTERNAL_RETRIES = 2048, 10

# What a create leaves unset becomes this (the proto documents the same defaults).
CREATE_DEFAULTS: dict[str, Any] = {
    "description": "", "default_priority": enums.PRIORITY_LEVEL_MEDIUM, **DEFAULT_RETRY,
    "default_persistence_policy": enums.PERSISTENCE_POLICY_STANDARD, "base_cost_cents": 0, "max_cost_cents": 0,
    "currency_code": "", "over_capture_policy": 0, "charge_on_failure": False,
    "processor_type": enums.PROCESSOR_TYPE_SYNC, "external_api": None, "max_batch_size": 0, "enabled": True,
    "version": "", "required_tags": [], "timeout_seconds": DEFAULT_TIMEOUT_SECONDS, "sensitive_fields": [],
}



def _bad(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)





def _enum(value: int, known: frozenset[int], default: int, field: str, reason: str) -> int:
    if value == 0:
        return default
    if value not in known:
        raise _bad(field, f"unknown value {value}", reason)
    return value


def _int_range(value: int, low: int, high: int, field: str, reason: str) -> int:
    if not low <= value <= high:
        raise _bad(field, f"must be between {low} and {high}, got {value}", reason)
    return value


def _strings(values: Sequence[str], most: int, longest: int, field: str, reason: str,
             pattern: re.Pattern[str] | None = None) -> list[str]:
    out = list(dict.fromkeys(v.strip() for v in values))
    if len(out) > most:
        raise _bad(field, f"at most {most} entries", reason)
    for v in out:
        if not v or len(v) > longest or (pattern is not None and not pattern.match(v)):
            raise _bad(field, f"entry {v!r} is not valid (1 to {longest} characters"
                              f"{', ' + pattern.pattern if pattern else ''})", reason)
    return out


def _retry_policy(policy: Mapping[str, Any] | None) -> dict[str, Any]:
    """Columns of a retry policy. Absent: the defaults. Present: max_attempts is required (≥ 1);
    a zero backoff_multiplier or max_interval_seconds means its default (2.0; max(300, initial));
    initial_interval_seconds is taken as given (0 = retry at once)."""
    if policy is None:
        return dict(DEFAULT_RETRY)
    reason = "INVALID_RETRY_POLICY"
    attempts = _int_range(policy.get("max_attempts", 0), 1, MAX_ATTEMPTS, RP + "max_attempts", reason)
    initial = _int_range(policy.get("initial_interval_seconds", 0), 0, MAX_INTERVAL_SECONDS,
                         RP + "initial_interval_seconds", reason)
    multiplier = float(policy.get("backoff_multiplier", 0.0)) or DEFAULT_RETRY["retry_backoff_multiplier"]
    if not (math.isfinite(multiplier) and 1.0 <= multiplier <= MAX_MULTIPLIER):
        raise _bad(RP + "backoff_multiplier", f"must be between 1.0 and {MAX_MULTIPLIER}, got {multiplier}", reason)
    longest = policy.get("max_interval_seconds", 0) or max(DEFAULT_RETRY["retry_max_interval_seconds"], initial)
    _int_range(longest, initial, MAX_INTERVAL_SECONDS, RP + "max_interval_seconds", reason)
    errors = _strings(policy.get("non_retryable_error_types", []), MAX_ERROR_TYPES, MAX_ERROR_TYPE_LEN,
                      RP + "non_retryable_error_types", reason)
    return {"retry_max_attempts": attempts, "retry_initial_interval_seconds": initial,
            "retry_backoff_multiplier": multiplier, "retry_max_interval_seconds": longest,
            "non_retryable_error_types": errors}


def _external_api(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    reason = "INVALID_EXTERNAL_API"
    url = str(config.get("url", "")).strip()
    parts = urlsplit(url)
    if len(url) > MAX_URL_LEN or parts.scheme != "https" or not parts.hostname:
        raise _bad(EA + "url", f"must be an https URL of at most {MAX_URL_LEN} characters", reason)
    method = str(config.get("http_method", "")).strip().upper() or "POST"
    if method not in HTTP_METHODS:
        raise _bad(EA + "http_method", f"must be one of {', '.join(sorted(HTTP_METHODS))}", reason)
    timeout = _int_range(config.get("timeout_seconds", 0), 0, MAX_TIMEOUT_SECONDS, EA + "timeout_seconds", reason)
    retries = _int_range(config.get("max_retries", 0), 0, MAX_EXTERNAL_RETRIES, EA + "max_retries", reason)
    return {"url": url, "http_method": method, "timeout_seconds": timeout, "max_retries": retries}


def validate(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for the given resource fields (create or update), with unset enums and
    zero timeouts resolved to their defaults; raises naming the first bad field."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "name":
            value = value.strip()
            if not NAME.match(value):
                raise _bad(F + "name", "must be 1 to 100 characters: letters, digits and _ . : / - "
                                       "(starting with a letter or digit)", "INVALID_NAME")
            out[name] = value
        elif name == "description":
            if len(value) > MAX_DESCRIPTION:
                raise _bad(F + name, f"at most {MAX_DESCRIPTION} characters", "INVALID_DESCRIPTION")
            out[name] = value
        elif name == "default_priority":
            out[name] = _enum(value, PRIORITIES, enums.PRIORITY_LEVEL_MEDIUM, F + name, "INVALID_PRIORITY")
        elif name == "default_retry_policy":
            out.update(_retry_policy(value))
        elif name == "default_persistence_policy":
            out[name] = _enum(value, PERSISTENCE, enums.PERSISTENCE_POLICY_STANDARD, F + name,
                              "INVALID_PERSISTENCE_POLICY")
        elif name in ("base_cost_cents", "max_cost_cents"):
            out[name] = _int_range(value, 0, MAX_COST_CENTS, F + name, "INVALID_COST")
            if value:  # a catalog type's price is its JobTypePrices; an own type's the platform fee
                raise _bad(F + name, "must be 0: catalog prices are set with AddJobTypePrice (POST "
                                     "/v1/jobTypes/{id}/prices), and a customer's own type costs the platform fee",
                           "PRICE_SET_BY_OPERATOR")
        elif name == "currency_code":
            value = value.strip().upper()
            if value and not CURRENCY.match(value):
                raise _bad(F + name, "must be an ISO 4217 code such as EUR, or empty", "INVALID_CURRENCY")
            if value and value not in ISO_4217:
                raise _bad(F + name, f"{value!r} is not an active ISO 4217 currency", "UNKNOWN_CURRENCY")
            out[name] = value
        elif name == "processor_type":
            out[name] = _enum(value, PROCESSORS, enums.PROCESSOR_TYPE_SYNC, F + name, "INVALID_PROCESSOR_TYPE")
        elif name == "over_capture_policy":
            if value not in OVER_CAPTURE:
                raise _bad(F + name, f"unknown value {value}", "INVALID_OVER_CAPTURE_POLICY")
            out[name] = value
        elif name in ("enabled", "charge_on_failure"):
            out[name] = bool(value)
        elif name == "version":
            value = value.strip()
            if len(value) > MAX_VERSION:
                raise _bad(F + name, f"at most {MAX_VERSION} characters", "INVALID_VERSION")
            out[name] = value
        elif name == "required_tags":
            out[name] = _strings(value, MAX_TAGS, MAX_TAG_LEN, F + name, "INVALID_TAGS")
        elif name == "timeout_seconds":
            out[name] = _int_range(value or DEFAULT_TIMEOUT_SECONDS, 1, MAX_TIMEOUT_SECONDS, F + name,
                                   "INVALID_TIMEOUT")
        elif name == "sensitive_fields":
            out[name] = _strings(value, MAX_SENSITIVE, MAX_SENSITIVE_LEN, F + name, "INVALID_SENSITIVE_FIELDS",
                                 SENSITIVE)
        elif name == "external_api":
            out[name] = _external_api(value)
        elif name == "max_batch_size":
            out[name] = _int_range(value, 0, MAX_BATCH, F + name, "INVALID_MAX_BATCH_SIZE")
        else:
            raise _bad(F + name, "cannot be set", "FIELD_NOT_SETTABLE")
    return out


def check_consistent(values: dict[str, Any]) -> None:
    """Rules across fields, on the type as it will be stored; fills the batch size default."""
    external = values["processor_type"] == enums.PROCESSOR_TYPE_EXTERNAL_API
    if external and values["external_api"] is None:
        raise _bad(F + "external_api", "is required when processor_type is PROCESSOR_TYPE_EXTERNAL_API",
                   "EXTERNAL_API_REQUIRED")
    if not external and values["external_api"] is not None:
        raise _bad(F + "external_api", "is only for PROCESSOR_TYPE_EXTERNAL_API (clear it with the update mask)",
                   "EXTERNAL_API_NOT_ALLOWED")
    if values["max_cost_cents"] and values["max_cost_cents"] < values["base_cost_cents"]:
        raise _bad(F + "max_cost_cents", "must be 0 (= base_cost_cents) or at least base_cost_cents",
                   "INVALID_COST")
    if values["processor_type"] == enums.PROCESSOR_TYPE_BATCH and not values["max_batch_size"]:
        values["max_batch_size"] = DEFAULT_MAX_BATCH


def _require_admin(caller: Principal, what: str) -> None:
    if caller.kind != principals.ADMIN:
        raise PermissionDenied(f"only the operator (an admin) {what}", reason="CATALOG_ADMIN_ONLY")


def _currency(value: str, field: str) -> str:
    code = value.strip().upper()
    if not CURRENCY.match(code):
        raise _bad(field, "must be an ISO 4217 code such as EUR", "INVALID_CURRENCY")
    if code not in ISO_4217:
        raise _bad(field, f"{code} is not an active ISO 4217 currency", "UNKNOWN_CURRENCY")
    return code


def _require_manager(caller: Principal) -> None:
    if caller.kind not in (principals.ADMIN, principals.RESELLER, principals.CUSTOMER, principals.SERVICE):
        raise PermissionDenied("only a customer, its reseller or an admin manages job types",
                               reason="JOB_TYPE_MANAGER_ONLY")


class JobsService:
    def __init__(self, db: Database, projects: ProjectLookup, max_job_types: int = DEFAULT_MAX_JOB_TYPES,
                 tokens: ChangeTokens | None = None, now: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self._now = now  # the submits' clock: a price is in force from its effective time on that clock
        self._projects = projects
        self.max_job_types = max_job_types  # per customer
        self._tokens = tokens  # submits cache a project's types while its change token stays the same

    async def _announce(self, project_id: uuid.UUID | None) -> None:
        """After a committed change to a project's types (None: to the catalog or its prices): every
        replica's submits see it at once."""
        if self._tokens is None:
            return
        try:
            await self._tokens.changed(job_types_of(project_id) if project_id is not None else catalog())
        except RedisError as exc:
            log.error("a job type change of project %s is stored but not announced: %s", project_id or "catalog", exc)
            raise Unavailable("the change is stored but not yet visible everywhere; repeat the call",
                              reason="CHANGE_NOT_ANNOUNCED") from None

    async def _visible_project(self, caller: Principal, project_id: str, fresh: bool = False) -> ProjectOwner:
        pid = id_or_not_found(project_id, "project_id", "project")
        owner = await self._projects(pid, fresh)
        if owner is None:
            raise NotFound(f"project {project_id} not found", reason="PROJECT_NOT_FOUND")
        principals.ensure_customer_visible(caller, str(owner.customer_id), str(owner.reseller_id or ""), "project")
        return owner

    async def _visible_job_type(self, repo: JobsRepository, caller: Principal, job_type_id: str,
                                lock: bool = False) -> JobType:
        tid = id_or_not_found(job_type_id, "job_type_id", "job_type")
        row = await repo.get_job_type(tid, Scope.of(caller), lock=lock)
        if row is None:
            raise NotFound(f"job type {job_type_id} not found", reason="JOB_TYPE_NOT_FOUND")
        if lock and row.catalog:  # a change: catalog types are the operator's
            _require_admin(caller, "changes catalog job types")
        return row

    # job types

    async def create_job_type(self, caller: Principal, project_id: str, fields: Mapping[str, Any],
                              request_id: str, request_hash: bytes) -> JobType:
        row = await self._create_job_type(caller, project_id, fields, request_id, request_hash)
        await self._announce(row.project_id)
        return row

    async def _create_job_type(self, caller: Principal, project_id: str, fields: Mapping[str, Any],
                               request_id: str, request_hash: bytes) -> JobType:
        _require_manager(caller)
        values = {**CREATE_DEFAULTS, **validate(fields)}
        check_consistent(values)
        owner = await self._visible_project(caller, project_id)
        scope = f"CreateJobType:{owner.project_id}"
        try:
            async with self.db.session() as s:
                repo = JobsRepository(s)
                earlier = await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)
                if earlier is not None:
                    row = await repo.get_job_type(earlier, Scope(unrestricted=True))
                    if row is not None:
                        return row
                if await repo.name_taken(owner.project_id, values["name"]):
                    raise self._name_taken(values["name"])
                await quota.serialize(s, "job_types", owner.customer_id)
                quota.check("job types", await repo.count_job_types(owner.customer_id), self.max_job_types,
                            MAX_JOB_TYPES_SETTING)
                row = JobType(project_id=owner.project_id, customer_id=owner.customer_id,
                              reseller_id=owner.reseller_id, **values)
                await repo.add(row)
                await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, row.id)
                return row
        except IntegrityError as exc:  # a concurrent create of the same name won the unique index
            if "ix_job_types_project_id_name" in str(exc.orig):
                raise self._name_taken(values["name"]) from None
            raise

    async def create_catalog_job_type(self, caller: Principal, fields: Mapping[str, Any], request_id: str,
                                      request_hash: bytes) -> JobType:
        _require_admin(caller, "creates catalog job types")
        values = {**CREATE_DEFAULTS, **validate(fields)}
        check_consistent(values)
        scope = "CreateCatalogJobType"
        try:
            async with self.db.session() as s:
                repo = JobsRepository(s)
                earlier = await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)
                if earlier is not None and (row := await repo.get_job_type(earlier, Scope(unrestricted=True))):
                    return row
                if await repo.name_taken(None, values["name"]):
                    raise self._name_taken(values["name"], "the catalog")
                row = JobType(project_id=None, customer_id=None, reseller_id=None, catalog=True, **values)
                await repo.add(row)
                await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, row.id)
        except IntegrityError as exc:
            if "ix_job_types_catalog_name" in str(exc.orig):
                raise self._name_taken(values["name"], "the catalog") from None
            raise
        await self._announce(None)
        return row

    async def list_catalog_job_types(self, size: int, token: str, *, enabled_only: bool = False,
                                     name: str = "") -> pagination.Page:
        size = pagination.page_size(size)
        async with self.db.session() as s:
            rows = await JobsRepository(s).list_job_types(Scope(unrestricted=True), size + 1,
                                                          pagination.decode_keyset(token), catalog_only=True,
                                                          enabled_only=enabled_only, name=name.strip())
        return pagination.keyset_page(rows, size)

    async def add_price(self, caller: Principal, job_type_id: str, fields: Mapping[str, Any]) -> JobTypePrice:
        """A new price version of a catalog type (admin only); bad input changes nothing."""
        _require_admin(caller, "sets catalog prices")
        now = self._now()
        async with self.db.session() as s:
            repo = JobsRepository(s)
            row = await self._visible_job_type(repo, caller, job_type_id, lock=True)
            if not row.catalog:
                raise FailedPrecondition(f"job type {row.name} is a customer's own type: it costs the platform fee "
                                         "and has no prices", field="job_type_id", reason="NOT_A_CATALOG_TYPE")
            currency = _currency(fields.get("currency_code", ""), "price.currency_code")
            values = pricing.validate_price(fields, now, now + timedelta(days=3653))
            price = JobTypePrice(job_type_id=row.id, currency_code=currency, create_time=now, **values)
            s.add(price)
            await s.flush()
        await self._announce(None)
        return price

    async def list_prices(self, caller: Principal, job_type_id: str, currency_code: str) -> Sequence[JobTypePrice]:
        currency = _currency(currency_code, "currency_code") if currency_code else ""
        async with self.db.session() as s:
            repo = JobsRepository(s)
            row = await self._visible_job_type(repo, caller, job_type_id)
            return await repo.prices([row.id], currency=currency, newest_first=True, limit=500)

    @staticmethod
    def _name_taken(name: str, where: str = "the project") -> AlreadyExists:
        return AlreadyExists(f"{where} already has a job type named {name!r}", field=F + "name",
                             reason="JOB_TYPE_NAME_TAKEN", metadata={"name": name})

    async def get_job_type(self, caller: Principal, job_type_id: str) -> JobType:
        async with self.db.session() as s:
            return await self._visible_job_type(JobsRepository(s), caller, job_type_id)

    async def list_job_types(self, caller: Principal, project_id: str, size: int, token: str, *,
                             enabled_only: bool = False, name: str = "", customer_id: str = "") -> pagination.Page:
        size = pagination.page_size(size)
        after = pagination.decode_keyset(token)
        pid, cid = None, None
        if project_id != "-":
            pid = (await self._visible_project(caller, project_id)).project_id
        if customer_id:
            try:
                cid = uuid.UUID(customer_id)
            except ValueError:
                raise InvalidArgument("customer_id must be a UUID", field="customer_id", reason="INVALID_ID") from None
        async with self.db.session() as s:
            rows = await JobsRepository(s).list_job_types(Scope.of(caller), size + 1, after, project_id=pid,
                                                          customer_id=cid, enabled_only=enabled_only,
                                                          name=name.strip())
        return pagination.keyset_page(rows, size)

    async def update_job_type(self, caller: Principal, job_type_id: str, changes: Mapping[str, Any]) -> JobType:
        row = await self._update_job_type(caller, job_type_id, changes)
        await self._announce(row.project_id)
        return row

    async def _update_job_type(self, caller: Principal, job_type_id: str, changes: Mapping[str, Any]) -> JobType:
        _require_manager(caller)
        values = validate(changes)
        try:
            async with self.db.session() as s:
                repo = JobsRepository(s)
                row = await self._visible_job_type(repo, caller, job_type_id, lock=True)
                if "name" in values and values["name"] != row.name and \
                        await repo.name_taken(row.project_id if not row.catalog else None, values["name"]):
                    raise self._name_taken(values["name"], "the catalog" if row.catalog else "the project")
                merged = {c: getattr(row, c) for c in CREATE_DEFAULTS} | values
                check_consistent(merged)
                for column, value in merged.items():
                    if getattr(row, column) != value:
                        setattr(row, column, value)
                await s.flush()
                return row
        except IntegrityError as exc:  # a concurrent create or rename took the name first
            if "ix_job_types_project_id_name" in str(exc.orig) or "ix_job_types_catalog_name" in str(exc.orig):
                where = "the catalog" if "ix_job_types_catalog_name" in str(exc.orig) else "the project"
                raise self._name_taken(values["name"], where) from None
            raise

    async def delete_job_type(self, caller: Principal, job_type_id: str) -> None:
        """FAILED_PRECONDITION while the type has unfinished jobs (disable it first); finished jobs
        keep their type's name and id."""
        _require_manager(caller)
        async with self.db.session() as s:
            repo = JobsRepository(s)
            row = await self._visible_job_type(repo, caller, job_type_id, lock=True)
            if await repo.has_unfinished_jobs(row.id):
                raise FailedPrecondition(f"job type {row.name} has unfinished jobs; disable it and let them finish",
                                         field="job_type_id", reason="JOB_TYPE_IN_USE")
            await repo.delete_job_type(row.id)
        await self._announce(row.project_id)
