"""Who owns a project, asked of tenancy over gRPC (the jobs service never reads tenancy's schema)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import grpc
from redis.exceptions import RedisError

from innosystem.kit.errors import from_rpc_error
from innosystem.kit.freshness import ChangeTokens, projects_of
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc


@dataclass(frozen=True)
class ProjectOwner:
    project_id: uuid.UUID
    customer_id: uuid.UUID
    reseller_id: uuid.UUID | None
    # The client key (keys service) new jobs of the project are encrypted under; "" = none.
    encryption_key_id: str = ""
    # An inactive project takes no new jobs (submits ask afresh, so a deactivation counts at once).
    active: bool = True
    # The currency its jobs are held and charged in; "" = the platform's default.
    billing_currency: str = ""


class Projects:
    """`await projects(project_id)` → its owner, or None if tenancy knows no such project.

    Calls `GetProject` and `GetCustomer` as the jobs service (the channel signs the service
    principal), and remembers answers for `ttl` seconds: a project's customer and a customer's
    reseller never change, so the cache only delays noticing a deleted project or a changed
    encryption key, and submits ask for a fresh answer (see `__call__`): with change tokens
    (`kit.freshness`, which tenancy sets after every change to a customer's projects) that is one
    shared Redis read while nothing changed, else a call to tenancy. Tenancy being down is not
    "not found": its error (UNAVAILABLE, …) reaches the caller.
    """

    def __init__(self, tenancy: grpc.aio.Channel, ttl: float = 30.0, max_entries: int = 10_000,
                 call_timeout: float = 5.0, tokens: ChangeTokens | None = None) -> None:
        self._stub = tenancy_pb2_grpc.TenancyServiceStub(tenancy)
        self._ttl, self._max, self._timeout = ttl, max_entries, call_timeout
        self._tokens = tokens
        # project → (expiry, owner, the customer's change token read before the owner was fetched)
        self._cache: OrderedDict[uuid.UUID, tuple[float, ProjectOwner, str | None]] = OrderedDict()
        self._running: dict[uuid.UUID, asyncio.Task[ProjectOwner | None]] = {}  # a call to tenancy under way
        self._next: dict[uuid.UUID, asyncio.Task[ProjectOwner | None]] = {}  # the call after it, still joinable

    async def __call__(self, project_id: uuid.UUID, fresh: bool = False) -> ProjectOwner | None:
        """`fresh`: the answer of a call to tenancy that starts after this one began. A submit asks
        so, because the project's encryption key decides whether its payload may be stored as it
        is: a stale "no key" would store plaintext the customer asked to have encrypted.

        Concurrent askers share calls: whoever arrives while a call is under way joins the next
        one, which starts when that call ends, so under load one call answers every submit that
        arrived during the one before it."""
        hit = self._cache.get(project_id)
        if hit is not None and hit[0] > time.monotonic():
            if not fresh or (hit[2] is not None and await self._token(hit[1].customer_id) == hit[2]):
                return hit[1]  # fresh: tenancy has announced no change to the customer's projects since
        task = self._next.get(project_id)
        if task is None:
            task = asyncio.create_task(self._after_running(project_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if every asker left
            self._next[project_id] = task
        return await asyncio.shield(task)

    async def _after_running(self, project_id: uuid.UUID) -> ProjectOwner | None:
        running = self._running.get(project_id)
        if running is not None:
            await asyncio.wait([running])
        me = self._next.pop(project_id)
        self._running[project_id] = me
        try:
            hit = self._cache.get(project_id)
            return await self._fetch(project_id, hit[1] if hit else None)
        finally:
            if self._running.get(project_id) is me:
                del self._running[project_id]

    async def reseller_of(self, customer_id: uuid.UUID) -> tuple[bool, uuid.UUID | None]:
        """(whether tenancy knows the customer, its reseller), asked afresh (rare: markup changes)."""
        try:
            customer = await self._stub.GetCustomer(tenancy_pb2.GetCustomerRequest(customer_id=str(customer_id)),
                                                    timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False, None
            raise from_rpc_error(exc) from None
        return True, uuid.UUID(customer.reseller_id) if customer.reseller_id else None

    async def _token(self, customer_id: uuid.UUID) -> str | None:
        """The change token of the customer's projects; None without one (ask tenancy)."""
        if self._tokens is None:
            return None
        try:
            return await self._tokens.read(projects_of(customer_id))
        except RedisError:
            return None

    async def _fetch(self, project_id: uuid.UUID, known: ProjectOwner | None) -> ProjectOwner | None:
        now = time.monotonic()
        # Read before the project: a change after this read leaves the copy labelled as older.
        # A project seen for the first time is labelled on its second fetch (its customer is known then).
        token = await self._token(known.customer_id) if known is not None else None
        try:
            project = await self._stub.GetProject(tenancy_pb2.GetProjectRequest(project_id=str(project_id)),
                                                  timeout=self._timeout)
            if known is not None and str(known.customer_id) == project.customer_id:
                reseller = known.reseller_id  # a customer's reseller never changes
            else:
                customer = await self._stub.GetCustomer(
                    tenancy_pb2.GetCustomerRequest(customer_id=project.customer_id), timeout=self._timeout)
                reseller = uuid.UUID(customer.reseller_id) if customer.reseller_id else None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._cache.pop(project_id, None)
                return None
            raise from_rpc_error(exc) from None
        owner = ProjectOwner(project_id, uuid.UUID(project.customer_id), reseller, project.encryption_key_id,
                             project.active if project.HasField("active") else True,  # unset: the default, true
                             project.billing_currency_code)
        self._cache[project_id] = (now + self._ttl, owner, token if known is not None
                                   and known.customer_id == owner.customer_id else None)
        self._cache.move_to_end(project_id)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return owner
