"""Hypothesis stateful test: the ledger against a simple in-memory model, invariants after every step.

Covers the Open-to-Buy operations and the money paths people take: refunds, adjustments, credit
grants (spent first, soonest expiry first; their rest removed at expiry), monthly spending
limits, a second wallet in another currency (never converted) and statements; and jobs priced by
the catalog's models (flat, per second, per unit: `services.jobs.pricing`), held at their
estimate and captured at their measured charge."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.config import to_async_url
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import DomainError
from innosystem.kit.redis import connect
from services.billing.corrections import Corrections
from services.billing.grants import CreditGrants
from services.billing.ledger import commission_of
from services.billing.limits import SpendingLimits
from services.billing.models import EXPIRE
from services.billing.otb import OpenToBuy
from services.billing.service import BillingService
from services.billing.statements import statement
from services.billing.wallets import Wallets
from services.jobs import pricing
from tests.billing.billing_helpers import ADMIN, RATES, flush_billing, rates

RATE = 1234
amounts = st.integers(min_value=1, max_value=5000)


class Env:
    """One event loop, database pool and Redis client for every example of the machine."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.db = Database(to_async_url(database_url), pool_size=3)
        self.redis = connect(redis_url)
        self.billing = BillingService(self.db, OpenToBuy(self.redis), rates)
        self.corrections = Corrections(self.billing)
        self.grants = CreditGrants(self.billing)
        self.limits = SpendingLimits(self.billing)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.billing.close())
        self.run(self.redis.aclose())
        self.run(self.db.close())
        self.loop.close()


