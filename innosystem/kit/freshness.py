"""Change tokens: a cache that must be fresh, checked with one Redis read instead of a refetch.

The owner of some data sets a new random token under the data's name after every committed
change, before it answers the call that made the change. A reader caches the data together with
the token it read *before* fetching it; the cached copy is good while the token is still the
same. So a change is seen by every reader at once (a caller that saw "changed" is never answered
from the old copy), at the price of one read of a short string, which concurrent readers share.

Tokens are random rather than counters so that a Redis that lost its data cannot bring back a
token some reader still holds: a missing token is created afresh on read (`current`), and every
copy labelled with the old one is refetched. A reader that cannot reach Redis fetches afresh.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# GET each key; a missing one is set to the new token offered for it.
_CURRENT = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value then
    value = ARGV[i]
    redis.call('SET', key, value)
  end
  out[i] = value
end
return out
"""
ANNOUNCE_ATTEMPTS = 3
# One hash tag for every token: a read of several is one script call on one Redis Cluster slot.
PREFIX = "changed:{tokens}:"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def projects_of(customer_id: uuid.UUID | str) -> str:
    """A customer's projects (tenancy's; the jobs service caches who owns a project)."""
    return f"tenancy:projects:{customer_id}"


def job_types_of(project_id: uuid.UUID | str) -> str:
    """A project's job types (the jobs service's; each replica caches them for submits)."""
    return f"jobs:types:{project_id}"


def catalog() -> str:
    """The catalog job types and their prices (the jobs service's; each replica caches them for submits)."""
    return "jobs:catalog"


def markup_of(customer_id: uuid.UUID | str) -> str:
    """A customer's price markup (the jobs service's; each replica caches it for submits)."""
    return f"jobs:markup:{customer_id}"


class ChangeTokens:
    def __init__(self, client: aioredis.Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._current = client.register_script(_CURRENT)
        self._waiting: list[tuple[str, asyncio.Future[str]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def read(self, name: str) -> str:
        """`name`'s token as read by a Redis call that starts after this one was made (so a change
        confirmed before it is seen). Concurrent readers share that call: who asks while one is
        under way joins the next (RedisError if Redis cannot be reached)."""
        return await self.ask(name)

    def ask(self, name: str) -> asyncio.Future[str]:
        """`read`, started now: tokens asked for in one go are read by one call."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
        self._waiting.append((name, future))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_waiting())
        return future

    async def _read_waiting(self) -> None:
        await asyncio.sleep(0)  # the askers of this turn of the event loop share the call
        while self._waiting:
            batch, self._waiting = self._waiting, []
            names = list(dict.fromkeys(name for name, _ in batch))
            try:
                tokens = dict(zip(names, await self.current(names), strict=True))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for name, future in batch:
                if not future.done():
                    future.set_result(tokens[name])

    async def current(self, names: Sequence[str]) -> list[str]:
        """The tokens of `names` now (RedisError if Redis cannot be reached)."""
        if not names:
            return []
        values = await self._current(keys=[self.prefix + n for n in names],
                                     args=[uuid.uuid4().hex for _ in names])
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    async def changed(self, *names: str) -> None:
        """After a commit that changed `names`: every reader refetches. Raises RedisError if Redis
        could not be told (the caller must not claim the change is visible everywhere)."""
        mapping = {self.prefix + n: uuid.uuid4().hex for n in names}
        for attempt in range(1, ANNOUNCE_ATTEMPTS + 1):
            try:
                await self.client.mset(mapping)
                return
            except RedisError as exc:
                if attempt == ANNOUNCE_ATTEMPTS:
                    raise
                log.warning("announcing a change failed, trying again: %s", exc)


class Labelled(Generic[K, V]):
    """Values cached under the change token that was read before each was fetched: a value is
    served while its key's token is still the one it was labelled with, else fetched afresh (and
    labelled with the token just read). A token that could not be read serves nothing from here."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._items: dict[K, tuple[str, V]] = {}

    async def get(self, key: K, token_asked: asyncio.Future[str] | None, fetch: Callable[[], Awaitable[V]]) -> V:
        try:
            token = await token_asked if token_asked is not None else None
        except RedisError:
            token = None
        hit = self._items.get(key)
        if token is not None and hit is not None and hit[0] == token:
            return hit[1]
        value = await fetch()  # fetched after the token was read: a change since is a new token
        if token is not None:
            if len(self._items) >= self._limit:
                self._items.clear()
            self._items[key] = (token, value)
        return value
