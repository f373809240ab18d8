"""Redis client and Lua scripts.

Scripts live as `.lua` files next to the module that calls them, are registered once at
start-up (EVALSHA, reloaded automatically after a Redis restart) and report domain failures
as `redis.error_reply("CODE message")`; `ScriptErrors` maps those codes to domain errors in
one place per service. Redis runs each script alone, so the helpers scripts share go ahead of
each one's text: the kit's (`lua/batch.lua`: a batch's commands a thousand values at a time) and
a folder's own (its `_*.lua` files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ResponseError
from redis.utils import HIREDIS_AVAILABLE

from innosystem.kit.errors import DomainError

DEFAULT_MAX_CONNECTIONS = 64
POOL_WAIT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 1.0


def connect(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS, *,
            connect_timeout: float = CONNECT_TIMEOUT_SECONDS, timeout: float | None = None,
            pool_timeout: float = POOL_WAIT_SECONDS, **kwargs: Any) -> aioredis.Redis:
    """A client whose pool, when all `max_connections` are busy, makes a caller wait (up to
    `pool_timeout`) for one instead of failing at once: a burst of a thousand concurrent script
    calls queues rather than erroring. Subscriptions share one connection per process (`kit.pubsub`).

    `connect_timeout` bounds opening the TCP connection: without it an unreachable Redis host
    holds the caller for the kernel's SYN retries, minutes. `timeout` bounds every reply (the
    connection handshake's too). It is off by default because a script that timed out on the
    client may still have run on the server: a caller sets it where abandoning a call is safe
    (the gateway's rate limits). Blocking subscription reads are not cut by it (redis-py reads
    those without a timeout). The pool makes no retries, so these are the bounds.
    """
    options: dict[str, Any] = {"health_check_interval": 30, "socket_keepalive": True,
                               "socket_connect_timeout": connect_timeout, "socket_timeout": timeout, **kwargs}
    pool = _Pool.from_url(url, max_connections=max_connections, timeout=pool_timeout, **options)
    return _Redis.from_pool(pool)


class _Pool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, with a fast path while it is not contended: an idle connection is
    taken, and given back, without the pool's condition, its timeout timer and its wait-time
    metric, which cost about a quarter of a command's client CPU (a GET: 83-90 -> 65 µs,
    docs/performance.md, session 20). When no connection is idle or callers wait for one,
    every take goes the base class's way (in turn, bounded by `timeout`), and a connection given
    back wakes a waiter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _hiredis_packing(self.connection_class)
        self._waiting = 0  # callers in the base class's get_connection

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._available_connections and not self._waiting and not self._in_maintenance:
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                await self.ensure_connection(connection)  # reconnects a connection that died while idle
            except BaseException:
                await self.release(connection)
                raise
            return connection
        self._waiting += 1
        try:
            return await super().get_connection(*args, **kwargs)
        finally:
            self._waiting -= 1

    async def release(self, connection: Any) -> None:
        await aioredis.ConnectionPool.release(self, connection)
        if self._waiting:  # checked once the connection is back: a caller waiting since gets it
            async with self._condition:
                self._condition.notify()

    def releases_at_once(self, connection: Any) -> bool:
        """Whether `release(connection)` now would be back in the pool before it first pauses (so a
        cancel cannot cut it halfway): the pool's lock is free and the connection needs no reconnect."""
        return not self._lock.locked() and not connection.should_reconnect()


class _HiredisPacking:
    """Commands packed by hiredis, in C, as redis-py's synchronous client packs them; its asyncio
    connection packs them in Python (a thousand jobs' enqueue script call: 3.4 ms against 0.7; an
    eight-argument call 5.0 µs against 2.4; docs/performance.md, session 25)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


_PACKING: dict[type, type] = {}


def _hiredis_packing(cls: type[aioredis.connection.AbstractConnection]) -> type[aioredis.connection.AbstractConnection]:
    """The connection class the URL chose (TCP, TLS, a Unix socket), packing with hiredis."""
    if not HIREDIS_AVAILABLE:
        return cls
    if cls not in _PACKING:
        _PACKING[cls] = type(cls.__name__, (_HiredisPacking, cls), {})
    return _PACKING[cls]


class _Pipeline(aioredis.client.Pipeline):
    """redis-py's pipeline, giving its connection back without a task of its own where that cannot
    be cut halfway: its reset shields the pool's release in a task, two more turns of the event
    loop per pipeline (a two-command pipeline's client CPU 108 -> 87 µs, docs/performance.md,
    session 20). A pipeline that watched keys, or a release that could pause, goes redis-py's way."""

    async def reset(self) -> None:  # type: ignore[override]  # redis-py's own: not the RESET command
        conn, pool = self.connection, self.connection_pool
        if self.watching or conn is None or not isinstance(pool, _Pool) or not pool.releases_at_once(conn):
            await super().reset()
            return
        self.command_stack, self.scripts, self.explicit_transaction = [], set(), False
        self.connection = None
        await pool.release(conn)


class _Redis(aioredis.Redis):
    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> aioredis.client.Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


# What every script is given ahead of its own text (lua/batch.lua): `each` and `hmget`, a batch's
# commands a thousand values at a time, and `group`, its values by the key they go to.
PRELUDE = (Path(__file__).parent / "lua" / "batch.lua").read_text()


class Scripts:
    """The `.lua` files of a folder, by file stem: `scripts.reserve(keys=[...], args=[...])`. Each
    runs with `PRELUDE`'s helpers and the folder's own (its files named `_*.lua`) ahead of it."""

    def __init__(self, client: aioredis.Redis, folder: Path, errors: ScriptErrors | None = None) -> None:
        self._errors = errors or ScriptErrors({})
        paths = sorted(folder.glob("*.lua"))
        shared = PRELUDE + "".join(p.read_text() for p in paths if p.name.startswith("_"))
        self._scripts: dict[str, AsyncScript] = {
            p.stem: client.register_script(shared + p.read_text()) for p in paths if not p.name.startswith("_")
        }

    def __getattr__(self, name: str) -> _Bound:
        try:
            return _Bound(self._scripts[name], self._errors)
        except KeyError:
            raise AttributeError(f"no Lua script named {name!r}") from None


class _Bound:
    def __init__(self, script: AsyncScript, errors: ScriptErrors) -> None:
        self._script, self._errors = script, errors

    def queue(self, pipe: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> None:
        """The call as an EVALSHA in `pipe`, which runs it with its other commands in one round trip
        (redis-py's own script calls in a pipeline first ask whether the scripts exist: a round trip
        more). Its reply is NoScriptError if Redis lost the script: call it the usual way then."""
        pipe.evalsha(self._script.sha, len(keys), *keys, *args)

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
