"""Lua script loading and error mapping against the real embedded Valkey."""

from __future__ import annotations

from pathlib import Path

import pytest

from innosystem.embedded import EmbeddedValkey
from innosystem.kit import redis as kit_redis
from innosystem.kit.errors import FailedPrecondition


async def test_scripts_run_reload_after_flush_and_map_errors(valkey_server: EmbeddedValkey, tmp_path: Path) -> None:
    (tmp_path / "take.lua").write_text(
        "local have = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
        "if have < tonumber(ARGV[1]) then return redis.error_reply('INSUFFICIENT_FUNDS have ' .. have) end\n"
        "return redis.call('DECRBY', KEYS[1], ARGV[1])\n"
    )
    client = kit_redis.connect(valkey_server.url)
    scripts = kit_redis.Scripts(client, tmp_path, kit_redis.ScriptErrors({"INSUFFICIENT_FUNDS": FailedPrecondition}))
    key = "{t:1}:balance"
    await client.set(key, 10)
    assert await scripts.take(keys=[key], args=[4]) == 6
    await client.script_flush()  # a restarted Redis forgets scripts: EVALSHA falls back to EVAL
    assert await scripts.take(keys=[key], args=[6]) == 0
    with pytest.raises(FailedPrecondition) as err:
        await scripts.take(keys=[key], args=[1])
    assert err.value.reason == "INSUFFICIENT_FUNDS" and "have 0" in err.value.message
    with pytest.raises(AttributeError):
        scripts.missing  # noqa: B018
    await client.delete(key)
    await client.aclose()


async def test_every_script_has_the_batch_helpers(valkey_server: EmbeddedValkey, tmp_path: Path) -> None:
    """`each` and `hmget` (kit/lua/batch.lua) go ahead of every script: a batch of any size, a
    thousand values a command."""
    (tmp_path / "copy.lua").write_text(
        "local values = hmget(KEYS[1], ARGV)\n"
        "local pairs = {}\n"
        "for k = 1, #ARGV do if values[k] then pairs[#pairs + 1] = ARGV[k]; pairs[#pairs + 1] = values[k] end end\n"
        "each('HSET', KEYS[2], pairs)\n"
        "return #pairs / 2\n"
    )
    client = kit_redis.connect(valkey_server.url)
    scripts = kit_redis.Scripts(client, tmp_path)
    source, target = "{h:1}:source", "{h:1}:target"
    await client.hset(source, mapping={f"f{i}": str(i) for i in range(0, 2500, 2)})
    fields = [f"f{i}" for i in range(2500)]  # 2,500 asked, 1,250 there: three HMGETs, three HSETs
    assert await scripts.copy(keys=[source, target], args=fields) == 1250
    assert await client.hgetall(target) == await client.hgetall(source)
    await client.delete(source, target)
    await client.aclose()
