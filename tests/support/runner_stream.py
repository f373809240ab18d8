"""A hand-driven runner stream (`RunnerService.Connect` over a plain gRPC stub), for tests that
need a runner misbehaving in ways the SDK never does: reading nothing, or watching exactly what
the service sends before it closes the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from innosystem.runners.v1 import runners_pb2 as pb
from innosystem.runners.v1 import runners_pb2_grpc


class RunnerStream:
    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self._out: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self.call = runners_pb2_grpc.RunnerServiceStub(self.channel).Connect(
            self._requests(), metadata=(("authorization", f"Bearer {token}"),))
        self._heartbeats: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[pb.ConnectRequest]:
        while (message := await self._out.get()) is not None:
            yield message

    def send(self, **kind: Any) -> None:
        self._out.put_nowait(pb.ConnectRequest(**kind))

    def hello(self, processors: list[str], slots: int = 1) -> None:
        self.send(hello=pb.Hello(processors=[pb.Processor(job_type_name=p) for p in processors],
                                 max_concurrent_jobs=slots, free_slots=slots, version="test", hostname="test"))

    def keep_alive(self, every: float) -> None:
        """Heartbeats from now on (without reading anything): the service must not take the runner
        for lost, only for not reading."""
        async def beat() -> None:
            while True:
                self.send(heartbeat=pb.Heartbeat())
                await asyncio.sleep(every)

        self._heartbeats = asyncio.create_task(beat())

    async def read(self, seconds: float = 10) -> pb.ConnectResponse:
        message = await asyncio.wait_for(self.call.read(), seconds)
        assert message is not grpc.aio.EOF, "the stream ended"
        return message

    async def read_to_end(self, seconds: float = 30) -> list[pb.ConnectResponse]:
        """Every message until the stream ends (an error status raises AioRpcError)."""
        messages = []
        while (message := await asyncio.wait_for(self.call.read(), seconds)) is not grpc.aio.EOF:
            messages.append(message)
        return messages

    async def stop_heartbeats(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
            self._heartbeats = None

    async def close(self) -> None:
        await self.stop_heartbeats()
        self._out.put_nowait(None)
        self.call.cancel()
        await self.channel.close()
