"""Gateway fixtures: the packaged descriptor set (+ the sample service), a real upstream gRPC
server with test doubles, and the gateway app on a real aiohttp test server."""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import GatewayConfig
from innosystem.kit.config import SERVICES, Addresses
from tests.gateway.doubles import SECRET, Recorder, start_upstream, with_sample


@pytest.fixture(scope="session")
def descriptor_set() -> bytes:
    return importlib.resources.files("innosystem").joinpath("descriptors.binpb").read_bytes()


@pytest.fixture(scope="session")
def sample_set(descriptor_set: bytes) -> bytes:
    return with_sample(descriptor_set)


@pytest.fixture(scope="session")
def sample_set_path(sample_set: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("descriptors") / "with_sample.binpb"
    path.write_bytes(sample_set)
    return path


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def upstream_port(recorder: Recorder, sample_set: bytes) -> AsyncIterator[int]:
    server, port = await start_upstream(recorder, sample_set)
    yield port
    await server.stop(0)


def config_for(upstream_port: int, descriptors: Path, **overrides: Any) -> GatewayConfig:
    """Every upstream at `upstream_port` (the test server answers health for all of them)."""
    base = GatewayConfig(
        internal_secret=SECRET,
        addresses=Addresses(**{name: f"127.0.0.1:{upstream_port}" for name in SERVICES}),
        deadline_seconds=2.0,
        sse_keepalive_seconds=5.0,
        max_body_bytes=16 * 1024,
        descriptor_set_path=descriptors,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def serving(config: GatewayConfig) -> AsyncIterator[TestClient]:
    # handler_cancellation as in gateway.main: a client that leaves cancels its gRPC call.
    async with TestClient(TestServer(create_app(config), handler_cancellation=True)) as client:
        yield client


@pytest.fixture
async def client(upstream_port: int, sample_set_path: Path) -> AsyncIterator[TestClient]:
    async with serving(config_for(upstream_port, sample_set_path)) as c:
        yield c
