"""A caller's tenant scope, the form repositories take (they never see a protobuf).

Every repository query that reads tenant data is filtered by a Scope: an admin (or an
internal service) sees everything, a reseller its customers, a customer itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select

from innosystem.kit import principal as principals
from innosystem.tenancy.v1.tenancy_pb2 import Principal


@dataclass(frozen=True)
class Scope:
    unrestricted: bool = False
    reseller_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None

    def filter(self, stmt: Select[Any], *, reseller_column: Any, customer_column: Any) -> Select[Any]:
        """`stmt` restricted to this scope, given the columns holding a row's reseller and customer."""
        if self.unrestricted:
            return stmt
        if self.reseller_id is not None:
            return stmt.where(reseller_column == self.reseller_id)
        return stmt.where(customer_column == self.customer_id)

    @classmethod
    def of(cls, principal: Principal) -> Scope:
        if principal.kind in (principals.ADMIN, principals.SERVICE):
            return cls(unrestricted=True)
        if principal.kind == principals.RESELLER:
            return cls(reseller_id=uuid.UUID(principal.reseller_id))
        if principal.kind in (principals.CUSTOMER, principals.RUNNER) and principal.customer_id:
            return cls(customer_id=uuid.UUID(principal.customer_id))
        # A shared runner or an unknown kind: sees no tenant data.
        return cls(customer_id=uuid.UUID(int=0))
