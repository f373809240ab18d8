"""Internal clients against a live gRPC peer (a TenancyService test double): the API-key
authenticator, and deadline propagation through signed channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from innosystem.embedded import free_port
from innosystem.kit import principal as principals
from innosystem.kit.clients import ApiKeyAuthenticator
from innosystem.kit.errors import Unauthenticated, Unavailable
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc


class CountingTenancy(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def Authenticate(self, request: tenancy_pb2.AuthenticateRequest,
                           context: grpc.aio.ServicerContext) -> tenancy_pb2.Principal:
        self.calls += 1
        await asyncio.sleep(0.05)  # long enough for concurrent lookups to overlap
        if request.api_key != "isk_good_key_0123456789":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown key")
        return tenancy_pb2.Principal(kind=principals.CUSTOMER, customer_id="c1")


@pytest.fixture
async def tenancy() -> tuple[CountingTenancy, str]:
    servicer = CountingTenancy()
    server = grpc.aio.server()
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    yield servicer, address
    await server.stop(None)


async def test_concurrent_lookups_share_one_call_and_cache(tenancy: tuple[CountingTenancy, str]) -> None:
    servicer, address = tenancy
    async with grpc.aio.insecure_channel(address) as channel:
        auth = ApiKeyAuthenticator(channel, ttl=60)
        answers = await asyncio.gather(*(auth("isk_good_key_0123456789") for _ in range(20)))
        assert {a.customer_id for a in answers} == {"c1"}
        assert servicer.calls == 1
        await auth("isk_good_key_0123456789")
        assert servicer.calls == 1  # served from the cache


async def test_rejections_are_cached_and_shared(tenancy: tuple[CountingTenancy, str]) -> None:
    servicer, address = tenancy
    async with grpc.aio.insecure_channel(address) as channel:
        auth = ApiKeyAuthenticator(channel, negative_ttl=60)
        results = await asyncio.gather(*(auth("isk_bad_key_0123456789") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results)
        with pytest.raises(Unauthenticated):
            await auth("isk_bad_key_0123456789")
        assert servicer.calls == 1


async def test_tenancy_down_is_unavailable_and_not_cached() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        auth = ApiKeyAuthenticator(channel)
        with pytest.raises(Unavailable):
            await auth("isk_good_key_0123456789")
        assert not auth._cache


async def test_downstream_calls_inherit_the_served_rpcs_deadline(tenancy: tuple[CountingTenancy, str]) -> None:
    """A call made while serving an RPC cannot outlive that RPC's deadline, even without a timeout."""
    import time

    from innosystem.kit import logs
    from innosystem.kit.clients import channel

    _, address = tenancy
    async with channel(address, service="jobs", secret=b"s" * 32) as ch:
        stub = tenancy_pb2_grpc.TenancyServiceStub(ch)
        token = logs.deadline.set(time.monotonic() + 0.01)  # the served RPC has 10 ms left
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Authenticate(tenancy_pb2.AuthenticateRequest(api_key="isk_good_key_0123456789"))
        finally:
            logs.deadline.reset(token)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answer = await stub.Authenticate(tenancy_pb2.AuthenticateRequest(api_key="isk_good_key_0123456789"))
        assert answer.customer_id == "c1"  # outside a served RPC: no inherited deadline


async def test_every_call_kind_is_signed() -> None:
    """Streaming calls carry the signed principal too (grpc.aio files an interceptor under one kind)."""
    from innosystem.kit.clients import channel

    secret = b"s" * 32

    def caller(context: grpc.aio.ServicerContext, method: str) -> bytes:
        # each kind's principal is signed for its own method path
        found = principals.verify(list(context.invocation_metadata() or ()), secret, f"/test.Kinds/{method}")
        return (found.service if found is not None else "nobody").encode()

    async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield caller(context, "US")

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield caller(context, "SS")

    async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            pass
        return caller(context, "SU")

    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return caller(context, "UU")

    handlers = {"UU": grpc.unary_unary_rpc_method_handler(unary_unary),
                "US": grpc.unary_stream_rpc_method_handler(unary_stream),
                "SU": grpc.stream_unary_rpc_method_handler(stream_unary),
                "SS": grpc.stream_stream_rpc_method_handler(stream_stream)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Kinds", handlers)])
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with channel(address, service="runners", secret=secret) as ch:
            assert await ch.unary_unary("/test.Kinds/UU")(b"x") == b"runners"
            assert [m async for m in ch.unary_stream("/test.Kinds/US")(b"x")] == [b"runners"]
            assert await ch.stream_unary("/test.Kinds/SU")(iter([b"x"])) == b"runners"
            assert [m async for m in ch.stream_stream("/test.Kinds/SS")(iter([b"x"]))] == [b"runners"]
    finally:
        await server.stop(None)
