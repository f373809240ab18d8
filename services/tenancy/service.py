"""Tenancy use cases: each method is one transaction, authorization included.

Who may do what, when the caller can see the resource: a resource the caller cannot see is
NOT_FOUND (ids of other tenants do not leak); an action on a resource it can see but may not
take is PERMISSION_DENIED with a reason saying who may. A customer's credentials (its API
keys) and its projects' encryption key are the customer's alone: its reseller manages the
business (create, deactivate, delete) but never receives a key that acts as the customer nor
points its data at another key. An admin may do both as a break-glass action, which is
recorded first (a WARNING log line and a row in the append-only `tenancy.audit_events`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from innosystem.kit import idempotency, pagination, quota
from innosystem.kit import principal as principals
from innosystem.kit.currencies import ISO_4217
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from innosystem.kit.scope import Scope
from innosystem.kit.validation import check_text, id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy import audit
from services.tenancy.accounts import Account
from services.tenancy.models import ApiKey, Customer, IdempotencyKey, Project, Reseller, WalletOpening
from services.tenancy.repository import TenancyRepository

log = logging.getLogger(__name__)

API_KEY_PREFIX = "isk_"
BOOTSTRAP_LABEL = "bootstrap"
# The document's pattern (tenancy.proto), whose \s (ECMA-262) also covers U+FEFF.
_EMAIL = re.compile(r"^[^@\s\ufeff]+@[^@\s\ufeff]+\.[^@\s\ufeff]+$")
MAX_TAGS, MAX_TAG_LEN, MAX_DESCRIPTION = 50, 64, 4000
DEFAULT_MAX_PROJECTS = 100
MAX_PROJECTS_SETTING = "INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER"
LAST_USE_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class Created:
    row: Any
    api_key: str  # empty on an idempotent repeat


def customer_only(caller: Principal, customer_id: uuid.UUID, what: str, field: str | None = None) -> bool:
    """PERMISSION_DENIED unless the caller is the customer itself or an admin; True for an admin
    (whose action is break-glass and must be audited). The customer is already known visible."""
    if caller.kind == principals.CUSTOMER and caller.customer_id == str(customer_id):
        return False
    if caller.kind == principals.ADMIN:
        return True
    raise PermissionDenied(f"only the customer itself may {what} (an admin only as an audited break-glass action)",
                           field=field, reason="CUSTOMER_ONLY")


async def break_glass(repo: TenancyRepository, caller: Principal, action: str, *, customer: Customer,
                      project_id: uuid.UUID | None = None, detail: str = "") -> None:
    """Record an admin's action on a customer's secrets, in the action's own transaction."""
    log.warning("break-glass: admin %s on customer %s", action, customer.id,
                extra={"audit": "break_glass", "action": action, "actor_key_id": caller.key_id,
                       "customer_id": str(customer.id), "reseller_id": str(customer.reseller_id or ""),
                       "project_id": str(project_id or ""), "detail": detail})
    await audit.record(repo, caller, action, Account(principals.CUSTOMER, customer_id=customer.id),
                       target=f"projects/{project_id}" if project_id else f"customers/{customer.id}",
                       detail=detail, reseller_id=customer.reseller_id, project_id=project_id)




async def _audit(repo: TenancyRepository, caller: Principal, action: str, *, customer_id: uuid.UUID | None = None,
                 reseller_id: uuid.UUID | None = None, target: str = "", detail: str = "") -> None:
    """An administrative action on an account's business, in the action's own transaction."""
    account = (Account(principals.CUSTOMER, customer_id=customer_id) if customer_id
               else Account(principals.RESELLER, reseller_id=reseller_id) if reseller_id else Account.platform())
    await audit.record(repo, caller, action, account, target=target, detail=detail, reseller_id=reseller_id)


