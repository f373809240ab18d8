"""Tenancy's SQL: every read of tenant data goes through a Scope."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.db import utcnow
from innosystem.kit.pagination import Keyset, after_keyset
from innosystem.kit.scope import Scope
from services.tenancy.accounts import Account
from services.tenancy.models import (
    AccountPolicy,
    ApiKey,
    AuditEvent,
    Customer,
    Project,
    Reseller,
    SignInSession,
    User,
    UserToken,
    WalletOpening,
)


def _visible_customers(stmt: Select[Any], scope: Scope) -> Select[Any]:
    return scope.filter(stmt, reseller_column=Customer.reseller_id, customer_column=Customer.id)

class TenancyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    # resellers
    async def add(self, row: Reseller | Customer | Project | ApiKey | WalletOpening | AuditEvent | User | UserToken
                  | SignInSession | AccountPolicy) -> None:
        self.s.add(row)
        await self.s.flush()

    async def get_reseller(self, reseller_id: uuid.UUID, scope: Scope, *, lock: bool = False) -> Reseller | None:
        if not scope.unrestricted and scope.reseller_id != reseller_id:
            return None
        stmt = select(Reseller).where(Reseller.id == reseller_id)
        return (await self.s.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()

    async def list_resellers(self, limit: int, after: Keyset | None) -> Sequence[Reseller]:
        return (await self.s.execute(after_keyset(select(Reseller), Reseller, after).limit(limit))).scalars().all()

    async def reseller_has_customers(self, reseller_id: uuid.UUID) -> bool:
        return bool(await self.s.scalar(select(exists().where(Customer.reseller_id == reseller_id))))

    async def delete_reseller(self, reseller_id: uuid.UUID) -> None:
        await self.s.execute(delete(Reseller).where(Reseller.id == reseller_id))

    # customers
    async def get_customer(self, customer_id: uuid.UUID, scope: Scope, *, lock: bool = False) -> Customer | None:
        stmt = _visible_customers(select(Customer).where(Customer.id == customer_id), scope)
        return (await self.s.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()

    async def list_customers(self, scope: Scope, limit: int, after: Keyset | None,
                             reseller_id: uuid.UUID | None) -> Sequence[Customer]:
        stmt = _visible_customers(select(Customer), scope)
        if reseller_id is not None:
            stmt = stmt.where(Customer.reseller_id == reseller_id)
        return (await self.s.execute(after_keyset(stmt, Customer, after).limit(limit))).scalars().all()

    async def count_projects(self, customer_id: uuid.UUID) -> int:
        return int(await self.s.scalar(select(func.count()).where(Project.customer_id == customer_id)) or 0)

    async def delete_customer(self, customer_id: uuid.UUID) -> None:
        await self.s.execute(delete(Project).where(Project.customer_id == customer_id))
        await self.s.execute(delete(Customer).where(Customer.id == customer_id))

    # projects
    async def get_project(self, project_id: uuid.UUID, scope: Scope, *, lock: bool = False) -> Project | None:
        stmt = select(Project).join(Customer, Customer.id == Project.customer_id).where(Project.id == project_id)
        stmt = _visible_customers(stmt, scope)
        return (await self.s.execute(stmt.with_for_update(of=Project) if lock else stmt)).scalar_one_or_none()

    async def list_projects(self, customer_id: uuid.UUID, limit: int, after: Keyset | None) -> Sequence[Project]:
        stmt = after_keyset(select(Project).where(Project.customer_id == customer_id), Project, after)
        return (await self.s.execute(stmt.limit(limit))).scalars().all()

    async def delete_project(self, project_id: uuid.UUID) -> None:
        await self.s.execute(delete(Project).where(Project.id == project_id))

    # api keys
    async def find_key(self, key_hash: bytes) -> tuple[ApiKey, Reseller | None, Customer | None] | None:
        stmt = (
            select(ApiKey, Reseller, Customer)
            .outerjoin(Customer, Customer.id == ApiKey.customer_id)
            .outerjoin(Reseller, Reseller.id == func.coalesce(ApiKey.reseller_id, Customer.reseller_id))
            .where(ApiKey.key_hash == key_hash, ApiKey.revoke_time.is_(None))
        )
        row = (await self.s.execute(stmt)).one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    async def revoke_keys(self, *, reseller_id: uuid.UUID | None = None, customer_id: uuid.UUID | None = None,
                          label: str | None = None, keep: bytes | None = None) -> None:
        # Only legacy keys (no role): `:rotateApiKey` replaces those; named keys end one by one (DeleteApiKey).
        stmt = update(ApiKey).where(ApiKey.revoke_time.is_(None), ApiKey.role.is_(None))
        if reseller_id is not None:
            stmt = stmt.where(ApiKey.reseller_id == reseller_id, ApiKey.customer_id.is_(None))
        if customer_id is not None:
            stmt = stmt.where(ApiKey.customer_id == customer_id)
        if label is not None:
            stmt = stmt.where(ApiKey.label == label)
        if keep is not None:
            stmt = stmt.where(ApiKey.key_hash != keep)
        await self.s.execute(stmt.values(revoke_time=utcnow()))

    async def key_exists(self, key_hash: bytes) -> bool:
        stmt = select(exists().where(ApiKey.key_hash == key_hash, ApiKey.revoke_time.is_(None)))
        return bool(await self.s.scalar(stmt))


    async def touch_key(self, key_id: uuid.UUID, now: datetime) -> None:
        await self.s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_use_time=now))

    async def list_keys(self, account: Account, limit: int, after: Keyset | None) -> Sequence[ApiKey]:
        stmt = select(ApiKey).where(ApiKey.revoke_time.is_(None), *account.owns(ApiKey.kind, ApiKey.reseller_id,
                                                                                ApiKey.customer_id))
        return (await self.s.execute(after_keyset(stmt, ApiKey, after).limit(limit))).scalars().all()

    async def get_key(self, key_id: uuid.UUID) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoke_time.is_(None))
        return (await self.s.execute(stmt)).scalar_one_or_none()

    async def revoke_key(self, key_id: uuid.UUID) -> bool:
        stmt = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoke_time.is_(None)).values(revoke_time=utcnow())
        return bool((await self.s.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    # users
    async def get_user(self, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
        stmt = select(User).where(User.id == user_id)
        return (await self.s.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()

    async def find_user(self, email: str) -> User | None:
        stmt = select(User).where(func.lower(User.email) == email.lower())
        return (await self.s.execute(stmt)).scalar_one_or_none()

    async def email_taken(self, email: str) -> bool:
        return bool(await self.s.scalar(select(exists().where(func.lower(User.email) == email.lower()))))

    async def list_users(self, account: Account, limit: int, after: Keyset | None) -> Sequence[User]:
        stmt = select(User).where(*account.owns(User.account_kind, User.reseller_id, User.customer_id))
        return (await self.s.execute(after_keyset(stmt, User, after).limit(limit))).scalars().all()

    async def lock_active_owners(self, account: Account, owner_role: int) -> list[uuid.UUID]:
        """The account's active owners, locked: two concurrent demotions cannot both pass the
        'at least one owner stays' check."""
        stmt = (select(User.id).where(User.active.is_(True), User.role == owner_role,
                                      *account.owns(User.account_kind, User.reseller_id, User.customer_id))
                .with_for_update())
        return list((await self.s.execute(stmt)).scalars().all())

    async def account_of(self, user: User) -> tuple[Reseller | None, Customer | None]:
        customer = await self.s.get(Customer, user.customer_id) if user.customer_id else None
        reseller_id = user.reseller_id or (customer.reseller_id if customer else None)
        reseller = await self.s.get(Reseller, reseller_id) if reseller_id else None
        return reseller, customer

    # one-time tokens
    async def use_token(self, token_hash: bytes, purpose: str, now: datetime) -> uuid.UUID | None:
        """The token's user, marking it used; None if unknown, used, expired or for another purpose."""
        stmt = (update(UserToken)
                .where(UserToken.token_hash == token_hash, UserToken.purpose == purpose,
                       UserToken.use_time.is_(None), UserToken.expire_time > now)
                .values(use_time=now).returning(UserToken.user_id))
        return (await self.s.execute(stmt)).scalar_one_or_none()

    # sessions
    async def touch_session(self, token_hash: bytes, now: datetime, idle: timedelta) -> SignInSession | None:
        """The live session of a token, its last use moved to `now`; None if unknown, revoked,
        past its absolute expiry or idle for longer than `idle`."""
        stmt = (update(SignInSession)
                .where(SignInSession.token_hash == token_hash, SignInSession.revoke_time.is_(None),
                       SignInSession.expire_time > now, SignInSession.last_use_time > now - idle)
                .values(last_use_time=now).returning(SignInSession))
        return (await self.s.execute(stmt)).scalar_one_or_none()

    async def list_sessions(self, user_id: uuid.UUID, now: datetime, idle: timedelta) -> Sequence[SignInSession]:
        stmt = (select(SignInSession)
                .where(SignInSession.user_id == user_id, SignInSession.revoke_time.is_(None),
                       SignInSession.expire_time > now, SignInSession.last_use_time > now - idle)
                .order_by(SignInSession.create_time, SignInSession.id))
        return (await self.s.execute(stmt)).scalars().all()

    async def get_session(self, session_id: uuid.UUID) -> SignInSession | None:
        stmt = select(SignInSession).where(SignInSession.id == session_id, SignInSession.revoke_time.is_(None))
        return (await self.s.execute(stmt)).scalar_one_or_none()

    async def revoke_sessions(self, user_id: uuid.UUID, session_id: uuid.UUID | None = None) -> None:
        stmt = update(SignInSession).where(SignInSession.user_id == user_id, SignInSession.revoke_time.is_(None))
        if session_id is not None:
            stmt = stmt.where(SignInSession.id == session_id)
        await self.s.execute(stmt.values(revoke_time=utcnow()))

    # audit events: newest first
    async def list_audit_events(self, account: Account, limit: int, before: Keyset | None, action: str,
                                actor_user_id: str) -> Sequence[AuditEvent]:
        stmt = select(AuditEvent).where(*account.concerns(AuditEvent.reseller_id, AuditEvent.customer_id))
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        if actor_user_id:
            stmt = stmt.where(AuditEvent.actor_user_id == actor_user_id)
        if before is not None:
            stmt = stmt.where(or_(AuditEvent.create_time < before[0],
                                  and_(AuditEvent.create_time == before[0], AuditEvent.id < before[1])))
        stmt = stmt.order_by(AuditEvent.create_time.desc(), AuditEvent.id.desc()).limit(limit)
        return (await self.s.execute(stmt)).scalars().all()

    # account policies
    async def requires_totp(self, account: Account) -> bool:
        stmt = select(AccountPolicy.require_totp).where(AccountPolicy.account_kind == account.kind,
                                                        AccountPolicy.account_id == account.id)
        return bool(await self.s.scalar(stmt))

    async def set_totp_requirement(self, account: Account, required: bool) -> None:
        stmt = insert(AccountPolicy).values(account_kind=account.kind, account_id=account.id, require_totp=required,
                                            update_time=utcnow())
        await self.s.execute(stmt.on_conflict_do_update(
            index_elements=[AccountPolicy.account_kind, AccountPolicy.account_id],
            set_={"require_totp": required, "update_time": utcnow()}))
