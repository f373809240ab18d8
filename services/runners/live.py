"""Live session state in Redis, shared by every runners replica.

One hash per connected runner, `runners:{r:<id>}:session`, holds its current session id and the
replica holding its stream, plus what changes per job (free slots, running jobs, the latest
job, draining). It expires unless refreshed by heartbeats, so a replica that dies leaves no
runner looking alive for long. A newer session overwrites `session_id`: the replica holding an
older one sees that (by a control message, or at its next heartbeat) and closes its stream.

Control messages (`runners:control` pub/sub) reach every replica: close a runner's stream
(deleted, token rotated, superseded) or change its maintenance flag.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

CONTROL_CHANNEL = "runners:control"


def session_key(runner_id: str) -> str:
    return f"runners:{{r:{runner_id}}}:session"


@dataclass(frozen=True)
class Live:
    session_id: str
    free_slots: int
    running: int
    current_job_id: str
    draining: bool


def _decode(raw: dict[Any, Any]) -> Live | None:
    if not raw:
        return None
    get = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in raw.items()}
    return Live(session_id=get.get("session_id", ""), free_slots=int(get.get("free", 0)),
                running=int(get.get("running", 0)), current_job_id=get.get("current_job_id", ""),
                draining=get.get("draining") == "1")


def _text(value: bytes | str | None) -> str | None:
    if not value:
        return None
    return value.decode() if isinstance(value, bytes) else value


class LiveState:
    def __init__(self, redis: aioredis.Redis, ttl_ms: int) -> None:
        self.redis = redis
        self.ttl_ms = ttl_ms

    async def open(self, runner_id: str, session_id: str, replica: str, free: int) -> str | None:
        """Make `session_id` the runner's current session; returns the session it supersedes."""
        key = session_key(runner_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, "session_id")
            pipe.delete(key)
            pipe.hset(key, mapping={"session_id": session_id, "replica": replica, "free": free, "running": 0,
                                    "current_job_id": "", "draining": 0})
            pipe.pexpire(key, self.ttl_ms)
            previous, *_ = await pipe.execute()
        return _text(previous)

    async def update(self, states: Iterable[tuple[str, str, Mapping[Any, Any]]]) -> set[str]:
        """Refresh many sessions at once: (runner id, session id, fields). Returns the runner ids
        whose session is no longer current (superseded or gone)."""
        states = list(states)
        if not states:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for runner_id, _, _ in states:
                pipe.hget(session_key(runner_id), "session_id")
            current = await pipe.execute()
        stale = {r for (r, s, _), c in zip(states, current, strict=True) if _text(c) != s}
        async with self.redis.pipeline(transaction=False) as pipe:
            for runner_id, _, fields in states:
                if runner_id not in stale:
                    pipe.hset(session_key(runner_id), mapping=fields)
                    pipe.pexpire(session_key(runner_id), self.ttl_ms)
            await pipe.execute()
        return stale

    async def close(self, runner_id: str, session_id: str) -> bool:
        """Forget the session if it is still the current one; False if a newer one took over."""
        key = session_key(runner_id)
        current = await self.redis.hget(key, "session_id")
        if current is not None and _text(current) != session_id:
            return False
        await self.redis.delete(key)
        return True

    async def current_session(self, runner_id: str) -> str | None:
        value = await self.redis.hget(session_key(runner_id), "session_id")
        return _text(value)

    async def get_many(self, runner_ids: list[str]) -> dict[str, Live]:
        if not runner_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for runner_id in runner_ids:
                pipe.hgetall(session_key(runner_id))
            raws = await pipe.execute()
        out = {}
        for runner_id, raw in zip(runner_ids, raws, strict=True):
            if (live := _decode(raw)) is not None:
                out[runner_id] = live
        return out

    async def publish(self, kind: str, runner_id: str, **extra: Any) -> None:
        await self.redis.publish(CONTROL_CHANNEL, json.dumps({"kind": kind, "runner_id": runner_id, **extra}))
