"""The process's Redis pool and its shared subscription connection, against the real embedded Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest

from innosystem.embedded import EmbeddedValkey
from innosystem.kit import redis as kit_redis
from innosystem.kit.pubsub import CLOSED, Subscriptions


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(
        valkey_server: EmbeddedValkey) -> None:
    client = kit_redis.connect(valkey_server.url, max_connections=4)
    key = f"burst:{uuid.uuid4()}"
    try:
        # 500 concurrent calls on 4 connections (a blocking command each holds one for 20 ms)
        await asyncio.gather(*(client.blpop([f"{key}:none:{i}"], timeout=0.02) for i in range(20)),
                             *(client.incr(key) for _ in range(500)))
        assert int(await client.get(key)) == 500
    finally:
        await client.delete(key)
        await client.aclose()


async def test_an_idle_connection_killed_by_the_server_is_replaced_on_the_next_command(
        valkey_server: EmbeddedValkey) -> None:
    """The uncontended take (no condition, no timer) does not keep handing out a dead connection."""
    client = kit_redis.connect(valkey_server.url, max_connections=2)
    other = kit_redis.connect(valkey_server.url)
    try:
        await client.client_setname("pool-under-test")
        before = await client.client_id()
        for entry in await other.client_list():
            if entry.get("name") == "pool-under-test":
                await other.client_kill_filter(_id=entry["id"])
        await asyncio.sleep(0.05)
        with contextlib.suppress(kit_redis.aioredis.ConnectionError):  # no retries (`connect`): at most this fails
            await client.ping()
        assert await client.ping()  # the dead connection gave way to a fresh one, not handed out again
        assert await client.client_id() != before
    finally:
        await client.aclose()
        await other.aclose()


async def test_callers_waiting_for_a_busy_pool_are_woken_in_turn_or_time_out(valkey_server: EmbeddedValkey) -> None:
    client = kit_redis.connect(valkey_server.url, max_connections=1, pool_timeout=0.3)
    key = f"turn:{uuid.uuid4()}"
    try:
        await client.ping()  # the one connection exists and is idle: the next take is the fast one
        held = asyncio.create_task(client.blpop([f"{key}:none"], timeout=0.1))  # holds it for 0.1 s
        await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(client.incr(key)) for _ in range(5)]  # wait on the condition
        await asyncio.gather(held, *waiters)
        assert int(await client.get(key)) == 5  # each woken when the one before gave the connection back
        slow = asyncio.create_task(client.blpop([f"{key}:none"], timeout=1))
        await asyncio.sleep(0.01)
        with pytest.raises(kit_redis.aioredis.ConnectionError, match="No connection available"):
            await client.incr(key)  # none within pool_timeout: the one connection is held
        await slow
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_pipeline_gives_its_connection_back_without_a_task_and_watches_still_work(
        valkey_server: EmbeddedValkey) -> None:
    """redis-py's pipeline shields its connection's release in a task (two more turns of the loop);
    ours gives it back at once when nothing can cut the release halfway. On a pool of one, a
    connection not given back would time the next pipeline out."""
    client = kit_redis.connect(valkey_server.url, max_connections=1, pool_timeout=0.5)
    key = f"pipe:{uuid.uuid4()}"
    made: list[object] = []
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made.append(coro)
        return factory(loop, coro, **kwargs) if factory else asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await client.ping()
        loop.set_task_factory(counting)
        try:
            for _ in range(20):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.incr(key)
                    pipe.get(key)
                    _, value = await pipe.execute()
        finally:
            loop.set_task_factory(factory)
        assert int(value) == 20 and made == []
        async with client.pipeline() as pipe:  # WATCH / MULTI / EXEC: released redis-py's way, unwatched
            await pipe.watch(key)
            pipe.multi()
            pipe.incr(key)
            assert await pipe.execute() == [21]
        assert int(await client.get(key)) == 21
    finally:
        await client.delete(key)
        await client.aclose()


async def test_many_watchers_share_one_connection_and_the_last_one_out_unsubscribes(
        valkey_server: EmbeddedValkey) -> None:
    client = kit_redis.connect(valkey_server.url, max_connections=4)
    subs = Subscriptions(client)
    channels = [f"watch:{uuid.uuid4()}" for _ in range(100)]
    try:
        async with asyncio.TaskGroup() as tg:
            ready = asyncio.Barrier(len(channels) + 1)

            async def watch(channel: str) -> dict[str, object]:
                async with subs.subscribe(channel) as queue, subs.subscribe(channel) as twin:
                    await ready.wait()
                    first, second = await asyncio.wait_for(queue.get(), 5), await asyncio.wait_for(twin.get(), 5)
                    assert first == second
                    return first

            tasks = [tg.create_task(watch(c)) for c in channels]
            await ready.wait()
            # 100 live subscriptions on a pool of 4, and ordinary commands still get a connection
            assert await client.ping()
            subscribed = await client.pubsub_numsub(*channels)
            assert all(n == 1 for _, n in subscribed)  # one server-side subscriber per channel
            for i, c in enumerate(channels):
                await client.publish(c, json.dumps({"n": i}))
        assert [t.result() for t in tasks] == [{"n": i} for i in range(len(channels))]
        assert subs.channels() == set()
        assert all(n == 0 for _, n in await client.pubsub_numsub(*channels))
    finally:
        await subs.aclose()
        await client.aclose()


async def test_a_lost_connection_closes_every_watch_and_the_next_subscribe_reconnects(
        valkey_server: EmbeddedValkey) -> None:
    client = kit_redis.connect(valkey_server.url)
    subs = Subscriptions(client)
    channel = f"lost:{uuid.uuid4()}"
    try:
        async with subs.subscribe(channel) as a, subs.subscribe(f"{channel}:other") as b:
            await client.client_kill_filter(_type="pubsub")
            got = [await asyncio.wait_for(q.get(), 10) for q in (a, b)]
            assert all(CLOSED in g for g in got), got
        async with subs.subscribe(channel) as again:
            await client.publish(channel, "plain text")
            assert await asyncio.wait_for(again.get(), 5) == {"data": "plain text"}
    finally:
        await subs.aclose()
        await client.aclose()


async def test_commands_are_packed_by_hiredis_and_mean_what_they_meant(valkey_server: EmbeddedValkey) -> None:
    """The pool's connections pack commands in C; every argument type redis-py takes reaches the
    server as redis-py's own packing sends it, in single commands and in pipelines."""
    client = kit_redis.connect(valkey_server.url)
    key = f"pack:{uuid.uuid4()}"
    try:
        assert isinstance(client.connection_pool.connection_class, type)
        assert issubclass(client.connection_pool.connection_class, kit_redis._HiredisPacking)
        values: list[Any] = ["é ünïcode", b"\x00\xffbytes", 42, -7, 0.1, 1e20, 1733580000.123456,
                             memoryview(b"view"), bytearray(b"array")]
        python = kit_redis.aioredis.Connection()  # redis-py's own packing, for comparison
        for value in values:
            assert b"".join(kit_redis._HiredisPacking().pack_command("SET", key, value)) == \
                b"".join(python.pack_command("SET", key, value))
        await client.rpush(key, *values)
        async with client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, "piped", 3.5)
            pipe.lrange(key, 0, -1)
            _, stored = await pipe.execute()
        assert stored == ["é ünïcode".encode(), b"\x00\xffbytes", b"42", b"-7", b"0.1", b"1e+20",
                          b"1733580000.123456", b"view", b"array", b"piped", b"3.5"]
        assert await client.execute_command("CONFIG GET", "maxmemory")  # a command name of two words
        with pytest.raises(kit_redis.aioredis.DataError):
            await client.set(key, None)  # type: ignore[arg-type]
    finally:
        await client.delete(key)
        await client.aclose()
