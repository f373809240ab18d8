"""Named API keys, many per account, each with a role and an optional expiry.

Rotation without downtime is create, move, delete; the account's legacy key (the one
`:rotateApiKey` replaces) is listed too, as an OWNER key without a name. A deleted key stops
working at once on every gateway (the revocation feed), an expired one at its expiry.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from innosystem.kit import pagination, roles
from innosystem.kit import principal as principals
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import InvalidArgument, NotFound
from innosystem.kit.validation import id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal, Role
from services.tenancy import audit, visibility
from services.tenancy.accounts import Account
from services.tenancy.models import ApiKey
from services.tenancy.repository import TenancyRepository
from services.tenancy.service import API_KEY_PREFIX, Revoked, TenancyService
from services.tenancy.users import check_grant, check_role


@dataclass(frozen=True)
class Issued:
    key: ApiKey
    secret: str


def key_account(key: ApiKey) -> Account:
    return Account(key.kind, reseller_id=key.reseller_id if key.customer_id is None else None,
                   customer_id=key.customer_id)


class ApiKeys:
    def __init__(self, db: Database, tenancy: TenancyService, on_access_revoked: Revoked) -> None:
        self.db = db
        self._tenancy = tenancy
        self._revoked = on_access_revoked

    async def create(self, caller: Principal, customer_id: str, reseller_id: str, display_name: str, role: int,
                     expire_time: datetime | None) -> Issued:
        display_name = display_name.strip()
        if not display_name or len(display_name) > 200:
            raise InvalidArgument("display_name must be 1 to 200 characters", field="display_name",
                                  reason="INVALID_NAME")
        check_role(role)
        if expire_time is not None and expire_time <= utcnow():
            raise InvalidArgument("expire_time must be in the future", field="expire_time",
                                  reason="INVALID_EXPIRE_TIME")
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            account, customers_reseller = await visibility.account(repo, caller, customer_id, reseller_id,
                                                                   manage=True)
            check_grant(caller, role)
            key = ApiKey(id=uuid.uuid4(), key_hash=self._tenancy.hash_key(secret), prefix=secret[:12],
                         kind=account.kind, role=role, display_name=display_name, expire_time=expire_time,
                         create_time=utcnow(), **account.row_ids())
            await repo.add(key)
            await audit.record(repo, caller, "CreateApiKey", account, target=f"apiKeys/{key.id}",
                               detail=f"{display_name!r} as {roles.name(role)}", reseller_id=customers_reseller)
        return Issued(key, secret)

    async def list(self, caller: Principal, customer_id: str, reseller_id: str, size: int,
                   token: str) -> pagination.Page:
        size = pagination.page_size(size)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            account, _ = await visibility.account(repo, caller, customer_id, reseller_id, manage=False)
            rows = await repo.list_keys(account, size + 1, pagination.decode_keyset(token))
        return pagination.keyset_page(rows, size)

    async def delete(self, caller: Principal, api_key_id: str) -> None:
        kid = id_or_not_found(api_key_id, "api_key_id", "api_key")
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            key = await repo.get_key(kid)
            account = key_account(key) if key is not None else None
            if key is None or account is None or (Account.of(caller) != account and caller.kind != principals.ADMIN):
                raise NotFound(f"API key {api_key_id} not found", reason="API_KEY_NOT_FOUND")
            visibility.may_manage(caller, account)
            check_grant(caller, key.role or Role.ROLE_OWNER)
            await repo.revoke_key(kid)
            await audit.record(repo, caller, "DeleteApiKey", account, target=f"apiKeys/{kid}",
                               detail=f"{key.display_name or key.label or key.prefix!r}")
        await self._revoked(key_id=str(kid))
