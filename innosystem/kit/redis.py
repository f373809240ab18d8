"""Redis client and Lua scripts.

Scripts live as `.lua` files next to the module that calls them, are registered once at
start-up (EVALSHA, reloaded automatically after a Redis restart) and report domain failures
as `redis.error_reply("CODE message")`; `ScriptErrors` maps those codes to domain errors in
one place per service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from innosystem.kit.errors import DomainError

DEFAULT_MAX_CONNECTIONS = 64
POOL_WAIT_SECONDS = 10.0


def connect(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS, **kwargs: Any) -> aioredis.Redis:
    """A client whose pool, when all `max_connections` are busy, makes a caller wait (up to 10 s)
    for one instead of failing at once: a burst of a thousand concurrent script calls queues
    rather than erroring. Subscriptions share one connection per process (`kit.pubsub`)."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_WAIT_SECONDS,
                                                    health_check_interval=30, socket_keepalive=True, **kwargs)
    return aioredis.Redis.from_pool(pool)


class Scripts:
    """All `.lua` files in a folder, by file stem: `scripts.reserve(keys=[...], args=[...])`."""

    def __init__(self, client: aioredis.Redis, folder: Path, errors: ScriptErrors | None = None) -> None:
        self._errors = errors or ScriptErrors({})
        self._scripts: dict[str, AsyncScript] = {
            path.stem: client.register_script(path.read_text()) for path in sorted(folder.glob("*.lua"))
        }

    def __getattr__(self, name: str) -> _Bound:
        try:
            return _Bound(self._scripts[name], self._errors)
        except KeyError:
            raise AttributeError(f"no Lua script named {name!r}") from None


class _Bound:
    def __init__(self, script: AsyncScript, errors: ScriptErrors) -> None:
        self._script, self._errors = script, errors

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                       client: aioredis.Redis | None = None) -> Any:
        try:
            return await self._script(keys=list(keys), args=list(args), client=client)
        except ResponseError as exc:
            raise self._errors.translate(exc) from exc


class ScriptErrors:
    """Maps the first word of a script's error reply to a domain error class."""

    def __init__(self, table: Mapping[str, type[DomainError]]) -> None:
        self._table = dict(table)

    def translate(self, exc: ResponseError) -> Exception:
        code, _, message = str(exc).partition(" ")
        cls = self._table.get(code)
        return cls(message or code, reason=code) if cls else exc
