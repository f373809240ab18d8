"""Open-to-Buy: the real-time authorizer in Redis, a projection of the ledger.

Per wallet two keys, hash-tagged by customer so they live on one cluster slot:
`billing:{c:<customer>}:w:<CUR>` (balance, held, limit) and `billing:{c:<customer>}:h:<CUR>`
(hold id → amount). Each operation is one Lua script. A wallet missing from Redis (flushed,
restarted, never loaded) makes `reserve` answer REBUILD and the caller reloads it from
PostgreSQL; the other scripts leave a missing wallet alone.
"""

from __future__ import annotations

import uuid
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

    async def reserve(self, customer_id: uuid.UUID, currency: str, hold_id: str, amount: int) -> bool:
        """True if held now, False if Redis already had the hold. InsufficientFunds, Rebuild."""
        return bool(await self.scripts.reserve(keys=keys(customer_id, currency), args=[hold_id, amount]))

    async def resolve(self, customer_id: uuid.UUID, currency: str, hold_id: str, posted: int) -> None:
        await self.scripts.resolve(keys=keys(customer_id, currency), args=[hold_id, posted])

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
