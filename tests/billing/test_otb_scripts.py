"""Open-to-Buy's batch scripts against a Valkey of their own: each hold decided on its own, in
order, with a command per thousand values inside the script rather than two per hold."""

from __future__ import annotations

import uuid

from innosystem.embedded import EmbeddedValkey
from innosystem.kit.redis import connect
from services.billing.otb import OpenToBuy


async def _calls(otb: OpenToBuy) -> dict[str, int]:
    stats = await otb.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_reserve_many_and_resolve_decide_each_hold_in_order(own_valkey: EmbeddedValkey) -> None:
    otb = OpenToBuy(connect(own_valkey.url))
    customer = uuid.uuid4()
    try:
        await otb.rebuild(customer, "USD", balance=1000, held=100, limit=0, holds={"old": 100})
        # 900 available: h1, h2, a repeat of h1 (already held), one too large, one that fits the rest
        out = await otb.reserve_many(customer, "USD", [("h1", 300), ("h2", 300), ("h1", 300), ("h3", 400),
                                                       ("h4", 300), ("old", 50)])
        assert out == [1, 1, 0, -1, 1, 0]
        snap = await otb.snapshot(customer, "USD")
        assert (snap.balance, snap.held) == (1000, 1000)
        assert snap.holds == {"old": 100, "h1": 300, "h2": 300, "h4": 300}
        # h1 captured at 250, h2 voided, a repeat of h2 and an unknown hold: dropped once, posted as given
        await otb.resolve_many([(customer, "USD", "h1", 250), (customer, "USD", "h2", 0),
                                (customer, "USD", "h2", 0), (customer, "USD", "gone", 0)])
        snap = await otb.snapshot(customer, "USD")
        assert (snap.balance, snap.held, snap.holds) == (750, 400, {"old": 100, "h4": 300})
    finally:
        await otb.client.aclose()


async def test_a_large_batch_is_a_few_commands_inside_the_script(own_valkey: EmbeddedValkey) -> None:
    otb = OpenToBuy(connect(own_valkey.url))
    customer = uuid.uuid4()
    holds = [(f"h{i:04d}", 2) for i in range(1500)]
    try:
        await otb.rebuild(customer, "USD", balance=10_000, held=0, limit=0, holds={})
        await otb.reserve_many(customer, "USD", [("warm", 1)])  # the scripts loaded before counting
        await otb.resolve_many([(customer, "USD", "warm", 1)])
        before = await _calls(otb)
        assert await otb.reserve_many(customer, "USD", holds) == [1] * 1500
        await otb.resolve_many([(customer, "USD", hold, amount) for hold, amount in holds])
        after = await _calls(otb)
        counts = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        # the reserve: an HMGET of the holds a thousand ids at a time, one of the wallet, the new
        # holds in an HSET a thousand values at a time; the resolve: an HMGET and an HDEL a thousand
        # ids at a time; none per hold
        assert counts["hmget"] == 2 + 1 + 2, counts
        assert counts["hset"] == 3 and counts["hdel"] == 2 and "hexists" not in counts and "hget" not in counts, counts
        snap = await otb.snapshot(customer, "USD")
        assert (snap.balance, snap.held, snap.holds) == (10_000 - 1 - 3000, 0, {})
    finally:
        await otb.client.aclose()
