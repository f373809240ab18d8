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
