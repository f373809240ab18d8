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
