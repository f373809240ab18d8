"""The account that users, API keys and audit events belong to: the platform, a reseller or a customer.

A request names it by its path (`/v1/customers/{id}/…`, `/v1/resellers/{id}/…`, or neither for
the platform); the columns of a row name it by (kind, reseller_id, customer_id), where a
customer's row also carries no reseller id (the reseller is found through the customer).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from innosystem.kit import principal as principals
from innosystem.tenancy.v1.tenancy_pb2 import Principal


@dataclass(frozen=True)
class Account:
    kind: int  # PrincipalKind ADMIN (the platform), RESELLER or CUSTOMER
    reseller_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None

    @classmethod
    def platform(cls) -> Account:
        return cls(principals.ADMIN)

    @classmethod
    def of(cls, caller: Principal) -> Account | None:
        """The caller's own account; None for runners and services."""
        if caller.kind == principals.CUSTOMER and caller.customer_id:
            return cls(principals.CUSTOMER, customer_id=uuid.UUID(caller.customer_id))
        if caller.kind == principals.RESELLER and caller.reseller_id:
            return cls(principals.RESELLER, reseller_id=uuid.UUID(caller.reseller_id))
        if caller.kind == principals.ADMIN:
            return cls.platform()
        return None

    def owns(self, kind: Any, reseller_column: Any, customer_column: Any) -> list[Any]:
        """WHERE clauses for rows (users, keys) that belong to this account itself."""
        if self.customer_id is not None:
            return [customer_column == self.customer_id]
        if self.reseller_id is not None:
            return [reseller_column == self.reseller_id, customer_column.is_(None)]
        return [kind == principals.ADMIN]

    def concerns(self, reseller_column: Any, customer_column: Any) -> list[Any]:
        """WHERE clauses for audit events about this account (for the platform: every event)."""
        if self.customer_id is not None:
            return [customer_column == self.customer_id]
        if self.reseller_id is not None:
            return [reseller_column == self.reseller_id]
        return []

    @property
    def id(self) -> uuid.UUID:
        """The account's own id (the nil UUID for the platform)."""
        return self.customer_id or self.reseller_id or uuid.UUID(int=0)

    def row_ids(self) -> dict[str, uuid.UUID | None]:
        """The id columns a new user or key of this account gets."""
        return {"reseller_id": self.reseller_id if self.customer_id is None else None,
                "customer_id": self.customer_id}