def validate(changes: dict[str, Any]) -> None:
    """Field rules shared by create and update; raises naming the first bad field."""
    for name, value in changes.items():  # what PostgreSQL cannot store, before any rule below
        if isinstance(value, str):
            check_text(value, name)
    for name in ("name",):
        if name in changes:
            value = changes[name].strip()
            if not value or len(value) > 200:
                raise InvalidArgument(f"{name} must be 1 to 200 characters", field=name, reason="INVALID_NAME")
            changes[name] = value
    if "email" in changes and (len(changes["email"]) > 320 or not _EMAIL.match(changes["email"])):
        raise InvalidArgument(f"email {changes['email']!r} is not an email address", field="email",
                              reason="INVALID_EMAIL")
    if "commission_rate_bps" in changes and not 0 <= changes["commission_rate_bps"] <= 10_000:
        raise InvalidArgument("commission_rate_bps must be between 0 and 10000 (basis points)",
                              field="commission_rate_bps", reason="INVALID_COMMISSION_RATE")
    if "description" in changes and len(changes["description"]) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description must be at most {MAX_DESCRIPTION} characters", field="description",
                              reason="INVALID_DESCRIPTION")
    if changes.get("encryption_key_id"):
        try:
            uuid.UUID(changes["encryption_key_id"])
        except ValueError:
            raise InvalidArgument("encryption_key_id must be a key id (a UUID) or empty",
                                  field="project.encryption_key_id", reason="INVALID_ID") from None
    if "billing_currency_code" in changes:
        code = changes["billing_currency_code"].strip().upper()
        if code and (len(code) != 3 or not code.isascii() or not code.isalpha()):
            raise InvalidArgument("project.billing_currency_code must be an ISO 4217 code such as EUR, or empty",
                                  field="project.billing_currency_code", reason="INVALID_CURRENCY")
        if code and code not in ISO_4217:
            raise InvalidArgument(f"project.billing_currency_code: {code} is not an active ISO 4217 currency",
                                  field="project.billing_currency_code", reason="UNKNOWN_CURRENCY")
        changes["billing_currency_code"] = code
    if "tags" in changes:
        tags = list(dict.fromkeys(t.strip() for t in changes["tags"]))
        if len(tags) > MAX_TAGS or any(not t or len(t) > MAX_TAG_LEN for t in tags):
            raise InvalidArgument(f"tags: at most {MAX_TAGS}, each 1 to {MAX_TAG_LEN} characters", field="tags",
                                  reason="INVALID_TAGS")
        changes["tags"] = tags


class Revoked(Protocol):
    """Told, after the commit, that credentials stopped being valid (or changed): an account's
    (customer or reseller), one key's or session's (`key_id`), one user's sessions, or
    `everyone`'s (a platform-wide rule changed)."""

    def __call__(self, *, customer_id: str = "", reseller_id: str = "", key_id: str = "", user_id: str = "",
                 everyone: bool = False) -> Awaitable[None]: ...


async def _nobody_told(*, customer_id: str = "", reseller_id: str = "", key_id: str = "", user_id: str = "",
                       everyone: bool = False) -> None:
    return None


# Told, after the commit, that a customer's projects changed (a key set or cleared, deactivated,
# deleted): services that cache project owners check a change token (`kit.freshness`) instead of
# asking tenancy on every submit. Raises if it cannot tell them.
ProjectsChanged = Callable[[uuid.UUID], Awaitable[None]]


async def _no_cache_told(customer_id: uuid.UUID) -> None:
    return None


CheckKey = Callable[[str, uuid.UUID], Awaitable[None]]


OpenWallet = Callable[[uuid.UUID, uuid.UUID | None], Awaitable[bool]]


async def _outbox_only(customer_id: uuid.UUID, reseller_id: uuid.UUID | None) -> bool:
    return False


