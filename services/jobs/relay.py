"""The Relay stream, jobs side: a runners replica's LeaseJobs and CompleteJobs as messages.

A unary call costs each side about three times the CPU of a message on an open stream (a bare
grpc.aio exchange between two processes: 140 + 210 µs unary, 60 + 65 µs streamed), and at
moderate load a lease or a batch of results often carries one job. So each runners replica
keeps one stream open, and each message is answered exactly as the unary call would be: the
same use case, the same required-field check, an error as the same google.rpc.Status.

Each request runs as a task of its own (a lease may long-poll while results keep arriving) and
is answered under its id when done; one writer sends the answers, since a stream takes one write
at a time. When the stream ends, the requests still running are cancelled, as a unary call's
handler is when its caller goes away (a lease cancelled after its commit is never delivered and
expires like any lease of a lost runner).

A runners service in the same process (`innosystem serve jobs runners`) calls `answer` directly
instead (kit.inprocess): the same replies without the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.kit.errors import DOMAIN_SUFFIX, InvalidArgument
from innosystem.kit.server import error_status
from innosystem.kit.validation import check_required
from services.jobs.leases import Leases

DOMAIN = f"jobs{DOMAIN_SUFFIX}"
_SERVICE = "/innosystem.jobs.v1.JobService/"


async def answer(leases: Leases, message: pb.RelayRequest) -> pb.RelayReply:
    """One relay request's reply: what the unary call would have answered, an error as its Status."""
    reply = pb.RelayReply(id=message.id)
    kind = message.WhichOneof("kind")
    try:
        if kind == "lease":
            check_required(message.lease)
            reply.lease.leases.extend(await leases.lease(message.lease))
        elif kind == "complete":
            check_required(message.complete)
            reply.complete.results.extend(await leases.complete(list(message.complete.completions)))
        else:
            raise InvalidArgument("a relay request carries lease or complete", field="kind",
                                  reason="MALFORMED_MESSAGE")
    except Exception as exc:  # answered as the unary call would have been; the stream goes on
        method = _SERVICE + ("LeaseJobs" if kind == "lease" else "CompleteJobs")
        reply.error.CopyFrom(error_status(exc, method, DOMAIN))
    return reply


async def serve(leases: Leases, requests: AsyncIterator[pb.RelayRequest], context: grpc.aio.ServicerContext) -> None:
    replies: asyncio.Queue[pb.RelayReply | None] = asyncio.Queue()
    running: set[asyncio.Task[Any]] = set()

    async def one(message: pb.RelayRequest) -> None:
        replies.put_nowait(await answer(leases, message))

    async def write() -> None:
        while (reply := await replies.get()) is not None:
            await context.write(reply)

    writer = asyncio.create_task(write())
    try:
        async for message in requests:
            task = asyncio.create_task(one(message))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:  # the caller is done writing: what is under way is still answered
            await asyncio.wait(list(running))
        replies.put_nowait(None)
        await writer
    finally:
        for task in (*running, writer):
            task.cancel()
