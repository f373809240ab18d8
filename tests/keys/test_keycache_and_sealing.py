"""In-memory project key cache (TTL, use limit, erasure) and secrets sealed under the master key."""

from __future__ import annotations

import pytest

from innosystem.keymanager.aead import IntegrityError
from services.keys.keycache import KeyCache
from services.keys.keymanagers import Sealer


def test_a_cached_key_expires_after_its_ttl_and_its_use_limit_and_is_erased() -> None:
    now = [0.0]
    cache = KeyCache(ttl=10, max_uses=3, clock=lambda: now[0])
    cache.put("p", 1, b"k" * 32)
    entry = cache._entries[("p", 1)]
    assert [cache.get("p", 1) for _ in range(4)] == [b"k" * 32] * 3 + [None]
    assert bytes(entry.key) == bytes(32)  # overwritten on eviction
    cache.put("p", 2, b"j" * 32)
    now[0] = 10.0
    assert cache.get("p", 2) is None
    off = KeyCache(ttl=0, max_uses=10)
    off.put("p", 1, b"k" * 32)
    assert off.get("p", 1) is None


def test_forgetting_a_project_drops_only_its_keys() -> None:
    cache = KeyCache(ttl=60, max_uses=10)
    cache.put("a", 1, b"a" * 32)
    cache.put("b", 1, b"b" * 32)
    cache.forget_project("a")
    assert cache.get("a", 1) is None and cache.get("b", 1) == b"b" * 32


def test_sealed_secrets_open_only_with_the_master_key_and_their_owner() -> None:
    sealer = Sealer(b"m" * 32)
    sealed = sealer.seal("key-1", ["s" * 40, "t" * 40])
    assert b"s" * 40 not in sealed
    assert sealer.open("key-1", sealed) == ["s" * 40, "t" * 40]
    with pytest.raises(IntegrityError):
        sealer.open("key-2", sealed)  # moved to another key's row
    with pytest.raises(IntegrityError):
        Sealer(b"n" * 32).open("key-1", sealed)