class TenancyService:
    def __init__(self, db: Database, pepper: bytes, open_wallet: OpenWallet = _outbox_only,
                 on_access_revoked: Revoked = _nobody_told, check_encryption_key: CheckKey | None = None,
                 max_projects: int = DEFAULT_MAX_PROJECTS, on_projects_changed: ProjectsChanged = _no_cache_told
                 ) -> None:
        self.db = db
        self._projects_changed = on_projects_changed
        self.max_projects = max_projects  # per customer
        self._pepper = pepper
        # Opens the new customer's wallet before CreateCustomer answers (`WalletOpener.open_now`);
        # False: left to the outbox row written with the customer.
        self._open_wallet = open_wallet
        self._revoked = on_access_revoked
        # Raises unless the key exists, is the customer's and is usable (the keys service in
        # production, `EncryptionKeys.check`); None only where no keys service exists (unit tests).
        self._check_key = check_encryption_key

    def hash_key(self, api_key: str) -> bytes:
        return hmac.new(self._pepper, api_key.encode(), hashlib.sha256).digest()

    async def _issue_key(self, repo: TenancyRepository, kind: int, *, reseller_id: uuid.UUID | None = None,
                         customer_id: uuid.UUID | None = None) -> str:
        """A new key for an owner: stored as its keyed hash, returned in plaintext this once."""
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        await repo.add(ApiKey(key_hash=self.hash_key(api_key), prefix=api_key[:12], kind=kind,
                              reseller_id=reseller_id, customer_id=customer_id))
        return api_key

    # authentication

    async def authenticate(self, api_key: str) -> Principal:
        if len(api_key) < 16 or len(api_key) > 256:
            raise Unauthenticated("API key is malformed", reason="API_KEY_INVALID")
        async with self.db.session() as s:
            found = await TenancyRepository(s).find_key(self.hash_key(api_key))
        if found is None:
            raise Unauthenticated("API key is unknown or revoked", reason="API_KEY_INVALID")
        key, reseller, customer = found
        if (customer is not None and not customer.active) or (reseller is not None and not reseller.active):
            raise Unauthenticated("the account of this API key is inactive", reason="ACCOUNT_INACTIVE")
        now = utcnow()
        if key.expire_time is not None and key.expire_time <= now:
            raise Unauthenticated("API key has expired", reason="API_KEY_EXPIRED")
        if key.last_use_time is None or now - key.last_use_time > LAST_USE_PRECISION:
            # Gateways cache a key's answer, so this runs about once per cache TTL, not per request.
            async with self.db.session() as s:
                await TenancyRepository(s).touch_key(key.id, now)
        return Principal(
            kind=key.kind,  # type: ignore[arg-type]
            reseller_id=str(reseller.id) if reseller else "",
            customer_id=str(customer.id) if customer else "",
            key_id=str(key.id),
            role=key.role or 0,  # type: ignore[arg-type]
        )

    async def ensure_admin_key(self, api_key: str) -> None:
        """Make `api_key` a valid admin key and revoke earlier bootstrap keys (idempotent)."""
        if len(api_key) < 16:
            raise ValueError("INNOSYSTEM_ADMIN_API_KEY must be at least 16 characters")
        digest = self.hash_key(api_key)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            await repo.revoke_keys(label=BOOTSTRAP_LABEL, keep=digest)
            if not await repo.key_exists(digest):
                await repo.add(ApiKey(key_hash=digest, prefix=api_key[:12], kind=principals.ADMIN,
                                      label=BOOTSTRAP_LABEL))

    async def me(self, caller: Principal) -> str:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            if caller.kind == principals.CUSTOMER:
                customer = await repo.get_customer(uuid.UUID(caller.customer_id), Scope(unrestricted=True))
                return customer.name if customer else ""
            if caller.kind == principals.RESELLER:
                reseller = await repo.get_reseller(uuid.UUID(caller.reseller_id), Scope(unrestricted=True))
                return reseller.name if reseller else ""
        return "admin" if caller.kind == principals.ADMIN else ""

    # resellers

    async def create_reseller(self, caller: Principal, fields: dict[str, Any], request_id: str,
                              request_hash: bytes) -> Created:
        principals.require_admin(caller)
        validate(fields)
        scope = f"CreateReseller:{principals.account(caller)}"
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            if (earlier := await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)) is not None:
                row = await repo.get_reseller(earlier, Scope(unrestricted=True))
                if row is not None:
                    return Created(row, "")
            reseller = Reseller(**fields)
            await repo.add(reseller)
            api_key = await self._issue_key(repo, principals.RESELLER, reseller_id=reseller.id)
            await _audit(repo, caller, "CreateReseller", reseller_id=reseller.id, target=f"resellers/{reseller.id}")
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, reseller.id)
            return Created(reseller, api_key)

    async def _visible_reseller(self, repo: TenancyRepository, caller: Principal, reseller_id: str,
                                lock: bool = False) -> Reseller:
        rid = id_or_not_found(reseller_id, "reseller_id", "reseller")
        row = await repo.get_reseller(rid, Scope.of(caller), lock=lock)
        if row is None:
            raise NotFound(f"reseller {reseller_id} not found", reason="RESELLER_NOT_FOUND")
        return row

    async def get_reseller(self, caller: Principal, reseller_id: str) -> Reseller:
        async with self.db.session() as s:
            return await self._visible_reseller(TenancyRepository(s), caller, reseller_id)

    async def list_resellers(self, caller: Principal, size: int, token: str) -> pagination.Page:
        principals.require_admin(caller)
        size = pagination.page_size(size)
        async with self.db.session() as s:
            rows = await TenancyRepository(s).list_resellers(size + 1, pagination.decode_keyset(token))
        return pagination.keyset_page(rows, size)

    async def update_reseller(self, caller: Principal, reseller_id: str, changes: dict[str, Any]) -> Reseller:
        principals.require_admin(caller)
        validate(changes)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_reseller(repo, caller, reseller_id, lock=True)
            for name, value in changes.items():
                setattr(row, name, value)
            await _audit(repo, caller, "UpdateReseller", reseller_id=row.id, target=f"resellers/{row.id}",
                         detail=", ".join(sorted(changes)))
            await s.flush()
        if changes.get("active") is False:  # its keys and its customers' keys stop working now
            await self._revoked(reseller_id=str(row.id))
        return row

    async def delete_reseller(self, caller: Principal, reseller_id: str) -> None:
        principals.require_admin(caller)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_reseller(repo, caller, reseller_id, lock=True)
            if await repo.reseller_has_customers(row.id):
                raise FailedPrecondition("the reseller still has customers; move or delete them first",
                                         reason="RESELLER_HAS_CUSTOMERS")
            await repo.delete_reseller(row.id)
            await _audit(repo, caller, "DeleteReseller", reseller_id=row.id, target=f"resellers/{row.id}")
        await self._revoked(reseller_id=str(row.id))

    async def rotate_reseller_key(self, caller: Principal, reseller_id: str) -> str:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_reseller(repo, caller, reseller_id, lock=True)
            await repo.revoke_keys(reseller_id=row.id)
            api_key = await self._issue_key(repo, principals.RESELLER, reseller_id=row.id)
            await _audit(repo, caller, "RotateResellerApiKey", reseller_id=row.id, target=f"resellers/{row.id}")
        await self._revoked(reseller_id=str(row.id))
        return api_key

    # customers

    async def create_customer(self, caller: Principal, fields: dict[str, Any], request_id: str,
                              request_hash: bytes) -> Created:
        if caller.kind == principals.RESELLER:
            if fields.get("reseller_id") not in (None, uuid.UUID(caller.reseller_id)):
                raise PermissionDenied("a reseller creates customers only for itself", field="customer.reseller_id",
                                       reason="RESELLER_MISMATCH")
            fields["reseller_id"] = uuid.UUID(caller.reseller_id)
        elif caller.kind != principals.ADMIN:
            raise PermissionDenied("only an admin or a reseller may create customers", reason="ADMIN_OR_RESELLER_ONLY")
        validate(fields)
        scope = f"CreateCustomer:{principals.account(caller)}"
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            if (earlier := await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)) is not None:
                row = await repo.get_customer(earlier, Scope(unrestricted=True))
                if row is not None:
                    return Created(row, "")
            if fields.get("reseller_id") is not None and await repo.get_reseller(
                    fields["reseller_id"], Scope(unrestricted=True)) is None:
                raise InvalidArgument(f"reseller {fields['reseller_id']} does not exist", field="customer.reseller_id",
                                      reason="RESELLER_NOT_FOUND")
            customer = Customer(**fields)
            await repo.add(customer)
            api_key = await self._issue_key(repo, principals.CUSTOMER, customer_id=customer.id)
            await repo.add(WalletOpening(customer_id=customer.id, reseller_id=customer.reseller_id))
            await _audit(repo, caller, "CreateCustomer", customer_id=customer.id, reseller_id=customer.reseller_id,
                         target=f"customers/{customer.id}")
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, customer.id)
        # After the commit (the outbox row is durable): answer once the wallet exists if billing
        # can say so in time, so that a top-up right after this answer finds it.
        await self._open_wallet(customer.id, customer.reseller_id)
        return Created(customer, api_key)

    async def _visible_customer(self, repo: TenancyRepository, caller: Principal, customer_id: str,
                                lock: bool = False) -> Customer:
        cid = id_or_not_found(customer_id, "customer_id", "customer")
        row = await repo.get_customer(cid, Scope.of(caller), lock=lock)
        if row is None:
            raise NotFound(f"customer {customer_id} not found", reason="CUSTOMER_NOT_FOUND")
        return row

    async def get_customer(self, caller: Principal, customer_id: str) -> Customer:
        async with self.db.session() as s:
            return await self._visible_customer(TenancyRepository(s), caller, customer_id)

    async def list_customers(self, caller: Principal, size: int, token: str, reseller_id: str) -> pagination.Page:
        size = pagination.page_size(size)
        rid = None
        if reseller_id:
            try:
                rid = uuid.UUID(reseller_id)
            except ValueError:
                raise InvalidArgument("reseller_id must be a UUID", field="reseller_id", reason="INVALID_ID") from None
        after = pagination.decode_keyset(token)
        async with self.db.session() as s:
            rows = await TenancyRepository(s).list_customers(Scope.of(caller), size + 1, after, rid)
        return pagination.keyset_page(rows, size)

    async def update_customer(self, caller: Principal, customer_id: str, changes: dict[str, Any]) -> Customer:
        if caller.kind == principals.CUSTOMER and "active" in changes:
            raise PermissionDenied("a customer cannot change its own active flag", field="customer.active",
                                   reason="ADMIN_OR_RESELLER_ONLY")
        validate(changes)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_customer(repo, caller, customer_id, lock=True)
            for name, value in changes.items():
                setattr(row, name, value)
            await _audit(repo, caller, "UpdateCustomer", customer_id=row.id, reseller_id=row.reseller_id,
                         target=f"customers/{row.id}", detail=", ".join(sorted(changes)))
            await s.flush()
        if changes.get("active") is False:  # its keys stop working now, not when caches expire
            await self._revoked(customer_id=str(row.id))
        return row

    async def delete_customer(self, caller: Principal, customer_id: str, force: bool) -> None:
        if caller.kind not in (principals.ADMIN, principals.RESELLER):
            raise PermissionDenied("only an admin or the customer's reseller may delete it",
                                   reason="ADMIN_OR_RESELLER_ONLY")
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_customer(repo, caller, customer_id, lock=True)
            projects = await repo.count_projects(row.id)
            if projects and not force:
                raise FailedPrecondition(f"the customer has {projects} project(s); delete them or pass force=true",
                                         reason="CUSTOMER_HAS_PROJECTS", metadata={"projects": str(projects)})
            await repo.delete_customer(row.id)
            await _audit(repo, caller, "DeleteCustomer", customer_id=row.id, reseller_id=row.reseller_id,
                         target=f"customers/{row.id}", detail=f"force={force}")
        await self._revoked(customer_id=str(row.id))
        await self._announce(row.id)

    async def rotate_customer_key(self, caller: Principal, customer_id: str) -> str:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_customer(repo, caller, customer_id, lock=True)
            if customer_only(caller, row.id, "rotate its API key"):
                await break_glass(repo, caller, "RotateCustomerApiKey", customer=row)
            else:
                await _audit(repo, caller, "RotateCustomerApiKey", customer_id=row.id, reseller_id=row.reseller_id,
                             target=f"customers/{row.id}")
            await repo.revoke_keys(customer_id=row.id)
            api_key = await self._issue_key(repo, principals.CUSTOMER, customer_id=row.id)
        await self._revoked(customer_id=str(row.id))
        return api_key

    # projects

    async def create_project(self, caller: Principal, customer_id: str, fields: dict[str, Any], request_id: str,
                             request_hash: bytes) -> Project:
        validate(fields)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            customer = await self._visible_customer(repo, caller, customer_id)
            scope = f"CreateProject:{customer.id}"
            if (earlier := await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)) is not None:
                row = await repo.get_project(earlier, Scope(unrestricted=True))
                if row is not None:
                    return row
            await quota.serialize(s, "projects", customer.id)
            quota.check("projects", await repo.count_projects(customer.id), self.max_projects, MAX_PROJECTS_SETTING)
            project = Project(id=uuid.uuid4(), customer_id=customer.id, **fields)
            if fields.get("encryption_key_id"):
                await self._encryption_key_change(repo, caller, customer, project, fields["encryption_key_id"])
            await repo.add(project)
            await _audit(repo, caller, "CreateProject", customer_id=customer.id, reseller_id=customer.reseller_id,
                         target=f"projects/{project.id}")
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, project.id)
            return project

    async def _visible_project(self, repo: TenancyRepository, caller: Principal, project_id: str,
                               lock: bool = False) -> Project:
        pid = id_or_not_found(project_id, "project_id", "project")
        row = await repo.get_project(pid, Scope.of(caller), lock=lock)
        if row is None:
            raise NotFound(f"project {project_id} not found", reason="PROJECT_NOT_FOUND")
        return row

    async def get_project(self, caller: Principal, project_id: str) -> Project:
        async with self.db.session() as s:
            return await self._visible_project(TenancyRepository(s), caller, project_id)

    async def list_projects(self, caller: Principal, customer_id: str, size: int, token: str) -> pagination.Page:
        size = pagination.page_size(size)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            customer = await self._visible_customer(repo, caller, customer_id)
            rows = await repo.list_projects(customer.id, size + 1, pagination.decode_keyset(token))
        return pagination.keyset_page(rows, size)

    async def update_project(self, caller: Principal, project_id: str, changes: dict[str, Any]) -> Project:
        validate(changes)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_project(repo, caller, project_id, lock=True)
            # Naming the key a project already has (a client echoing the project back) changes nothing.
            if "encryption_key_id" in changes and changes["encryption_key_id"] != row.encryption_key_id:
                customer = await repo.get_customer(row.customer_id, Scope(unrestricted=True))
                assert customer is not None, "a project's customer exists (foreign key)"
                await self._encryption_key_change(repo, caller, customer, row, changes["encryption_key_id"])
            for name, value in changes.items():
                setattr(row, name, value)
            await _audit(repo, caller, "UpdateProject", customer_id=row.customer_id, target=f"projects/{row.id}",
                         detail=", ".join(sorted(changes)))
            await s.flush()
        await self._announce(row.customer_id)
        return row

    async def _announce(self, customer_id: uuid.UUID) -> None:
        """After a committed change to a customer's projects: every cached copy is refetched before
        the change is confirmed (a submit after this answer must see a key set by it)."""
        try:
            await self._projects_changed(customer_id)
        except Exception as exc:
            log.error("a project change of customer %s is stored but not announced: %s", customer_id, exc)
            raise Unavailable("the change is stored but not yet visible everywhere; repeat the call",
                              reason="CHANGE_NOT_ANNOUNCED") from None

    async def _encryption_key_change(self, repo: TenancyRepository, caller: Principal, customer: Customer,
                                     project: Project, key_id: str | None) -> None:
        """Setting, changing or clearing a project's encryption key: the customer's decision."""
        if customer_only(caller, customer.id, "set or clear a project's encryption key",
                         field="project.encryption_key_id"):
            await break_glass(repo, caller, "SetProjectEncryptionKey", customer=customer, project_id=project.id,
                              detail=f"encryption_key_id {project.encryption_key_id or '(none)'} -> "
                                     f"{key_id or '(none)'}")
        if key_id and self._check_key is not None:
            await self._check_key(key_id, customer.id)

    async def delete_project(self, caller: Principal, project_id: str) -> None:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await self._visible_project(repo, caller, project_id, lock=True)
            await repo.delete_project(row.id)
            await _audit(repo, caller, "DeleteProject", customer_id=row.customer_id, target=f"projects/{row.id}")
        await self._announce(row.customer_id)

