"""Per-customer caps on what a tenant may create or hold open, with one shape of refusal.

A cap bounds what one customer can make every other tenant pay for: rows scanned per request,
background work per key, webhook deliveries, open streams. The operator sets each one in the
environment (deploy/README.md lists them). A refusal is RESOURCE_EXHAUSTED (HTTP 429) with reason
QUOTA_EXCEEDED and metadata naming the resource, the limit and the setting that raises it; it
changes nothing.

A create counts and inserts in one transaction holding `serialize`'s lock for (resource,
customer), so two concurrent creates at the last free place cannot both pass the count.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.kit.errors import ResourceExhausted

REASON = "QUOTA_EXCEEDED"


def exceeded(resource: str, limit: int, setting: str, *, field: str | None = None,
             advice: str = "delete one first") -> ResourceExhausted:
    """The refusal of one more `resource` (plural noun, e.g. "projects") past `limit`."""
    return ResourceExhausted(
        f"a customer may have at most {limit} {resource} (limit {setting}={limit}); "
        f"{advice} or ask the operator to raise it",
        reason=REASON, field=field, metadata={"resource": resource, "limit": str(limit), "setting": setting})


def check(resource: str, count: int, limit: int, setting: str) -> None:
    """Refuses when `count` existing ones leave no room for one more."""
    if count >= limit:
        raise exceeded(resource, limit, setting)


async def serialize(session: AsyncSession, resource: str, customer_id: uuid.UUID | str) -> None:
    """Holds, until the transaction ends, a lock that every create of `resource` for this customer
    takes before counting (a transaction-scoped advisory lock: no row to lock, nothing to clean up).
    Other customers' creates do not wait (apart from a rare hash collision of two keys)."""
    key = f"quota:{resource}:{customer_id}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
