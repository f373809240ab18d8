"""The audit log of administrative actions: who (user or key), what, on which account, when,
from which address and with which request id. Rows are written in the action's own
transaction (no action without its record) and never changed (a trigger refuses it)."""

from __future__ import annotations

import uuid

from innosystem.kit import logs, pagination
from innosystem.kit import principal as principals
from innosystem.kit.db import Database
from innosystem.kit.scope import Scope
from innosystem.kit.validation import parse_uuid
from innosystem.tenancy.v1 import tenancy_pb2
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy import visibility
from services.tenancy.accounts import Account
from services.tenancy.models import AuditEvent
from services.tenancy.repository import TenancyRepository


async def record(repo: TenancyRepository, caller: Principal, action: str, account: Account, *,
                 target: str = "", detail: str = "", reseller_id: uuid.UUID | None = None,
                 project_id: uuid.UUID | None = None) -> None:
    """`reseller_id`: a customer's reseller, so that its reseller's log shows the event too."""
    await repo.add(AuditEvent(
        action=action, actor_kind=caller.kind, actor_key_id=caller.key_id, actor_user_id=caller.user_id,
        reseller_id=account.reseller_id or reseller_id, customer_id=account.customer_id, project_id=project_id,
        target=target[:200], detail=detail, client_address=logs.client_address.get(),
        request_id=logs.request_id.get()[:128]))


async def list_events(db: Database, caller: Principal, customer_id: str, reseller_id: str, size: int, token: str,
                      action: str, actor_user_id: str) -> pagination.Page:
    """Newest first. The account's OWNERs and ADMINs read it (`roles`); a reseller its customers'
    events too, the platform every event."""
    size = pagination.page_size(size)
    async with db.session() as s:
        repo = TenancyRepository(s)
        account, _ = await visibility.account(repo, caller, customer_id, reseller_id, manage=False)
        rows = await repo.list_audit_events(account, size + 1, pagination.decode_keyset(token), action[:64],
                                            actor_user_id[:64])
    return pagination.keyset_page(rows, size)


async def record_reported(db: Database, event: tenancy_pb2.RecordAuditEventRequest) -> None:
    """Another service's action (`kit.audit`): on the customer's log (and its reseller's), or the
    platform's when it names no customer. Its address and request id are the reporter's."""
    customer_id = parse_uuid(event.customer_id, "customer_id") if event.customer_id else None
    async with db.session() as s:
        repo = TenancyRepository(s)
        customer = await repo.get_customer(customer_id, Scope(unrestricted=True)) if customer_id else None
        account = Account(principals.CUSTOMER, customer_id=customer_id) if customer_id else Account.platform()
        await repo.add(AuditEvent(
            action=event.action[:64], actor_kind=event.actor.kind, actor_key_id=event.actor.key_id,
            actor_user_id=event.actor.user_id, customer_id=account.customer_id,
            reseller_id=customer.reseller_id if customer is not None else None, target=event.target[:200],
            detail=event.detail, client_address=event.client_address[:64], request_id=event.request_id[:128]))
