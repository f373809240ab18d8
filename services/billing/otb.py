"""Open-to-Buy: the real-time authorizer in Redis, a projection of the ledger.

Per wallet two keys, hash-tagged by customer so they live on one cluster slot:
`billing:{c:<customer>}:w:<CUR>` (balance, held, limit) and `billing:{c:<customer>}:h:<CUR>`
(hold id → amount). Each operation is one Lua script. A wallet missing from Redis (flushed,
restarted, never loaded) makes `reserve` answer REBUILD and the caller reloads it from
PostgreSQL; the other scripts leave a missing wallet alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from innosystem.kit.errors import FailedPrecondition, Unavailable
from innosystem.kit.redis import ScriptErrors, Scripts

GENERATION_KEY = "billing:generation"


class Rebuild(Unavailable):
    """The wallet is not loaded in Redis: reload it from PostgreSQL and try again."""

    default_reason = "REBUILD"


class InsufficientFunds(FailedPrecondition):
    default_reason = "INSUFFICIENT_FUNDS"


ERRORS = ScriptErrors({"INSUFFICIENT_FUNDS": InsufficientFunds, "REBUILD": Rebuild})


@dataclass(frozen=True)
class Snapshot:
    loaded: bool
    balance: int
    held: int
    limit: int
    holds: dict[str, int]


def keys(customer_id: uuid.UUID, currency: str) -> list[str]:
    tag = f"{{c:{customer_id}}}"
    return [f"billing:{tag}:w:{currency}", f"billing:{tag}:h:{currency}"]


class OpenToBuy:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.scripts = Scripts(client, Path(__file__).parent / "lua", ERRORS)
        # resolves waiting for their wallet's next script call: (hold id, posted, caller's future)
        self._resolving: dict[tuple[uuid.UUID, str], list[tuple[str, int, asyncio.Future[None]]]] = {}

    async def reserve(self, customer_id: uuid.UUID, currency: str, hold_id: str, amount: int) -> bool:
        """True if held now, False if Redis already had the hold. InsufficientFunds, Rebuild."""
        return bool(await self.scripts.reserve(keys=keys(customer_id, currency), args=[hold_id, amount]))

    async def reserve_many(self, customer_id: uuid.UUID, currency: str, holds: Sequence[tuple[str, int]]
                           ) -> list[int]:
        """One wallet's holds (hold id, amount) in one script call: per hold 1 held now, 0 already
        held, -1 not affordable. Rebuild if the wallet is not loaded."""
        args: list[str | int] = []
        for hold_id, amount in holds:
            args += [hold_id, amount]
        return [int(x) for x in await self.scripts.reserve_many(keys=keys(customer_id, currency), args=args)]

    async def resolve(self, customer_id: uuid.UUID, currency: str, hold_id: str, posted: int) -> None:
        """Concurrent resolves of one wallet share one script call: a group commit's captures
        resolve together, so a batch costs one call per wallet. At idle a resolve goes at once."""
        wallet = (customer_id, currency)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._resolving.get(wallet)
        if waiting is not None:  # a call for this wallet is being prepared or is under way: join the next
            waiting.append((hold_id, posted, future))
        else:
            self._resolving[wallet] = [(hold_id, posted, future)]
            asyncio.get_running_loop().create_task(self._resolve_wallet(wallet))
        await future

    async def resolve_many(self, resolved: Sequence[tuple[uuid.UUID, str, str, int]]) -> None:
        """Holds (customer, currency, hold id, posted) resolved together: one script call per wallet."""
        wallets: dict[tuple[uuid.UUID, str], list[str | int]] = {}
        for customer_id, currency, hold_id, posted in resolved:
            wallets.setdefault((customer_id, currency), []).extend((hold_id, posted))
        await asyncio.gather(*(self.scripts.resolve(keys=keys(*wallet), args=args) for wallet, args in wallets.items()))

    async def _resolve_wallet(self, wallet: tuple[uuid.UUID, str]) -> None:
        await asyncio.sleep(0)  # the callers resolved by the same commit join this call
        while batch := self._resolving.get(wallet):
            self._resolving[wallet] = []  # arrivals during the call wait for the next one
            args: list[str | int] = []
            for hold_id, posted, _ in batch:
                args += [hold_id, posted]
            try:
                await self.scripts.resolve(keys=keys(*wallet), args=args)
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for *_, future in batch:
                    if not future.done():
                        future.set_result(None)
        self._resolving.pop(wallet, None)

    async def loaded(self, customer_id: uuid.UUID, currency: str) -> bool:
        """Whether the wallet is in Redis now."""
        return bool(await self.client.exists(keys(customer_id, currency)[0]))

    async def top_up(self, customer_id: uuid.UUID, currency: str, amount: int) -> None:
        await self.scripts.top_up(keys=keys(customer_id, currency)[:1], args=[amount])

    async def rebuild(self, customer_id: uuid.UUID, currency: str, balance: int, held: int, limit: int,
                      holds: dict[str, int], *, force: bool = True) -> None:
        """Write the wallet's projection; `force=False` only loads a wallet that is absent."""
        args: list[str | int] = ["1" if force else "0", balance, held, limit]
        for hold_id, amount in holds.items():
            args += [hold_id, amount]
        await self.scripts.rebuild(keys=keys(customer_id, currency), args=args)

    async def snapshot(self, customer_id: uuid.UUID, currency: str) -> Snapshot:
        loaded, balance, held, limit, flat = await self.scripts.snapshot(keys=keys(customer_id, currency))
        pairs = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
        holds = {pairs[i]: int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        return Snapshot(bool(loaded), int(balance), int(held), int(limit), holds)

    async def generation(self) -> str | None:
        value = await self.client.get(GENERATION_KEY)
        return value.decode() if isinstance(value, bytes) else value

    async def set_generation(self, value: str) -> None:
        await self.client.set(GENERATION_KEY, value)
