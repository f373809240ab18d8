"""Commission arithmetic never creates or destroys a minor unit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing.ledger import commission_of
from services.billing.service import ON_DEMAND, BillingService
from tests.billing.billing_helpers import ADMIN, funded_wallet


@given(actual=st.integers(min_value=0, max_value=10**12), rate=st.integers(min_value=0, max_value=10_000))
def test_commission_split_is_exact(actual: int, rate: int) -> None:
    commission = commission_of(actual, rate)
    platform = actual - commission
    assert 0 <= commission <= actual and platform >= 0
    assert commission + platform == actual
    # floor: the reseller never gets a fraction of a unit more than its rate, nor a whole unit less.
    assert commission * 10_000 <= actual * rate < (commission + 1) * 10_000


@settings(max_examples=15, deadline=None)
@given(captures=st.lists(st.tuples(st.integers(1, 10_000), st.integers(0, 10_000)), min_size=1, max_size=6),
       rate=st.integers(min_value=0, max_value=10_000))
async def test_commissions_in_the_ledger_sum_to_the_captures(billing: BillingService,
                                                             captures: list[tuple[int, int]], rate: int) -> None:
    customer, reseller = await funded_wallet(billing, 10**6, reseller_rate=rate)
    expected = 0
    for i, (held, extra) in enumerate(captures):
        actual = min(held, extra)
        hold_id = f"cm-{customer}-{i}"
        await billing.reserve(hold_id, customer, held, "USD")
        hold = await billing.capture(hold_id, actual)
        assert hold.commission == commission_of(actual, rate)
        expected += hold.commission
    statement = await billing.commission_statement(ADMIN, reseller, None, None, "USD")
    assert statement.commission == statement.balance == expected
    assert statement.captured == sum(min(h, e) for h, e in captures)
    wallet = await billing.get_wallet(ADMIN, customer)
    assert wallet.balance == 10**6 - statement.captured
    report = await billing.reconcile(ON_DEMAND)
    assert report.consistent, report.findings
