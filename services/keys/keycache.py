"""Unwrapped project keys, in this process's memory only, for a short time and a bounded number
of uses (Redis never sees them). An evicted key's buffer is overwritten (best effort in Python)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    key: bytearray
    expires: float
    uses_left: int


class KeyCache:
    def __init__(self, ttl: float, max_uses: int, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000) -> None:
        self.ttl, self.max_uses, self.clock, self.max_entries = ttl, max_uses, clock, max_entries
        self._entries: dict[tuple[str, int], _Entry] = {}

    def get(self, project_id: str, version: int) -> bytes | None:
        entry = self._entries.get((project_id, version))
        if entry is None:
            return None
        if entry.expires <= self.clock() or entry.uses_left <= 0:
            self._evict((project_id, version))
            return None
        entry.uses_left -= 1
        return bytes(entry.key)

    def put(self, project_id: str, version: int, key: bytes) -> None:
        if self.ttl <= 0 or self.max_uses <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._evict(next(iter(self._entries)))
        self._entries[(project_id, version)] = _Entry(bytearray(key), self.clock() + self.ttl, self.max_uses)

    def forget_project(self, project_id: str) -> None:
        for k in [k for k in self._entries if k[0] == project_id]:
            self._evict(k)

    def clear(self) -> None:
        for k in list(self._entries):
            self._evict(k)

    def _evict(self, k: tuple[str, int]) -> None:
        entry = self._entries.pop(k, None)
        if entry is not None:
            entry.key[:] = bytes(len(entry.key))
