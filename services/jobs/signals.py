"""Wake-ups without polling: in-process waiters, woken across replicas through Redis pub/sub.

- queue wake: a job became ready in a queue (submit, promotion, requeue). A long-polling LeaseJobs
  call of this replica waits on its queues; a job becoming ready wakes ONE waiter of its queue
  (the oldest), and a waiter whose lease took all it asked for wakes the next (`more`): jobs may
  be left. So one job wakes one long poll, not every runner session's (each would probe Redis
  and all but one find nothing), and a burst still reaches as many waiters as it has jobs for.
  A per-queue version counter covers a job that comes between a caller's look and its wait.
  Every replica's listener turns the other replicas' `wake` messages into the same local wake-up
  (its own it skips: they were delivered here already), so a submit on replica A wakes a
  runner's long poll on replica B.
- schedule wake: a job was scheduled earlier than the promoter's current sleep.
- job events (WatchJob) and cancel requests (WatchCancellations) are published on channels that
  watchers subscribe to through the process's one shared subscription connection. A process
  with a job watcher also subscribes to the `watched` channel, so a batch of changes asks one
  NUMSUB of two channels whether any job is watched at all, and only then which.
- changed job ids (WatchJobs, WatchQueueStats): while a list or the queue statistics are watched,
  each batch of changes is also announced once on the `changes` channel, as the ids it changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from innosystem.kit.coalescing import Backlog
from innosystem.kit.pubsub import CLOSED, Subscriptions

__all__ = ["CLOSED", "Signals"]

log = logging.getLogger(__name__)


class Signals:
    def __init__(self, client: aioredis.Redis, prefix: str = "jobs:") -> None:
        self.client = client
        self.wake_channel = f"{prefix}wake"
        self.sched_channel = f"{prefix}sched"
        self.cancel_channel = f"{prefix}cancel"
        self.job_prefix = f"{prefix}events:"
        self.watched_channel = f"{prefix}watched"  # subscribed by every process with a job watcher
        self.changes_channel = f"{prefix}changes"
        self._jobs_watched = False  # whether the last NUMSUB found a job watched anywhere
        self._versions: defaultdict[str, int] = defaultdict(int)
        # Per queue, the futures of the long polls waiting on it, oldest first (one future may
        # wait on several queues; a woken or finished one is skipped and dropped by `more`).
        self._waiting: defaultdict[str, deque[asyncio.Future[bool]]] = defaultdict(deque)
        self._replica = uuid.uuid4().hex  # marks this replica's wake messages
        self.scheduled = asyncio.Event()
        self._subscriptions = Subscriptions(client)
        # Queues woken here, announced to the other replicas by one publish in flight at a time
        # that carries every queue woken meanwhile.
        self._announce: Backlog[str] = Backlog(self._publish_wake, "publishing queue wake-ups")

    # queue wake-ups ------------------------------------------------------------------------------
    def versions(self, queues: Iterable[str]) -> tuple[int, ...]:
        return tuple(self._versions[q] for q in queues)

    def known_queues(self) -> set[str]:
        """Queues this replica has seen a job enter or a runner wait on."""
        return set(self._versions)

    def _bump(self, queues: Iterable[str]) -> None:
        """Jobs became ready in `queues`: each queue's oldest waiter is woken."""
        for q in queues:
            self._versions[q] += 1
        self.more(queues)

    def more(self, queues: Iterable[str]) -> None:
        """Wake one more waiter of each of `queues` (a lease took all it asked for: jobs may be left)."""
        for q in queues:
            waiting = self._waiting.get(q)
            while waiting:
                future = waiting.popleft()
                if not future.done():
                    _resolve(future, True)
                    break

    async def wait(self, queues: Sequence[str], seen: tuple[int, ...], seconds: float,
                   future: asyncio.Future[bool] | None = None) -> bool:
        """Wait until one of `queues` has a job for this caller, or `seconds` pass (False). A job
        that came since `seen` (from `versions`) answers at once. `future`, if given, is the one
        waited on, which its owner may resolve too (a job handed to the caller: `handoff`)."""
        if seconds <= 0:
            return False
        if self.versions(queues) != seen:
            return True
        loop = asyncio.get_running_loop()
        future = future or loop.create_future()
        timer = loop.call_later(seconds, _resolve, future, False)
        for q in queues:
            self._waiting[q].append(future)
        woken = False
        try:
            woken = await future
            return woken
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()
            elif not woken and not future.cancelled() and future.result():
                self.more(queues)  # woken, then cancelled before it could look: the wake-up goes on
            for q in queues:
                waiting = self._waiting.get(q)
                if waiting is not None and future in waiting:
                    waiting.remove(future)
                if waiting is not None and not waiting:
                    del self._waiting[q]

    async def jobs_ready(self, queues: Iterable[str]) -> None:
        """Wakes this replica's long polls on `queues` now, and the other replicas' by a publish
        that nobody waits for: a submit answers without that round trip, and concurrent submits
        share one publish."""
        names = set(queues)
        if not names:
            return
        self._bump(sorted(names))
        for name in names:
            self._announce.add(name)

    async def _publish_wake(self, queues: list[str]) -> None:
        try:
            await self.client.publish(self.wake_channel, json.dumps({"from": self._replica,
                                                                     "queues": sorted(set(queues))}))
        except RedisError as exc:  # other replicas' long polls fall back to their periodic re-check
            log.warning("cannot publish queue wake-up: %s", exc)

    async def schedule_changed(self) -> None:
        self.scheduled.set()
        try:
            await self.client.publish(self.sched_channel, "1")
        except RedisError as exc:
            log.warning("cannot publish schedule wake-up: %s", exc)

    async def listen_forever(self) -> None:
        """Background loop: other replicas' wake-ups become local ones."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.wake_channel, self.sched_channel)
            self._bump(list(self._versions))  # whatever was missed while (re)connecting
            self.scheduled.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None:
                    continue
                channel = _text(message["channel"])
                if channel == self.wake_channel:
                    wake = json.loads(_text(message["data"]))
                    if isinstance(wake, list):  # a replica of a version before the sender's mark
                        self._bump(wake)
                    elif wake.get("from") != self._replica:
                        self._bump(wake.get("queues", []))
                elif channel == self.sched_channel:
                    self.scheduled.set()
        finally:
            await pubsub.aclose()

    # per-job events and cancel requests ----------------------------------------------------------
    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        try:
            await self.client.publish(channel, json.dumps(event))
        except RedisError as exc:
            log.warning("cannot publish on %s: %s", channel, exc)

    async def jobs_changed(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Each watched job's event on its own channel. A batch of leases or results changes
        hundreds of jobs at once and almost always none has a watcher: one NUMSUB asks whether
        any job is watched (`watched_channel`, which every process with a job watcher subscribes
        to) and whether a list is (`changes_channel`); only when a job is, it asks which, and only
        their events are encoded and published. While jobs are watched the NUMSUB names the
        batch's channels at once (one round trip, as when none is). While a list is watched the
        batch's ids are published there, once. Called after the commit; a watcher subscribes
        before it reads the job, so a change it cannot have read is announced. `ask_watched` puts
        the NUMSUB in a caller's pipeline."""
        if not events:
            return
        try:
            numsub = await self.client.pubsub_numsub(*self._asked(events))
        except RedisError as exc:
            log.warning("cannot publish %d job events: %s", len(events), exc)
            return
        await self.publish_watched(events, numsub)

    def ask_watched(self, pipe: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Queues the NUMSUB of `jobs_changed` in `pipe`; its reply goes to `publish_watched`."""
        pipe.pubsub_numsub(*self._asked(events))

    def _asked(self, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
        channels = [self.watched_channel, self.changes_channel]
        if self._jobs_watched:  # as the last answer said: which of these, in the same question
            channels += [self.job_prefix + job_id for job_id, _ in events]
        return channels

    async def publish_watched(self, events: list[tuple[str, dict[str, Any]]], numsub: Any) -> None:
        """The events of the watched jobs among `events`, by the reply to `ask_watched`'s NUMSUB."""
        if isinstance(numsub, Exception):
            log.warning("cannot publish %d job events: %s", len(events), numsub)
            return
        counts = {_text(c): int(n) for c, n in numsub}
        self._jobs_watched = counts.get(self.watched_channel, 0) > 0
        watched: list[tuple[str, dict[str, Any]]] = []
        try:
            if self._jobs_watched:  # which of the batch's jobs (none is, almost always: nothing to look at)
                channels = [(self.job_prefix + job_id, event) for job_id, event in events]
                if len(counts) <= 2:  # a job is watched since the question was asked: ask which
                    counts.update((_text(c), int(n)) for c, n in await self.client.pubsub_numsub(
                        *(channel for channel, _ in channels)))
                watched = [(channel, event) for channel, event in channels if counts.get(channel)]
            listed = counts.get(self.changes_channel, 0) > 0
            if not watched and not listed:
                return
            async with self.client.pipeline(transaction=False) as pipe:
                for channel, event in watched:
                    pipe.publish(channel, json.dumps(event))
                if listed:
                    pipe.publish(self.changes_channel, json.dumps({"ids": sorted({job_id for job_id, _ in events})}))
                await pipe.execute()
        except RedisError as exc:
            log.warning("cannot publish %d job events: %s", len(events), exc)

    async def cancel_requested(self, notice: dict[str, Any]) -> None:
        await self.publish(self.cancel_channel, notice)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]:
        """A channel's messages as a queue while the block runs (the process's shared subscription)."""
        return self._subscriptions.subscribe(channel)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
