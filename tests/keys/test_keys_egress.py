"""Issue 14 item 5 in the keys service: customer-supplied key manager and webhook URLs go through
the egress guard. A keys service on a real gRPC server (real PostgreSQL and Valkey) whose operator
allow-listed one reference key manager port (a real process) and nothing else."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aiohttp import web

from innosystem.embedded import EmbeddedValkey, free_port
from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import access_logs_pb2_grpc, keys_pb2_grpc
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit import egress
from innosystem.kit import principal as principals
from innosystem.kit.errors import from_rpc_error
from innosystem.kit.server import build_server
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys.main import build, service
from tests.keys.conftest import SECRET, keys_config
from tests.keys.keymanager_process import KeyManagerProcess
from tests.support import signing
from tests.support.tiny_http import Served, serve


@contextlib.asynccontextmanager
async def keys_service(database_url: str, redis_url: str, allow: list[str]) -> AsyncIterator[grpc.aio.Channel]:
    config = keys_config(database_url, redis_url, "127.0.0.1:1",
                         egress_policy=egress.Policy(allow_hosts=egress.parse_allow_list(allow)))
    keys = build(config)
    server, _ = build_server(config.common, service(keys))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = signing.channel(f"127.0.0.1:{port}", SECRET)
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)
        await keys.close()


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    return caught.value


@pytest.fixture
async def landing() -> AsyncIterator[Served]:
    """Where a redirect would lead: it must never be reached."""
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})
    async with serve({"/{tail:.*}": ok}) as server:
        yield server


async def test_key_manager_endpoints_pass_the_egress_guard(database_url: str, valkey_server: EmbeddedValkey,
                                                           km: KeyManagerProcess, landing: Served) -> None:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(landing.url(request.path))

    async with serve({"/{tail:.*}": bounce}) as redirector, keys_service(
            database_url, valkey_server.url, [f"127.0.0.1:{km.grpc_port}", f"127.0.0.1:{redirector.port}"]) as ch:
        stub = keys_pb2_grpc.KeyManagementServiceStub(ch)
        customer_id = str(uuid.uuid4())
        me = signing.as_(Principal(kind=principals.CUSTOMER, customer_id=customer_id, key_id="ak_x"))

        def register(url: str) -> Any:
            return stub.CreateClientKey(pb.CreateClientKeyRequest(customer_id=customer_id, client_key=pb.ClientKey(
                endpoint_url=url, external_key_id="cmk-1", hmac_secrets=[km.secret])), metadata=me)

        # The same reference key manager, by routes the operator did not allow: refused at registration.
        for url, says in [(km.http_url, "http:// is allowed only"),
                          (f"https://127.0.0.1:{km.http_port}", "loopback address"),
                          (f"https://localhost:{km.http_port}", "localhost resolves to a loopback address"),
                          (f"grpcs://localhost:{km.grpc_port}", "resolves to a loopback address"),
                          ("https://169.254.169.254/latest", "cloud metadata")]:
            err = await refused(register(url))
            domain = from_rpc_error(err)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            assert domain.reason == "EGRESS_BLOCKED" and says in (err.details() or ""), (url, err.details())
            assert [f for f, _ in domain.violations] == ["client_key.endpoint_url"]

        # Allow-listed: works.
        key = await register(km.grpc_url)
        assert key.state == pb.ClientKeyState.CLIENT_KEY_STATE_ACTIVE

        # An allow-listed host that answers with a redirect (to the real key manager's HTTP binding
        # here; to 169.254.169.254 in an attack): not followed, the verification fails and says why.
        err = await refused(register(redirector.url()))
        assert from_rpc_error(err).reason == "KEY_VERIFICATION_FAILED"
        assert "EGRESS_REDIRECT" in (err.details() or "") and "302" in (err.details() or "")
        assert redirector.hits and not landing.hits

        # Rotation to a route the operator did not allow is refused the same way, naming its field.
        err = await refused(stub.RotateClientKey(pb.RotateClientKeyRequest(key_id=key.id, endpoint_url=km.http_url),
                                                 metadata=me))
        assert from_rpc_error(err).reason == "EGRESS_BLOCKED"
        assert [f for f, _ in from_rpc_error(err).violations] == ["endpoint_url"]

        # Webhooks too.
        logs = access_logs_pb2_grpc.AccessLoggingServiceStub(ch)
        err = await refused(logs.CreateNotificationChannel(alpb.CreateNotificationChannelRequest(
            customer_id=customer_id, notification_channel=alpb.NotificationChannel(
                webhook_url=landing.url("/hook"),
                triggers=[alpb.NotificationTrigger.NOTIFICATION_TRIGGER_KEY_CHANGE])), metadata=me))
        assert from_rpc_error(err).reason == "EGRESS_BLOCKED"
        assert [f for f, _ in from_rpc_error(err).violations] == ["notification_channel.webhook_url"]
