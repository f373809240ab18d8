"""WatchJobs and WatchQueueStats: a job list and the queue statistics as streams, so a console
updates them when jobs change instead of asking again every few seconds.

Both listen on the `changes` channel (`Signals.jobs_changed`), which carries the ids of each batch
of changed jobs and is published only while someone listens: with no list watched, the run path
pays one more channel in a NUMSUB it makes anyway. A submit announces no job ids (a new job has
no watcher), but it wakes the queues (`wake`, `sched`), which a list watch hears too: then it reads
the jobs created since the newest it has sent (by the list's index on project and create time,
looking `NEW_MARGIN` further back for a submit that committed late). A list watch reads only the
announced jobs that it may show (by primary key, within the caller's scope and project),
collecting what arrives within `COALESCE_SECONDS` into one read, so a busy project costs a
watcher a read per pause, not per job. The statistics are recomputed at most every
`STATS_MIN_SECONDS` after a change, and every `STATS_RECHECK_SECONDS` without one (the oldest
pending job ages meanwhile).

A watch holds a watch slot (`watchers.py`) like WatchJob: the customer's, or for an admin or a
reseller its own account's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import Unavailable
from innosystem.kit.protos import timestamp
from innosystem.kit.scope import Scope
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.jobs.convert import job_pb
from services.jobs.models import Job
from services.jobs.queries import WITHOUT_DOCUMENTS, Queries, matching, uuid_field, visible
from services.jobs.runtime import Deps
from services.jobs.signals import CLOSED
from services.jobs.watchers import Watchers

COALESCE_SECONDS = 0.5
NEW_MARGIN = timedelta(seconds=10)  # a submit's create time precedes its commit by at most this
MAX_NEW = 500  # new jobs sent per pause; a list that grows faster is re-read by the client anyway
STATS_MIN_SECONDS = 2.0
STATS_RECHECK_SECONDS = 15.0
LIST_RECHECK_SECONDS = 15.0  # the slot is refreshed at least this often on a quiet list


def _account(caller: Principal) -> str:
    """Whose watch slots a watch takes."""
    return caller.customer_id or caller.reseller_id or "platform"


def _feed_lost(event: dict[str, Any]) -> None:
    if CLOSED in event:
        raise Unavailable(f"event feed lost: {event[CLOSED]}; watch again", reason="FEED_LOST")


class Live:
    def __init__(self, deps: Deps, queries: Queries, watchers: Watchers, visible_project: Any) -> None:
        self.deps = deps
        self.queries = queries
        self.watchers = watchers
        self._visible_project = visible_project

    async def jobs(self, caller: Principal, r: pb.WatchJobsRequest) -> AsyncGenerator[pb.JobEvent, None]:
        seen: Select[Any] = visible(select(Job), Scope.of(caller))
        if r.project_id != "-":
            seen = seen.where(Job.project_id == (await self._visible_project(caller, r.project_id)).project_id)
        if r.customer_id:
            seen = seen.where(Job.customer_id == uuid_field(r.customer_id, "customer_id"))
        wanted = matching(seen, r)  # validates the filter before the stream opens
        signals = self.deps.signals
        channels = (signals.changes_channel, signals.wake_channel, signals.sched_channel)
        async with self.watchers.slot(_account(caller)) as slot, _merged(signals, channels) as incoming:
            newest = self.deps.now()
            sent: dict[uuid.UUID, datetime] = {}  # new jobs sent within NEW_MARGIN of the newest
            yield pb.JobEvent(type=pb.JOB_EVENT_TYPE_SNAPSHOT, event_time=timestamp(newest))
            while True:
                ids, woken = await _gather(incoming, LIST_RECHECK_SECONDS)
                await slot.keep()
                if not ids and not woken:
                    continue
                async with self.deps.db.session() as s:
                    jobs = list((await s.execute(seen.where(Job.id.in_(ids)).options(*WITHOUT_DOCUMENTS)))
                                .scalars().all()) if ids else []
                    matched = set((await s.execute(wanted.with_only_columns(Job.id).where(Job.id.in_(
                        [j.id for j in jobs])))).scalars().all()) if jobs else set()
                    if woken:
                        fresh = (await s.execute(wanted.where(Job.create_time > newest - NEW_MARGIN)
                                                 .order_by(Job.create_time, Job.id).limit(MAX_NEW)
                                                 .options(*WITHOUT_DOCUMENTS))).scalars().all()
                        for job in fresh:
                            if job.id not in sent and job.id not in matched:
                                jobs.append(job)
                                matched.add(job.id)
                            sent[job.id] = job.create_time
                            newest = max(newest, job.create_time)
                        sent = {i: at for i, at in sent.items() if at > newest - NEW_MARGIN}
                now = timestamp(self.deps.now())
                for job in jobs:
                    kind = pb.JOB_EVENT_TYPE_STATUS_CHANGED if job.id in matched else pb.JOB_EVENT_TYPE_REMOVED
                    yield pb.JobEvent(type=kind, event_time=now, job=job_pb(job))

    async def queue_stats(self, caller: Principal, r: pb.GetQueueStatsRequest) -> AsyncGenerator[pb.QueueStats, None]:
        first = await self.queries.stats(caller, r)  # validates the request before the stream opens
        signals = self.deps.signals
        async with self.watchers.slot(_account(caller)) as slot, signals.subscribe(signals.changes_channel) as incoming:
            yield first
            last = time.monotonic()
            while True:
                try:
                    event = await asyncio.wait_for(incoming.get(), STATS_RECHECK_SECONDS)
                    _feed_lost(event)
                    pause = STATS_MIN_SECONDS - (time.monotonic() - last)
                    if pause > 0:
                        await asyncio.sleep(pause)
                    _drain(incoming)
                except TimeoutError:
                    pass
                await slot.keep()
                last = time.monotonic()
                yield await self.queries.stats(caller, r)


@contextlib.asynccontextmanager
async def _merged(signals: Any, channels: tuple[str, ...]) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Several channels' messages in one queue (each a subscription of the process's shared one)."""
    merged: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def forward(queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            merged.put_nowait(await queue.get())

    async with contextlib.AsyncExitStack() as stack:
        queues = [await stack.enter_async_context(signals.subscribe(c)) for c in channels]
        tasks = [asyncio.create_task(forward(q)) for q in queues]
        try:
            yield merged
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _gather(incoming: asyncio.Queue[dict[str, Any]], wait: float) -> tuple[list[uuid.UUID], bool]:
    """From the next message on, over `COALESCE_SECONDS`: the job ids announced, and whether a queue
    woke (new jobs may exist). Nothing after `wait` quiet seconds."""
    try:
        event = await asyncio.wait_for(incoming.get(), wait)
    except TimeoutError:
        return [], False
    _feed_lost(event)
    await asyncio.sleep(COALESCE_SECONDS)
    ids: set[str] = set()
    woken = False
    for one in [event, *_drain(incoming)]:
        if "ids" in one:
            ids.update(one["ids"])
        else:
            woken = True
    return [uuid.UUID(i) for i in ids if _is_uuid(i)], woken


def _drain(incoming: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not incoming.empty():
        event = incoming.get_nowait()
        _feed_lost(event)
        out.append(event)
    return out


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
