"""Registry use cases (create, read, list, update, delete, token): each one transaction,
authorization included. The stream's use cases are in sessions.py."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from innosystem.kit import idempotency, pagination
from innosystem.kit import principal as principals
from innosystem.kit.db import Database
from innosystem.kit.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from innosystem.kit.scope import Scope
from innosystem.kit.validation import id_or_not_found, parse_uuid
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.runners.customers import Customers
from services.runners.live import Live, LiveState
from services.runners.models import IdempotencyKey, Runner
from services.runners.repository import AVAILABLE, CUSTOMER, MAINTENANCE, SHARED, RunnerRepository

log = logging.getLogger(__name__)

TOKEN_PREFIX = "isr_"
MAX_PROCESSORS, MAX_NAME = 200, 200


@dataclass(frozen=True)
class Created:
    row: Runner
    token: str  # empty on an idempotent repeat


@dataclass(frozen=True)
class Found:
    row: Runner
    live: Live | None


def _validate(fields: dict[str, Any]) -> None:
    if "name" in fields:
        name = fields["name"].strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidArgument(f"runner.name must be 1 to {MAX_NAME} characters", field="runner.name",
                                  reason="INVALID_NAME")
        fields["name"] = name
    if "description" in fields and len(fields["description"]) > 4000:
        raise InvalidArgument("runner.description must be at most 4000 characters", field="runner.description",
                              reason="INVALID_DESCRIPTION")
    if "allowed_processors" in fields:
        names = list(dict.fromkeys(p.strip() for p in fields["allowed_processors"]))
        if len(names) > MAX_PROCESSORS or any(not p or len(p) > MAX_NAME for p in names):
            raise InvalidArgument(f"runner.allowed_processors: at most {MAX_PROCESSORS} job type names, each 1 to "
                                  f"{MAX_NAME} characters", field="runner.allowed_processors",
                                  reason="INVALID_PROCESSORS")
        fields["allowed_processors"] = names


class Registry:
    def __init__(self, db: Database, live: LiveState, pepper: bytes,
                 release_all: Callable[[str], Awaitable[None]], *, max_per_customer: int = 100,
                 customers: Customers | None = None) -> None:
        self.db, self.live, self._pepper = db, live, pepper
        self._customers = customers  # whether a customer-owned runner's customer may still use it
        self._release_all = release_all  # gives a deleted runner's leases back to the queue
        self.max_per_customer = max_per_customer  # INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER

    def hash_token(self, token: str) -> bytes:
        return hmac.new(self._pepper, token.encode(), hashlib.sha256).digest()

    def _new_token(self) -> tuple[str, bytes]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return token, self.hash_token(token)

    async def authenticate(self, token: str) -> Principal:
        """A runner token → the runner's principal; UNAUTHENTICATED for an unknown or rotated one,
        or (CUSTOMER_INACTIVE) one whose customer or its reseller is inactive or deleted."""
        if not token.startswith(TOKEN_PREFIX) or not 16 <= len(token) <= 256:
            raise Unauthenticated("runner token is malformed (expected 'isr_…')", reason="RUNNER_TOKEN_INVALID")
        async with self.db.session() as s:
            row = await RunnerRepository(s).find_by_token(self.hash_token(token))
        if row is None:
            raise Unauthenticated("runner token is unknown, rotated or its runner deleted",
                                  reason="RUNNER_TOKEN_INVALID")
        if row.customer_id is not None and self._customers is not None:
            await self._customers.check(str(row.customer_id))
        return Principal(kind=principals.RUNNER, runner_id=str(row.id), customer_id=str(row.customer_id or ""),
                         key_id=row.token_prefix)

    async def create(self, caller: Principal, fields: dict[str, Any], request_id: str,
                     request_hash: bytes) -> Created:
        if caller.kind == principals.ADMIN:
            scope = fields.pop("scope", 0) or SHARED
            customer_id: uuid.UUID | None = None
            if scope == CUSTOMER:
                if not fields.get("customer_id"):
                    raise InvalidArgument("runner.customer_id is required for a customer-owned runner",
                                          field="runner.customer_id", reason="CUSTOMER_REQUIRED")
                customer_id = parse_uuid(fields["customer_id"], "runner.customer_id")
        elif caller.kind == principals.CUSTOMER:
            scope = fields.pop("scope", 0) or CUSTOMER
            if scope != CUSTOMER:
                raise PermissionDenied("a customer registers customer-owned runners only (scope CUSTOMER)",
                                       reason="SHARED_RUNNER_ADMIN_ONLY")
            if fields.get("customer_id") not in (None, "", caller.customer_id):
                raise PermissionDenied("a customer registers runners for itself only", reason="OTHER_CUSTOMER")
            customer_id = uuid.UUID(caller.customer_id)
        else:
            raise PermissionDenied("an admin or a customer registers runners", reason="RUNNER_CREATE_DENIED")
        if scope == SHARED and fields.get("customer_id"):
            raise InvalidArgument("a shared runner has no customer_id", field="runner.customer_id",
                                  reason="SHARED_RUNNER_HAS_NO_CUSTOMER")
        fields.pop("customer_id", None)
        status = fields.pop("status", 0)
        if status not in (0, AVAILABLE, MAINTENANCE):
            raise InvalidArgument("runner.status may only be AVAILABLE or MAINTENANCE", field="runner.status",
                                  reason="INVALID_STATUS")
        fields = {k: v for k, v in fields.items() if k in ("name", "description", "allowed_processors")}
        if not fields.get("name"):
            raise InvalidArgument("runner.name is required", field="runner.name", reason="INVALID_NAME")
        _validate(fields)
        idem_scope = f"CreateRunner:{principals.account(caller)}"
        async with self.db.session() as s:
            repo = RunnerRepository(s)
            if (earlier := await idempotency.replay(s, IdempotencyKey, idem_scope, request_id,
                                                    request_hash)) is not None:
                row = await repo.get(earlier, Scope(unrestricted=True))
                if row is not None:
                    return Created(row, "")
            if customer_id is not None:  # after the replay: a repeat of an accepted create still answers
                await self._within_cap(repo, customer_id)
            token, digest = self._new_token()
            row = Runner(scope=scope, customer_id=customer_id, maintenance=status == MAINTENANCE, token_hash=digest,
                         token_prefix=token[:12], **fields)
            await repo.add(row)
            await idempotency.remember(s, IdempotencyKey, idem_scope, request_id, request_hash, row.id)
        return Created(row, token)

    async def _within_cap(self, repo: RunnerRepository, customer_id: uuid.UUID) -> None:
        """One customer's runners are bounded (each holds a stream, a lease loop and Redis state)."""
        count = await repo.count_for_customer(customer_id)
        if count >= self.max_per_customer:
            raise ResourceExhausted(
                f"customer {customer_id} has {count} runners, the most allowed (runners per customer: "
                f"{self.max_per_customer}); delete one before registering another",
                reason="QUOTA_EXCEEDED", metadata={"limit": "runners_per_customer", "max": str(self.max_per_customer),
                                                   "current": str(count)})

    async def _visible(self, repo: RunnerRepository, caller: Principal, runner_id: str,
                       lock: bool = False) -> Runner:
        rid = id_or_not_found(runner_id, "runner_id", "runner")
        if caller.kind == principals.RUNNER and caller.runner_id != str(rid):
            raise NotFound(f"runner {runner_id} not found", reason="RUNNER_NOT_FOUND")
        row = await repo.get(rid, Scope.of(caller) if caller.kind != principals.RUNNER else Scope(unrestricted=True),
                             lock=lock)
        if row is None:
            raise NotFound(f"runner {runner_id} not found", reason="RUNNER_NOT_FOUND")
        return row

    async def get(self, caller: Principal, runner_id: str) -> Found:
        async with self.db.session() as s:
            row = await self._visible(RunnerRepository(s), caller, runner_id)
        return Found(row, (await self.live.get_many([str(row.id)])).get(str(row.id)))

    async def list(self, caller: Principal, size: int, token: str, *, status: int, scope: int,
                   customer_id: str) -> tuple[pagination.Page, dict[str, Live]]:
        if caller.kind not in (principals.ADMIN, principals.CUSTOMER, principals.SERVICE):
            raise PermissionDenied("an admin or a customer lists runners", reason="RUNNER_LIST_DENIED")
        if customer_id and caller.kind == principals.CUSTOMER and customer_id != caller.customer_id:
            raise NotFound(f"customer {customer_id} not found", reason="CUSTOMER_NOT_FOUND")
        size = pagination.page_size(size)
        cid = parse_uuid(customer_id, "customer_id") if customer_id else None
        async with self.db.session() as s:
            rows = await RunnerRepository(s).list_runners(Scope.of(caller), size + 1, pagination.decode_keyset(token),
                                                  status=status, runner_scope=scope, customer_id=cid)
        page = pagination.keyset_page(rows, size)
        return page, await self.live.get_many([str(r.id) for r in page.items])

    async def online_shared(self) -> tuple[Sequence[Runner], dict[str, Live]]:
        async with self.db.session() as s:
            rows = await RunnerRepository(s).online_shared()
        return rows, await self.live.get_many([str(r.id) for r in rows])

    async def update(self, caller: Principal, runner_id: str, changes: dict[str, Any]) -> Found:
        if caller.kind not in (principals.ADMIN, principals.CUSTOMER):
            raise PermissionDenied("an admin or the owning customer updates a runner", reason="RUNNER_UPDATE_DENIED")
        unknown = set(changes) - {"name", "description", "allowed_processors", "status"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgument(f"runner.{name} cannot be changed", field=f"runner.{name}",
                                  reason="FIELD_NOT_UPDATABLE")
        if "status" in changes and changes["status"] not in (AVAILABLE, MAINTENANCE):
            raise InvalidArgument("runner.status may only be set to AVAILABLE or MAINTENANCE", field="runner.status",
                                  reason="INVALID_STATUS")
        _validate(changes)
        async with self.db.session() as s:
            row = await self._visible(RunnerRepository(s), caller, runner_id, lock=True)
            if "status" in changes:
                row.maintenance = changes.pop("status") == MAINTENANCE
            for name, value in changes.items():
                setattr(row, name, value)
            await s.flush()
        await self.live.publish("settings", str(row.id), maintenance=row.maintenance,
                                allowed_processors=list(row.allowed_processors or ()))
        return Found(row, (await self.live.get_many([str(row.id)])).get(str(row.id)))

    async def delete(self, caller: Principal, runner_id: str) -> None:
        async with self.db.session() as s:
            repo = RunnerRepository(s)
            row = await self._visible(repo, caller, runner_id, lock=True)
            if caller.kind not in (principals.ADMIN, principals.CUSTOMER):
                raise PermissionDenied("an admin or the owning customer deletes a runner",
                                       reason="RUNNER_DELETE_DENIED")
            await repo.delete(row)
        await self.live.publish("close", str(row.id), reason="the runner was deleted")
        await self._release_all(str(row.id))

    async def rotate_token(self, caller: Principal, runner_id: str) -> str:
        if caller.kind not in (principals.ADMIN, principals.CUSTOMER):
            raise PermissionDenied("an admin or the owning customer rotates a runner token",
                                   reason="RUNNER_ROTATE_DENIED")
        async with self.db.session() as s:
            row = await self._visible(RunnerRepository(s), caller, runner_id, lock=True)
            token, digest = self._new_token()
            row.token_hash, row.token_prefix = digest, token[:12]
        await self.live.publish("close", str(row.id), reason="the runner token was rotated")
        return token
