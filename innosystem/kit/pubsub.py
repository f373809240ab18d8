"""One Redis subscription connection per process, shared by every local subscriber.

A watcher (a job's SSE watch, an access log's live feed, a cancellation stream) costs an
`asyncio.Queue`, not a connection: with a connection each, a few dozen watchers would exhaust
the process's Redis pool and starve its commands. The first local subscriber of a channel
subscribes the shared connection, the last one unsubscribes it. If the connection fails, every
current subscriber's queue receives `{CLOSED: reason}` and the next subscribe reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CLOSED = "_closed"  # the key of the message a subscriber's queue gets when the connection failed
Message = dict[str, Any]


class Subscriptions:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._lock = asyncio.Lock()
        self._local: dict[str, set[asyncio.Queue[Message]]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None  # reads `_pubsub` (a new connection gets a new reader)
        self._reading: aioredis.client.PubSub | None = None

    def channels(self) -> set[str]:
        return set(self._local)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[Message]]:
        """The channel's messages (JSON objects; other text as `{"data": text}`) while the block runs."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub()
            if channel not in self._local:
                await self._pubsub.subscribe(channel)  # raises on a lost connection: nothing registered
            self._local.setdefault(channel, set()).add(queue)
            if self._reading is not self._pubsub:
                self._reading = self._pubsub
                self._reader = asyncio.create_task(self._read(self._pubsub), name="redis-subscriptions")
        try:
            yield queue
        finally:
            await self._leave(channel, queue)

    async def _leave(self, channel: str, queue: asyncio.Queue[Message]) -> None:
        async with self._lock:
            queues = self._local.get(channel)
            if queues is None or queue not in queues:
                return  # the connection failed meanwhile: already forgotten
            queues.discard(queue)
            if not queues:
                del self._local[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.unsubscribe(channel)

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None:
                    continue
                for queue in self._local.get(_text(message["channel"]), ()):
                    queue.put_nowait(_decode(message["data"]))
        except (RedisError, OSError) as exc:
            log.warning("redis subscription connection lost: %s", exc)
            async with self._lock:
                for queues in self._local.values():
                    for queue in queues:
                        queue.put_nowait({CLOSED: str(exc)})
                self._local.clear()
                if self._pubsub is pubsub:
                    self._pubsub = None
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
            self._pubsub, self._reader, self._reading = None, None, None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(data: Any) -> Message:
    text = _text(data)
    try:
        value = json.loads(text)
    except ValueError:
        return {"data": text}
    return value if isinstance(value, dict) else {"data": value}
