"""A reseller's markup or discount on catalog prices, per customer: read and set (use cases).

The reseller sets it (an admin may too); the customer, its reseller and admins read it. Submits
apply it to the catalog price's unit and cap (`pricing.marked_up`) from a per-replica cache that
is checked with the customer's change token (`kit.freshness.markup_of`), set after every change.
The reseller's commission is billing's, on the amount charged, and does not change.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from redis.exceptions import RedisError

from innosystem.kit import principal as principals
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from innosystem.kit.freshness import ChangeTokens, markup_of
from innosystem.kit.validation import id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs import pricing
from services.jobs.models import PriceMarkup
from services.jobs.repository import JobsRepository

log = logging.getLogger(__name__)

# customer → (tenancy knows it, its reseller)
ResellerLookup = Callable[[uuid.UUID], Awaitable[tuple[bool, uuid.UUID | None]]]


class Markups:
    def __init__(self, db: Database, reseller_of: ResellerLookup, tokens: ChangeTokens | None,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.db, self._reseller_of, self._tokens, self._now = db, reseller_of, tokens, now

    async def _customer(self, caller: Principal, customer_id: str) -> tuple[uuid.UUID, uuid.UUID | None]:
        """The customer and its reseller, if the caller sees it; else NOT_FOUND."""
        cid = id_or_not_found(customer_id, "customer_id", "customer")
        known, reseller = await self._reseller_of(cid)
        if not known:
            raise NotFound(f"customer {customer_id} not found", reason="CUSTOMER_NOT_FOUND")
        principals.ensure_customer_visible(caller, str(cid), str(reseller or ""))
        return cid, reseller

    async def get(self, caller: Principal, customer_id: str) -> PriceMarkup:
        cid, reseller = await self._customer(caller, customer_id)
        async with self.db.session() as s:
            row = await JobsRepository(s).markup(cid)
        return row or PriceMarkup(customer_id=cid, reseller_id=reseller, markup_bps=0, update_time=None)

    async def update(self, caller: Principal, customer_id: str, markup_bps: int) -> PriceMarkup:
        if not pricing.MIN_MARKUP_BPS <= markup_bps <= pricing.MAX_MARKUP_BPS:
            raise InvalidArgument(f"price_markup.markup_bps must be {pricing.MIN_MARKUP_BPS} to "
                                  f"{pricing.MAX_MARKUP_BPS} basis points, got {markup_bps}",
                                  field="price_markup.markup_bps", reason="INVALID_MARKUP")
        cid, reseller = await self._customer(caller, customer_id)
        if caller.kind not in (principals.ADMIN, principals.RESELLER):
            raise PermissionDenied("only the customer's reseller (or an admin) sets its price markup",
                                   reason="MARKUP_RESELLER_ONLY")
        async with self.db.session() as s:
            row = await JobsRepository(s).set_markup(cid, reseller, markup_bps, self._now())
        if self._tokens is not None:
            try:
                await self._tokens.changed(markup_of(cid))
            except RedisError as exc:
                log.error("the price markup of customer %s is stored but not announced: %s", cid, exc)
                raise Unavailable("the change is stored but not yet visible everywhere; repeat the call",
                                  reason="CHANGE_NOT_ANNOUNCED") from None
        return row
