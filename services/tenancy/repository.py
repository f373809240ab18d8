"""Tenancy's SQL: every read of tenant data goes through a Scope."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.db import utcnow
from innosystem.kit.pagination import Keyset, after_keyset
from innosystem.kit.scope import Scope
from services.tenancy.models import ApiKey, AuditEvent, Customer, Project, Reseller, WalletOpening


def _visible_customers(stmt: Select[Any], scope: Scope) -> Select[Any]:
    return scope.filter(stmt, reseller_column=Customer.reseller_id, customer_column=Customer.id)

class TenancyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    # resellers
    async def add(self, row: Reseller | Customer | Project | ApiKey | WalletOpening | AuditEvent) -> None:
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
        stmt = update(ApiKey).where(ApiKey.revoke_time.is_(None))
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

