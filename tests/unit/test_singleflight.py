"""SingleFlight: concurrent askers of one key share a call; a caller leaving does not cancel it
for the others; a failure reaches every asker; a finished call is not reused."""

from __future__ import annotations

import asyncio

import pytest

from innosystem.kit.singleflight import SingleFlight


async def test_concurrent_askers_share_one_call_and_a_leaver_does_not_cancel_it() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    askers = [asyncio.ensure_future(flights.do("k", slow)) for _ in range(10)]
    await asyncio.sleep(0)
    askers[0].cancel()
    release.set()
    results = await asyncio.gather(*askers[1:])
    assert results == [42] * 9 and calls == 1
    assert await flights.do("k", slow) == 42 and calls == 2  # a finished call is not reused
    assert await flights.do("other", slow) == 42 and calls == 3


async def test_a_failure_reaches_every_asker() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def broken() -> int:
        await asyncio.sleep(0.01)
        raise LookupError("gone")

    results = await asyncio.gather(*(flights.do("k", broken) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    with pytest.raises(LookupError):
        await flights.do("k", broken)
