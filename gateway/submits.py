"""Concurrent single submits of one caller to one project, sent upstream as one BatchSubmitJobs.

A client that submits one job per request (webhooks, web apps, cron scripts) is the common case,
and under load most of a single submit's cost upstream is the call itself: the jobs service's
gRPC handling, authentication and request context, its read of the project and the job types,
and the gateway's own client call. So while a caller's submit to a project is on its way, the
next ones of the same caller and project wait and then go together, as one BatchSubmitJobs call
(`innosystem.kit.coalescing`, as the jobs service groups single submits into one commit). At
idle a submit goes straight through as the SubmitJob it is; nothing waits for a batch to fill.

Each caller still gets the answer its own SubmitJob would have had:
- A batch is stored all or nothing, and refused before anything is held (docs/jobs.md). When
  it is refused for a reason that is certain to have changed nothing (an invalid item, an
  insufficient balance, a request id reused, …), each of its submits is sent again alone, and
  each gets its own answer, naming its own field.
- Any other failure (unavailable, a deadline) may have come after the commit: each submit gets
  that error, as its own call would have, and no job is submitted twice.
- Each item carries its own request's trace context, so each job's trace is its request's.
- Only a caller's own submits go together: lanes are per principal and project, so one tenant's
  item never shares a call with another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from innosystem.kit.coalescing import Lanes
from innosystem.kit.errors import UNCHANGED_REFUSALS

SUBMIT = "/innosystem.jobs.v1.JobService/SubmitJob"
BATCH = "/innosystem.jobs.v1.JobService/BatchSubmitJobs"
MAX_ITEMS = 100  # submits in one upstream call
MAX_ITEM_BYTES = 16 * 1024  # a larger submit goes alone (a batch stays far below gRPC's message limit)
IN_FLIGHT = 2  # upstream calls of one lane at once: a batch gathers while the previous ones run
# … the second only beside a call of fewer submits than this (a burst then goes in fewer, larger
# calls: 0.74 to 0.76 against 0.89 to 0.94 ms of CPU per gateway single, docs/performance.md)
OVERLAP_BELOW = 4
MAX_LANES = 10_000  # idle lanes beyond this many are forgotten, oldest first
# A refusal that is certain to have changed nothing: each submit is asked again alone. (UNIMPLEMENTED:
# a jobs service without BatchSubmitJobs, as during a rolling upgrade from a version before it.)
_REFUSALS = UNCHANGED_REFUSALS | {grpc.StatusCode.UNIMPLEMENTED}

Metadata = list[tuple[str, Any]]


@dataclass(frozen=True)
class Submit:
    message: Any  # the SubmitJobRequest (a class of the gateway's descriptor pool)
    metadata: Metadata  # its own call's (signed for SubmitJob, its request id and trace)
    trace_context: dict[str, str]  # the request's trace, carried by its item in a batch
    batch_metadata: Callable[[], Metadata]  # the same caller's, signed for BatchSubmitJobs


class Submits:
    def __init__(self, single: Any, batch: Any, batch_request: type[Message], timeout: float) -> None:
        self._single, self._batch, self._batch_request, self._timeout = single, batch, batch_request, timeout
        self._lanes: Lanes[tuple[bytes, str], Submit, Message] = Lanes(
            self._send, MAX_LANES, max_batch=MAX_ITEMS, concurrency=IN_FLIGHT, overlap_below=OVERLAP_BELOW)

    async def submit(self, caller: bytes, item: Submit) -> Message:
        """The Job the jobs service answers for this submit (or its call's error)."""
        if item.message.ByteSize() > MAX_ITEM_BYTES:
            return await self._alone(item)
        return await self._lanes((caller, str(item.message.project_id))).submit(item)

    async def _alone(self, item: Submit) -> Message:
        answer: Message = await self._single(item.message, timeout=self._timeout, metadata=item.metadata)
        return answer

    async def _send(self, items: Sequence[Submit]) -> Sequence[Message | BaseException]:
        if len(items) == 1:
            return [await self._alone(items[0])]
        request: Any = self._batch_request()
        request.project_id = items[0].message.project_id
        requests = request.requests
        for item in items:
            entry = requests.add()
            entry.CopyFrom(item.message)
            if not entry.trace_context:
                entry.trace_context.update(item.trace_context)
        try:
            answer = await self._batch(request, timeout=self._timeout, metadata=items[0].batch_metadata())
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _REFUSALS:
                return [exc] * len(items)  # perhaps stored: nothing is sent again
            return await self._each_alone(items)
        jobs = list(answer.jobs)
        if len(jobs) != len(items):  # never from a jobs service that answers every item
            return [RuntimeError(f"a batch of {len(items)} submits was answered with {len(jobs)} jobs")] * len(items)
        return jobs

    async def _each_alone(self, items: Sequence[Submit]) -> list[Message | BaseException]:
        # at once: the jobs service groups them into one commit again, each answered on its own
        return list(await asyncio.gather(*(self._alone(item) for item in items), return_exceptions=True))
