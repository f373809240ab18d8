"""Webhooks: a project's endpoints told when its jobs finish or its customer's wallet runs low
(use cases; sending is deliveries.py).

An endpoint belongs to one project; its owner (customer, reseller) is copied from tenancy at
create so every read is scoped in SQL, and another tenant's webhook is NOT_FOUND. The URL is
checked by the egress guard at create (and again at every call: DNS can change). The signing
secret is shown once and kept sealed under the platform master key (innosystem/kit/sealing.py):
it must be usable to sign, so a hash would not do.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from innosystem.jobs.v1 import webhooks_pb2 as pb
from innosystem.keymanager.signing import fingerprint
from innosystem.kit import egress, idempotency, pagination, quota
from innosystem.kit import principal as principals
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import InvalidArgument, NotFound, PermissionDenied
from innosystem.kit.scope import Scope
from innosystem.kit.sealing import Sealer
from innosystem.kit.validation import id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from innosystem.webhooks import new_secret
from services.jobs.config import JobsConfig
from services.jobs.models import IdempotencyKey, Webhook, WebhookDelivery
from services.jobs.repository import WebhooksRepository
from services.jobs.tenants import ProjectOwner

# What an endpoint may subscribe to: its project's jobs, and its customer's wallets.
EVENTS = ("job.succeeded", "job.failed", "job.dead_lettered", "job.cancelled", "wallet.low_balance")
MAX_URL_LEN, MAX_DESCRIPTION = 2048, 200
RESOLVE_SECONDS = 2.0
MAX_WEBHOOKS_SETTING = "INNOSYSTEM_JOBS_MAX_WEBHOOKS_PER_PROJECT"
SEAL_PURPOSE = "jobs.webhook"
VisibleProject = Callable[[Principal, str], Awaitable[ProjectOwner]]


def _bad(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)


async def check_url(url: str, policy: egress.Policy) -> str:
    """The URL if the egress guard would call it; INVALID_ARGUMENT naming `webhook.url` otherwise.
    The name is resolved here too, so an internal address is refused at once."""
    field = "webhook.url"
    if len(url) > MAX_URL_LEN:
        raise _bad(field, f"at most {MAX_URL_LEN} characters", "INVALID_WEBHOOK_URL")
    try:
        target = egress.check_url(url, policy, ("https", "http"))
        if not target.allow_listed:
            await asyncio.wait_for(egress.resolve(target.host, target.port, policy), RESOLVE_SECONDS)
    except ValueError as exc:
        raise _bad(field, str(exc), "INVALID_WEBHOOK_URL") from None
    except egress.EgressError as exc:
        if exc.reason == egress.BLOCKED:
            raise _bad(field, f"{exc.message} (egress guard)", egress.BLOCKED) from None
        # A name that does not resolve now is the customer's to fix: deliveries report it.
    except TimeoutError:
        pass
    return url.strip()


def check_events(events: list[str]) -> list[str]:
    unknown = sorted(set(events) - set(EVENTS))
    if not events or unknown:
        raise _bad("webhook.events", f"one or more of {', '.join(EVENTS)}"
                   + (f"; unknown: {', '.join(unknown)[:200]}" if unknown else ""), "INVALID_WEBHOOK_EVENTS")
    return sorted(set(events))


def _require_manager(caller: Principal) -> None:
    if caller.kind not in (principals.ADMIN, principals.RESELLER, principals.CUSTOMER):
        raise PermissionDenied("only a customer, its reseller or an admin manages webhooks",
                               reason="WEBHOOK_MANAGER_ONLY")


class Webhooks:
    def __init__(self, db: Database, config: JobsConfig, visible_project: VisibleProject) -> None:
        self.db, self.config = db, config
        self._visible_project = visible_project
        self.sealer = Sealer(config.webhook_secret_key, SEAL_PURPOSE)

    async def create(self, caller: Principal, project_id: str, hook: pb.Webhook, request_id: str,
                     request_hash: bytes) -> tuple[Webhook, str]:
        _require_manager(caller)
        if not hook.url:
            raise _bad("webhook.url", "required field is missing", "REQUIRED_FIELD_MISSING")
        events = check_events(list(hook.events))
        if len(hook.description) > MAX_DESCRIPTION:
            raise _bad("webhook.description", f"at most {MAX_DESCRIPTION} characters", "INVALID_DESCRIPTION")
        url = await check_url(hook.url, self.config.egress_policy)
        owner = await self._visible_project(caller, project_id)
        scope = f"CreateWebhook:{owner.project_id}"
        async with self.db.session() as s:
            repo = WebhooksRepository(s)
            earlier = await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)
            if earlier is not None:
                row = await repo.get(earlier, Scope(unrestricted=True))
                if row is not None:
                    return row, ""
            await quota.serialize(s, "webhooks", owner.project_id)
            quota.check("webhooks per project", await repo.count(owner.project_id),
                        self.config.max_webhooks_per_project, MAX_WEBHOOKS_SETTING)
            secret, webhook_id = new_secret(), uuid.uuid4()
            row = Webhook(id=webhook_id, project_id=owner.project_id, customer_id=owner.customer_id,
                          reseller_id=owner.reseller_id, url=url, events=events, description=hook.description,
                          sealed_secret=self.sealer.seal(str(webhook_id), secret),
                          secret_fingerprint=fingerprint(secret.encode()), create_time=utcnow())
            await repo.add(row)
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, webhook_id)
        return row, secret

    async def get(self, caller: Principal, webhook_id: str) -> Webhook:
        wid = id_or_not_found(webhook_id, "webhook_id", "webhook")
        async with self.db.session() as s:
            row = await WebhooksRepository(s).get(wid, Scope.of(caller))
        if row is None:
            raise NotFound(f"webhook {webhook_id} not found", reason="WEBHOOK_NOT_FOUND")
        return row

    async def list(self, caller: Principal, project_id: str, size: int, token: str) -> pagination.Page:
        owner = await self._visible_project(caller, project_id)
        n, after = pagination.page_size(size), pagination.decode_keyset(token)
        async with self.db.session() as s:
            rows = await WebhooksRepository(s).list(owner.project_id, n + 1, after)
        return pagination.keyset_page(rows, n)

    async def delete(self, caller: Principal, webhook_id: str) -> None:
        _require_manager(caller)
        row = await self.get(caller, webhook_id)
        async with self.db.session() as s:
            await WebhooksRepository(s).delete(row.id)

    async def deliveries(self, caller: Principal, webhook_id: str, size: int, token: str) -> pagination.Page:
        row = await self.get(caller, webhook_id)
        n, after = pagination.page_size(size), pagination.decode_keyset(token)
        async with self.db.session() as s:
            items = await WebhooksRepository(s).deliveries(row.id, n + 1, after)
        return pagination.keyset_page(items, n)  # the token reads as "older than" here

    async def redeliver(self, caller: Principal, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        """Due now, with a fresh retry window; the same id, so the receiver can tell it is a repeat."""
        _require_manager(caller)
        row = await self.get(caller, webhook_id)
        did = id_or_not_found(delivery_id, "delivery_id", "delivery")
        now = utcnow()
        async with self.db.session() as s:
            delivery = await WebhooksRepository(s).redeliver(
                row.id, did, now, now + timedelta(hours=self.config.webhook_retry_hours))
        if delivery is None:
            raise NotFound(f"delivery {delivery_id} not found", reason="WEBHOOK_DELIVERY_NOT_FOUND")
        return delivery
