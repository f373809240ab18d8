"""Platform-wide behaviour of the running stack: OpenAPI, unbuilt services, graceful drain."""

from __future__ import annotations

import signal

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from innosystem.kit.config import SERVICES
from innosystem.stack import Stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e


def _public_methods(repo_root) -> set[str]:
    fds = descriptor_pb2.FileDescriptorSet.FromString((repo_root / "innosystem/descriptors.binpb").read_bytes())
    out = set()
    for f in fds.file:
        if not f.package.startswith("innosystem."):
            continue
        for service in f.service:
            for method in service.method:
                if method.options.HasExtension(annotations_pb2.http):
                    out.add(f"{service.name}_{method.name}")
    return out


def test_openapi_lists_every_public_method_of_all_services(admin: Client, repo_root) -> None:
    doc = admin.as_key(None).get("/openapi.json")
    assert doc.status == 200
    operations = {op["operationId"] for path in doc.body["paths"].values() for op in path.values()
                  if isinstance(op, dict) and "operationId" in op}
    expected = _public_methods(repo_root)
    assert expected <= operations, sorted(expected - operations)
    packages = {op["tags"][0].split(".")[1] for path in doc.body["paths"].values() for op in path.values()
                if isinstance(op, dict) and op.get("tags")}
    assert set(SERVICES) <= packages, packages


def test_sigterm_drains_and_exits_cleanly(stack: Stack) -> None:
    """A service told to stop finishes cleanly (exit 0) and can be started again."""
    code = stack.stop_process("keys", signal.SIGTERM)
    assert code == 0
    stack.start(services=("keys",), gateway=False)
    stack.wait_ready(30)


async def test_direct_grpc_callers_are_authenticated(stack: Stack) -> None:
    """Internal gRPC callers: a forged principal is refused, an API key works, reflection and health answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from innosystem.kit import principal
    from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc
    from innosystem.tenancy.v1.tenancy_pb2 import Principal

    async with grpc.aio.insecure_channel(stack.address("tenancy")) as channel:
        stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
        forged = principal.sign(Principal(kind=principal.ADMIN), b"guessed secret",
                                "/innosystem.tenancy.v1.TenancyService/ListCustomers")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListCustomers(tenancy_pb2.ListCustomersRequest(), metadata=forged)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with pytest.raises(grpc.aio.AioRpcError) as err:  # Authenticate is internal: not for API keys
            await stub.Authenticate(tenancy_pb2.AuthenticateRequest(api_key=stack.admin_api_key),
                                    metadata=(("authorization", f"Bearer {stack.admin_api_key}"),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        me = await stub.GetMe(tenancy_pb2.GetMeRequest(),
                              metadata=(("authorization", f"Bearer {stack.admin_api_key}"),))
        assert me.principal.kind == principal.ADMIN

        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="innosystem.tenancy.v1.TenancyService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                list_services="")])):
            names = {s.name for s in answer.list_services_response.service}
            assert "innosystem.tenancy.v1.TenancyService" in names
            break


def test_every_process_serves_prometheus_metrics(stack: Stack, admin: Client) -> None:
    """Each service answers /metrics with its RPC durations (the readiness checks were RPCs), and
    the gateway with its requests by route template."""
    import urllib.request

    assert admin.get("/v1/resellers").status == 200

    for name in ("tenancy", "billing", "jobs", "runners", "keys"):
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert resp.status == 200
        assert "rpc_server_duration_seconds_count" in text, name
        assert 'rpc_method="/grpc.health.v1.Health/Check"' in text, name
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports['gateway']}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    listed = [line for line in text.splitlines() if line.startswith("innosystem_gateway_requests_total{")
              and 'http_route="/v1/resellers"' in line and 'http_response_status_code="200"' in line]
    assert listed, text[-2000:]