class LedgerMachine(RuleBasedStateMachine):
    env: Env

    def __init__(self) -> None:
        super().__init__()
        self.customer = str(uuid.uuid4())
        reseller = uuid.uuid4()
        RATES[reseller] = RATE
        self.env.run(self.env.billing.open_wallet(self.customer, str(reseller), "USD", 0))
        self.balance = 0
        self.commission = 0
        self.holds: dict[str, int] = {}      # active: id → amount
        self.done: dict[str, tuple[str, int]] = {}  # resolved: id → (how, amount)
        self.topups: dict[str, int] = {}
        self.captured: dict[str, int] = {}   # job → captured
        self.refunded: dict[str, int] = {}   # job → refunded so far
        self.corrections: dict[str, tuple[str, int]] = {}  # request id → (job or "", signed amount)
        self.promos: dict[str, list[Any]] = {}  # active grants: request id → [expire time, remaining]
        self.base = utcnow() + timedelta(days=1)
        self.limit: int | None = None  # the customer's monthly spending limit
        self.env.run(Wallets(self.env.billing).create(ADMIN, self.customer, "EUR"))
        self.eur = 0  # the EUR wallet's balance
        self.n = 0

    def _spend(self, amount: int) -> None:
        """A posted debit spends promotional credit first, the soonest-expiring grant first."""
        for key in sorted(self.promos, key=lambda k: self.promos[k][0]):
            take = min(self.promos[key][1], amount)
            self.promos[key][1] -= take
            amount -= take

    def _id(self) -> str:
        self.n += 1
        return f"{self.customer}-{self.n}"

    def _call(self, coro: Any) -> tuple[Any, str]:
        try:
            return self.env.run(coro), ""
        except DomainError as err:
            return None, err.reason

    @rule(amount=amounts)
    def top_up(self, amount: int) -> None:
        rid = self._id()
        _, err = self._call(self.env.billing.top_up(ADMIN, self.customer, amount, "", rid, ""))
        assert err == ""
        self.balance += amount
        self.topups[rid] = amount

    @precondition(lambda self: self.topups)
    @rule(data=st.data())
    def repeat_top_up(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.topups)))
        same = data.draw(st.booleans())
        amount = self.topups[rid] if same else self.topups[rid] + 1
        _, err = self._call(self.env.billing.top_up(ADMIN, self.customer, amount, "", rid, ""))
        assert err == ("" if same else "IDEMPOTENCY_KEY_REUSED")

    @rule(amount=amounts)
    def reserve(self, amount: int) -> None:
        hid = self._id()
        _, err = self._call(self.env.billing.reserve(hid, self.customer, amount, "USD", job_id=hid))
        held = sum(self.holds.values())
        affordable = self.balance - held >= amount
        # Open-to-Buy (funds) answers before the ledger (limits).
        within = self.limit is None or sum(self.captured.values()) + held + amount <= self.limit
        assert err == ("INSUFFICIENT_FUNDS" if not affordable else "" if within else "SPENDING_LIMIT_REACHED")
        if affordable and within:
            self.holds[hid] = amount

    @precondition(lambda self: self.holds or self.done)
    @rule(data=st.data())
    def repeat_reserve(self, data: st.DataObject) -> None:
        known = {**{k: v for k, (_, v) in self.done.items()}, **self.holds}
        hid = data.draw(st.sampled_from(sorted(known)))
        same = data.draw(st.booleans())
        _, err = self._call(self.env.billing.reserve(hid, self.customer, known[hid] + (0 if same else 1), "USD"))
        assert err == ("" if same else "IDEMPOTENCY_KEY_REUSED")

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.holds)))
        actual = data.draw(st.integers(min_value=0, max_value=self.holds[hid] + 10))
        hold, err = self._call(self.env.billing.capture(hid, actual))
        if actual > self.holds[hid]:
            assert err == "CAPTURE_EXCEEDS_HOLD"
            return
        assert err == "" and hold.captured == actual
        assert hold.commission == commission_of(actual, RATE)
        self.balance -= actual
        self._spend(actual)
        self.commission += hold.commission
        self.captured[hid] = actual
        self.done[hid] = ("captured", self.holds.pop(hid))

    @rule(model=st.sampled_from(sorted(pricing.MODELS)), unit=st.integers(min_value=0, max_value=500),
          extra=st.integers(min_value=0, max_value=3000), run_ms=st.integers(min_value=-1000, max_value=10**7),
          units=st.none() | st.integers(min_value=-5, max_value=10**6))
    def priced_job(self, model: int, unit: int, extra: int, run_ms: int, units: int | None) -> None:
        """A job held at its price's estimate (a measured model's cap) and captured at the charge
        for its measured run time or reported units: never above the hold, captured once."""
        terms = {"id": "v", "model": model, "unit": unit, "cap": 0 if model == pricing.FLAT else unit + extra}
        held, charge = pricing.estimate(terms), pricing.charge(terms, run_ms, units)
        assert 0 <= charge <= held
        if held == 0:
            return  # nothing to hold: the jobs service makes no hold
        hid = self._id()
        _, err = self._call(self.env.billing.reserve(hid, self.customer, held, "USD", job_id=hid))
        busy = sum(self.holds.values())
        within = self.limit is None or sum(self.captured.values()) + busy + held <= self.limit
        if self.balance - busy < held or not within:
            assert err in ("INSUFFICIENT_FUNDS", "SPENDING_LIMIT_REACHED")
            return
        assert err == ""
        hold, err = self._call(self.env.billing.capture(hid, charge))
        assert err == "" and hold.captured == charge
        self.balance -= charge
        self._spend(charge)
        self.commission += hold.commission
        self.captured[hid] = charge
        self.done[hid] = ("captured", held)
        _, again = self._call(self.env.billing.capture(hid, charge + 1))  # a second capture: never charged
        assert again != ""

    @precondition(lambda self: self.captured)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.captured)))
        left = self.captured[job] - self.refunded.get(job, 0)
        amount = data.draw(st.integers(min_value=1, max_value=left + 10))
        rid = self._id()
        moved, err = self._call(self.env.corrections.refund(ADMIN, self.customer, job, amount, "model", rid))
        if amount > left:
            assert err == "REFUND_EXCEEDS_CAPTURE"
            return
        assert err == "" and moved.wallet.balance == self.balance + amount
        self.balance += amount
        self.refunded[job] = self.refunded.get(job, 0) + amount
        self.corrections[rid] = (job, amount)

    @rule(amount=st.integers(min_value=-5000, max_value=5000).filter(bool))
    def adjust(self, amount: int) -> None:
        rid = self._id()
        _, err = self._call(self.env.corrections.adjust(ADMIN, self.customer, amount, "model", rid, "", ""))
        affordable = self.balance - sum(self.holds.values()) + amount >= 0 or amount > 0
        assert err == ("" if affordable else "INSUFFICIENT_FUNDS")
        if affordable:
            self.balance += amount
            self._spend(max(-amount, 0))
            self.corrections[rid] = ("", amount)

    @rule(amount=amounts, hours=st.integers(min_value=1, max_value=100))
    def grant_credit(self, amount: int, hours: int) -> None:
        rid = self._id()
        expire = self.base + timedelta(hours=hours, microseconds=self.n)  # no two grants expire at once
        done, err = self._call(self.env.grants.grant(ADMIN, self.customer, amount, expire, "model", rid, ""))
        assert err == "" and done.wallet.balance == self.balance + amount
        self.balance += amount
        self.promos[rid] = [expire, amount]

    @precondition(lambda self: self.promos)
    @rule(data=st.data())
    def expire_credit(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.promos)))
        expire, remaining = self.promos.pop(rid)
        page = self.env.run(self.env.grants.list(ADMIN, self.customer, 500, "", ""))
        grant = next(g for g in page.items if g.request_id == rid)
        assert self.env.run(self.env.grants._expire(grant.id, grant.wallet_id, "USD", expire + timedelta(seconds=1)))
        take = min(remaining, max(self.balance - sum(self.holds.values()), 0))
        self.balance -= take

    @rule(amount=amounts, cost=amounts)
    def euro_job(self, amount: int, cost: int) -> None:
        """Top up the EUR wallet and charge a EUR job: the USD wallet never pays for it."""
        self.env.run(self.env.billing.top_up(ADMIN, self.customer, amount, "EUR", self._id(), ""))
        self.eur += amount
        hid = self._id()
        _, err = self._call(self.env.billing.reserve(hid, self.customer, cost, "EUR", job_id=hid))
        assert err == ("" if cost <= self.eur else "INSUFFICIENT_FUNDS")
        if not err:
            self.env.run(self.env.billing.capture(hid, cost))
            self.eur -= cost

    @rule(limit=st.none() | st.integers(min_value=0, max_value=20_000))
    def set_limit(self, limit: int | None) -> None:
        view = self.env.run(self.env.limits.set(ADMIN, self.customer, "", limit or 0, limit is None, ""))
        assert view.removed == (limit is None)
        if limit is not None:
            assert view.spent == sum(self.captured.values()) + sum(self.holds.values())
        self.limit = limit

    @precondition(lambda self: self.corrections)
    @rule(data=st.data())
    def repeat_correction(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.corrections)))
        job, amount = self.corrections[rid]
        same = data.draw(st.booleans())
        if job:
            call = self.env.corrections.refund(ADMIN, self.customer, job, amount if same else amount + 1, "model", rid)
        else:
            call = self.env.corrections.adjust(ADMIN, self.customer, amount if same else -amount, "model", rid, "", "")
        _, err = self._call(call)
        assert err == ("" if same else "IDEMPOTENCY_KEY_REUSED")

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.holds)))
        _, err = self._call(self.env.billing.release(hid))
        assert err == ""
        self.done[hid] = ("voided", self.holds.pop(hid))

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.holds)))
        later = utcnow() + timedelta(days=2)
        hold = self.env.run(self.env.billing._void(hid, EXPIRE, "expired", later))
        assert hold is not None and hold.status == 4
        self.done[hid] = ("expired", self.holds.pop(hid))

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def resolve_again(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.done)))
        how, _ = self.done[hid]
        _, err = self._call(self.env.billing.release(hid))
        assert err == ("HOLD_ALREADY_CAPTURED" if how == "captured" else "")
        _, err = self._call(self.env.billing.capture(hid, 10**9))
        assert err != ""

    @rule()
    def flush_redis(self) -> None:
        self.env.run(flush_billing(self.env.redis))

    @invariant()
    def ledger_matches_model(self) -> None:
        w = self.env.run(self.env.billing.get_wallet(ADMIN, self.customer))
        assert (w.balance, w.held) == (self.balance, sum(self.holds.values()))
        assert w.balance - w.held >= 0

    @invariant()
    def euro_wallet_matches_model(self) -> None:
        w = self.env.run(self.env.billing.get_wallet(ADMIN, self.customer, "EUR"))
        assert (w.balance, w.held) == (self.eur, 0)

    @invariant()
    def grants_match_model(self) -> None:
        page = self.env.run(self.env.grants.list(ADMIN, self.customer, 500, "", ""))
        active = {g.request_id: g.remaining for g in page.items if g.status == 1}
        assert active == {k: v[1] for k, v in self.promos.items()}
        w = self.env.run(self.env.billing.get_wallet(ADMIN, self.customer))
        assert w.promo == sum(active.values())

    @invariant()
    def statement_matches_model(self) -> None:
        st = self.env.run(statement(self.env.billing, ADMIN, self.customer, utcnow().strftime("%Y-%m"), ""))
        assert st.closing == (st.opening + st.top_ups - st.charges + st.refunds + st.adjustments
                              + st.credits_granted - st.credits_expired)
        assert (st.closing, st.closing_held) == (self.balance, sum(self.holds.values()))
        assert st.refunds == sum(self.refunded.values())

    @invariant()
    def redis_matches_ledger(self) -> None:
        snap = self.env.run(self.env.billing.otb.snapshot(uuid.UUID(self.customer), "USD"))
        if snap.loaded:
            assert snap.holds == self.holds
            assert (snap.balance, snap.held) == (self.balance, sum(self.holds.values()))

    @invariant()
    def global_invariants(self) -> None:
        async def check() -> list[dict[str, Any]]:
            async with self.env.db.session() as s:
                return await self.env.billing._global_checks(s)

        assert self.env.run(check()) == []


def test_ledger_against_model(database_url: str, valkey_server: EmbeddedValkey) -> None:
    LedgerMachine.env = Env(database_url, valkey_server.url)
    try:
        run_state_machine_as_test(LedgerMachine, settings=settings(
            max_examples=25, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        LedgerMachine.env.close()
