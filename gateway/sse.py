"""A server-streaming RPC as Server-Sent Events: one `data: <json>` event per message.

The HTTP status is decided by the first thing that happens: a message or a keepalive opens a
200 event stream; an error before that is an ordinary error response with its status code
(a watch on a missing job is a 404, not a 200 with an error inside). After the stream has
opened, a failure is an `event: error` whose data is the Status JSON. A client that leaves
cancels the gRPC call: the handler is cancelled (the server runs with handler cancellation)
or, at the latest, the next keepalive write fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from gateway.errors import GatewayError, from_rpc_error, status_json

log = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def data_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"  # compact JSON has no newline of its own


def error_event(status_payload: bytes) -> bytes:
    return b"event: error\n" + data_event(status_payload)


async def stream_events(
    request: web.Request,
    call: Any,  # grpc.aio.UnaryStreamCall
    *,
    upstream: str,
    render: Callable[[Message], bytes],
    keepalive: float,
    stopping: asyncio.Event,
    headers: dict[str, str],
) -> web.StreamResponse:
    response: web.StreamResponse | None = None

    async def opened() -> web.StreamResponse:
        nonlocal response
        if response is None:
            response = web.StreamResponse(status=200, headers={**HEADERS, **headers})
            await response.prepare(request)
        return response

    reading: asyncio.Future[Any] | None = None
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            if reading is None:
                reading = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({reading, stop}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                finished, reading = reading, None
                try:
                    message = finished.result()
                except grpc.aio.AioRpcError as exc:
                    failure = from_rpc_error(exc, upstream)
                    if response is None:
                        raise failure from None
                    await response.write(error_event(status_json(failure.status)))
                    break
                if message is grpc.aio.EOF:
                    break
                await (await opened()).write(data_event(render(message)))
            elif stop in done:
                # Draining: end the stream so the client reconnects to a gateway that stays.
                gone = GatewayError(grpc.StatusCode.UNAVAILABLE, "GATEWAY_STOPPING",
                                    "the gateway is shutting down; reconnect")
                if response is None:
                    raise gone
                await response.write(error_event(status_json(gone.status)))
                break
            else:
                await (await opened()).write(KEEPALIVE)
    except ConnectionResetError:  # the client left; the finally clause cancels the call
        log.debug("SSE client went away")
        return response or web.StreamResponse()
    finally:
        call.cancel()  # a no-op once the stream has ended; stops the upstream when the client left
        stop.cancel()
        if reading is not None:
            reading.cancel()
    final = await opened()
    try:
        await final.write_eof()
    except ConnectionResetError:  # the client hung up as soon as it had the last event
        log.debug("SSE client went away before the end of the stream")
    return final
