"""The price models' arithmetic (services/jobs/pricing.py): pure, so unit and property tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from innosystem.kit.errors import InvalidArgument
from services.jobs import pricing
from services.jobs.pricing import FLAT, PER_SECOND, PER_UNIT, PriceVersion

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def test_flat_is_its_price_whatever_was_measured() -> None:
    t = {"id": "p", "model": FLAT, "unit": 7, "cap": 0}
    assert pricing.estimate(t) == 7 and pricing.charge(t, 10**9, 10**9) == 7 and pricing.charge(t, 0, None) == 7


def test_per_second_charges_every_started_second_up_to_the_cap() -> None:
    t = {"id": "p", "model": PER_SECOND, "unit": 3, "cap": 20}
    assert pricing.estimate(t) == 20
    assert [pricing.charge(t, ms, None) for ms in (0, 1, 1000, 1001, 2500, 6000, 7001)] == [0, 3, 3, 6, 9, 18, 20]


def test_per_unit_charges_the_reported_units_up_to_the_cap() -> None:
    t = {"id": "p", "model": PER_UNIT, "unit": 2, "cap": 9}
    assert pricing.estimate(t) == 9
    assert [pricing.charge(t, 5000, u) for u in (None, 0, -3, 1, 4, 5, 10**12)] == [0, 0, 0, 2, 8, 9, 9]


@given(model=st.sampled_from(sorted(pricing.MODELS)), unit=st.integers(0, pricing.MAX_PRICE_CENTS),
       extra=st.integers(0, pricing.MAX_PRICE_CENTS), run_ms=st.integers(-10**6, 10**12),
       units=st.none() | st.integers(-10**6, 10**15))
def test_a_charge_is_never_negative_nor_above_the_hold(model: int, unit: int, extra: int, run_ms: int,
                                                       units: int | None) -> None:
    t = {"id": "p", "model": model, "unit": unit, "cap": 0 if model == FLAT else unit + extra}
    assert 0 <= pricing.charge(t, run_ms, units) <= pricing.estimate(t)


def test_the_version_in_force_is_the_latest_effective_not_after_the_time() -> None:
    versions = [PriceVersion(str(i), "USD", FLAT, i, 0, NOW + timedelta(hours=i)) for i in (0, 1, 5)]
    assert pricing.in_force(versions, NOW - timedelta(seconds=1)) is None
    assert [pricing.in_force(versions, NOW + timedelta(hours=h)).id for h in (0, 0.5, 1, 4, 5, 99)] == [  # type: ignore[union-attr]
        "0", "0", "1", "1", "5", "5"]


@pytest.mark.parametrize(("fields", "field", "reason"), [
    ({"model": 9}, "price.model", "INVALID_PRICE_MODEL"),
    ({"unit_price_cents": -1}, "price.unit_price_cents", "INVALID_PRICE"),
    ({"unit_price_cents": pricing.MAX_PRICE_CENTS + 1}, "price.unit_price_cents", "INVALID_PRICE"),
    ({"model": PER_SECOND, "unit_price_cents": 5, "cap_cents": 2**62}, "price.cap_cents", "INVALID_PRICE"),
    ({"model": PER_UNIT, "unit_price_cents": 5, "cap_cents": 4}, "price.cap_cents", "CAP_BELOW_UNIT_PRICE"),
    ({"unit_price_cents": 5, "cap_cents": 9}, "price.cap_cents", "INVALID_PRICE"),  # a flat price has no cap
    ({"effective_time": NOW - timedelta(seconds=1)}, "price.effective_time", "INVALID_EFFECTIVE_TIME"),
    ({"effective_time": NOW + timedelta(days=4000)}, "price.effective_time", "INVALID_EFFECTIVE_TIME"),
])
def test_bad_prices_name_the_field_and_a_reason(fields: dict, field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        pricing.validate_price(fields, NOW, NOW + timedelta(days=3653))
    assert caught.value.reason == reason and caught.value.violations[0][0] == field


def test_a_good_price_defaults_to_flat_and_now() -> None:
    assert pricing.validate_price({"unit_price_cents": 4}, NOW, NOW + timedelta(days=1)) == {
        "model": FLAT, "unit_price_cents": 4, "cap_cents": 0, "effective_time": NOW}
