"""The process's Redis pool and its shared subscription connection, against the real embedded Valkey."""

from __future__ import annotations

import asyncio
import json
import uuid

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
