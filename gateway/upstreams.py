"""One long-lived gRPC channel per upstream service, and their health."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from innosystem.kit import telemetry
from innosystem.kit.clients import CHANNEL_OPTIONS
from innosystem.kit.config import Addresses


class Upstreams:
    """Channels opened once at start. They carry no credentials of their own: each call says
    who the caller is (a user's signed principal, or nobody), so an anonymous request can never
    ride on the gateway's identity."""

    def __init__(self, addresses: Addresses, names: Iterable[str]) -> None:
        # Where spans are recorded, OpenTelemetry's interceptors make each call a CLIENT span;
        # elsewhere the proxy adds the trace context to each call's metadata itself (grpc.aio
        # runs an intercepted call's interceptors in a task of their own).
        self.traced = telemetry.spans_recorded()
        self._channels = {
            name: grpc.aio.insecure_channel(addresses.of(name), options=CHANNEL_OPTIONS,
                                            interceptors=aio_client_interceptors() if self.traced else None)
            for name in sorted(set(names))
        }

    @property
    def names(self) -> list[str]:
        return list(self._channels)

    def channel(self, name: str) -> grpc.aio.Channel:
        return self._channels[name]

    async def health(self, deadline: float) -> dict[str, str]:
        """Each upstream's grpc.health.v1 status for the whole server, or the call's error code."""
        async def check(channel: grpc.aio.Channel) -> str:
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                        timeout=deadline)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

        results = await asyncio.gather(*(check(c) for c in self._channels.values()))
        return dict(zip(self._channels, results, strict=True))

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(*(c.close(grace) for c in self._channels.values()))
