"""Reseller commission rates, asked of tenancy over gRPC (billing never reads tenancy's schema)."""

from __future__ import annotations

import time
import uuid

import grpc

from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc


class ResellerRates:
    """`await rates(reseller_id)` → commission_rate_bps, cached for `ttl` seconds."""

    def __init__(self, tenancy: grpc.aio.Channel, ttl: float = 30.0) -> None:
        self._stub = tenancy_pb2_grpc.TenancyServiceStub(tenancy)
        self._ttl = ttl
        self._cache: dict[uuid.UUID, tuple[float, int]] = {}

    async def __call__(self, reseller_id: uuid.UUID) -> int:
        now = time.monotonic()
        hit = self._cache.get(reseller_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        reseller = await self._stub.GetReseller(tenancy_pb2.GetResellerRequest(reseller_id=str(reseller_id)),
                                                timeout=5)
        rate = int(reseller.commission_rate_bps)
        self._cache[reseller_id] = (now + self._ttl, rate)
        return rate
