"""Who may see and who may manage an account's people and keys.

Seeing follows the tenant scope (an admin all, a reseller its customers, a customer itself);
anything else is NOT_FOUND. Managing (inviting, changing roles, issuing keys) is the account's
own business: its OWNERs and ADMINs (the role table lets no one else call those methods), or a
platform admin as an audited break-glass action. A reseller manages its customers' business but
never their people or keys: those act as the customer.
"""

from __future__ import annotations

import uuid

from innosystem.kit import principal as principals
from innosystem.kit import roles
from innosystem.kit.errors import NotFound, PermissionDenied
from innosystem.kit.scope import Scope
from innosystem.kit.validation import id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy.accounts import Account
from services.tenancy.models import User
from services.tenancy.repository import TenancyRepository


async def account(repo: TenancyRepository, caller: Principal, customer_id: str, reseller_id: str, *,
                  manage: bool) -> tuple[Account, uuid.UUID | None]:
    """The account a request's path names, with a customer's reseller (for the audit log)."""
    if customer_id:
        cid = id_or_not_found(customer_id, "customer_id", "customer")
        # Under a reseller's path (`/v1/resellers/{reseller_id}/users?customerId=…`), the
        # customer must be that reseller's: the path is not ignored.
        rid = id_or_not_found(reseller_id, "reseller_id", "reseller") if reseller_id else None
        customer = await repo.get_customer(cid, Scope.of(caller))
        if customer is None or (rid is not None and customer.reseller_id != rid):
            raise NotFound(f"customer {customer_id} not found", reason="CUSTOMER_NOT_FOUND")
        found = Account(principals.CUSTOMER, customer_id=cid)
        if manage:
            may_manage(caller, found)
        return found, customer.reseller_id
    if reseller_id:
        rid = id_or_not_found(reseller_id, "reseller_id", "reseller")
        if await repo.get_reseller(rid, Scope.of(caller)) is None:
            raise NotFound(f"reseller {reseller_id} not found", reason="RESELLER_NOT_FOUND")
        found = Account(principals.RESELLER, reseller_id=rid)
        if manage:
            may_manage(caller, found)
        return found, None
    principals.require_admin(caller)
    return Account.platform(), None


def may_manage(caller: Principal, target: Account) -> None:
    """PERMISSION_DENIED unless the caller belongs to `target` (its role already checked by
    `roles`) or is a platform admin."""
    if Account.of(caller) == target or caller.kind == principals.ADMIN:
        roles.require(caller, roles.Permission.ACCOUNT, "manage this account's people and keys")
        return
    raise PermissionDenied("only the account itself (an OWNER or ADMIN) may manage its people and keys",
                           reason="ACCOUNT_ONLY")


def account_of(user: User) -> Account:
    if user.customer_id is not None:
        return Account(principals.CUSTOMER, customer_id=user.customer_id)
    if user.reseller_id is not None:
        return Account(principals.RESELLER, reseller_id=user.reseller_id)
    return Account.platform()


async def user(repo: TenancyRepository, caller: Principal, user_id: str, *, lock: bool = False) -> User:
    """A user the caller can see: itself, one of its account, or one of an account in its scope."""
    uid = id_or_not_found(user_id, "user_id", "user")
    row = await repo.get_user(uid, lock=lock)
    if row is not None and await _sees(repo, caller, row):
        return row
    raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND")


async def _sees(repo: TenancyRepository, caller: Principal, row: User) -> bool:
    if str(row.id) == caller.user_id or Account.of(caller) == account_of(row) or caller.kind == principals.ADMIN:
        return True
    if caller.kind == principals.RESELLER and row.customer_id is not None:
        return await repo.get_customer(row.customer_id, Scope.of(caller)) is not None
    return False
