"""Reconnect delays: exponential with full jitter, capped (no retry library is pinned)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.2, maximum: float = 10.0, multiplier: float = 2.0) -> None:
        self.initial, self.maximum, self.multiplier = initial, maximum, multiplier
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier ** self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
