"""What a job costs: the terms it is submitted under and the charge at its end. Pure functions.

A catalog type's job takes the terms of the price version in force at submit in the job's
currency; a customer's own type's job takes the platform fee (flat). The terms are stored in the
job's `settings["price"]`, so the hold (`estimate`) and the capture (`charge`) need no lookup and
a later price version never changes a job already submitted.

Terms: {"id": price version id ("" for the platform fee), "model": PriceModel number,
"unit": cents per job / second / unit, "cap": the most one job costs (0 for FLAT)}.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from innosystem.jobs.v1 import job_types_pb2 as enums
from innosystem.kit.errors import InvalidArgument

FLAT, PER_SECOND, PER_UNIT = enums.PRICE_MODEL_FLAT, enums.PRICE_MODEL_PER_SECOND, enums.PRICE_MODEL_PER_UNIT
MODELS = frozenset({FLAT, PER_SECOND, PER_UNIT})
MAX_PRICE_CENTS = 10_000_000  # 100,000.00 per job, second or unit: anything above is a typo, not a price
MIN_MARKUP_BPS, MAX_MARKUP_BPS = -10_000, 100_000  # a reseller's: free at most, eleven times the price at most


@dataclass(frozen=True)
class PriceVersion:
    """A price row as the submit cache keeps it (no ORM object)."""

    id: str
    currency_code: str
    model: int
    unit_price_cents: int
    cap_cents: int
    effective_time: datetime


@dataclass(frozen=True)
class Catalog:
    """The catalog as a submit sees it: its types by id, and each (type, currency)'s price
    versions in ascending effective time."""

    types: Mapping[uuid.UUID, Any]  # models.JobType
    prices: Mapping[tuple[uuid.UUID, str], Sequence[PriceVersion]]

    def price(self, job_type_id: uuid.UUID, currency: str, at: datetime) -> PriceVersion | None:
        return in_force(self.prices.get((job_type_id, currency), ()), at)

    @classmethod
    def of(cls, types: Sequence[Any], prices: Sequence[Any]) -> Catalog:
        """From the rows of `JobsRepository.catalog` (prices oldest first)."""
        by: dict[tuple[uuid.UUID, str], list[PriceVersion]] = {}
        for p in prices:
            by.setdefault((p.job_type_id, p.currency_code), []).append(PriceVersion(
                str(p.id), p.currency_code, p.model, p.unit_price_cents, p.cap_cents, p.effective_time))
        return cls({t.id: t for t in types}, by)


def terms(price: PriceVersion) -> dict[str, Any]:
    return {"id": price.id, "model": price.model, "unit": price.unit_price_cents, "cap": price.cap_cents}


def marked_up(t: dict[str, Any], bps: int) -> dict[str, Any]:
    """Catalog terms with a reseller's markup (or discount) in basis points on unit and cap, each
    rounded down to the cent: the charge stays within the (marked up) estimate."""
    if not bps:
        return t
    return {**t, "unit": t["unit"] * (10_000 + bps) // 10_000, "cap": t["cap"] * (10_000 + bps) // 10_000,
            "markup_bps": bps}


def fee_terms(fee_cents: int) -> dict[str, Any]:
    """A customer's own type: the operator's platform fee per job."""
    return {"id": "", "model": FLAT, "unit": fee_cents, "cap": 0}


def in_force(versions: Sequence[PriceVersion], at: datetime) -> PriceVersion | None:
    """The version with the latest effective time not after `at`; `versions` (of one currency) are
    in ascending effective time."""
    i = bisect.bisect_right(versions, at, key=lambda v: v.effective_time)
    return versions[i - 1] if i else None


def estimate(t: Mapping[str, Any]) -> int:
    """What the hold covers: the flat price, or the cap of a measured one."""
    return int(t["unit"] if t["model"] == FLAT else t["cap"])


def charge(t: Mapping[str, Any], run_ms: int, units: int | None) -> int:
    """What a job that ended after `run_ms` of run time (measured by the platform) with `units`
    reported by its processor costs; never above `estimate(t)`."""
    model, unit = t["model"], int(t["unit"])
    if model == FLAT:
        return unit
    if model == PER_SECOND:
        amount = -(-max(0, run_ms) // 1000) * unit  # every started second
    else:
        amount = max(0, units or 0) * unit
    return min(amount, int(t["cap"]))


def validate_price(fields: Mapping[str, Any], now: datetime, latest: datetime) -> dict[str, Any]:
    """Column values of a new price version; raises naming the first bad field (`price.…`).
    `latest`: how far ahead an effective time may be."""
    model = fields.get("model") or FLAT
    if model not in MODELS:
        raise _bad("price.model", f"unknown price model {model}", "INVALID_PRICE_MODEL")
    unit, cap = fields.get("unit_price_cents", 0), fields.get("cap_cents", 0)
    for name, value in (("unit_price_cents", unit), ("cap_cents", cap)):
        if not 0 <= value <= MAX_PRICE_CENTS:
            raise _bad(f"price.{name}", f"must be 0 to {MAX_PRICE_CENTS} cents, got {value}", "INVALID_PRICE")
    if model == FLAT and cap:
        raise _bad("price.cap_cents", "a flat price has no cap (0)", "INVALID_PRICE")
    if model != FLAT and cap < unit:
        raise _bad("price.cap_cents", f"must be at least unit_price_cents ({unit}), got {cap}", "CAP_BELOW_UNIT_PRICE")
    effective = fields.get("effective_time") or now
    if effective < now or effective > latest:
        raise _bad("price.effective_time", "must be now or later, and at most 10 years ahead", "INVALID_EFFECTIVE_TIME")
    return {"model": model, "unit_price_cents": unit, "cap_cents": cap, "effective_time": effective}


def _bad(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)
