"""`gateway.main.serve`: a real listening socket, SIGTERM, and draining of in-flight requests."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.main import serve
from tests.gateway.conftest import config_for
from tests.gateway.doubles import ADMIN_KEY, Recorder, free_port

PATIENCE = 10.0


async def test_sigterm_lets_in_flight_requests_finish_then_stops(upstream_port: int, sample_set_path: Path,
                                                                 recorder: Recorder) -> None:
    port = free_port()
    config = config_for(upstream_port, sample_set_path, port=port, grace_seconds=5.0)
    server = asyncio.create_task(serve(config))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{base}/healthz") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        in_flight = asyncio.create_task(session.get(f"{base}/v1/customers/slow-0.5",
                                                    headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
        await asyncio.wait_for(recorder.arrived("GetCustomer").wait(), PATIENCE)
        os.kill(os.getpid(), signal.SIGTERM)
        resp = await asyncio.wait_for(in_flight, PATIENCE)
        assert resp.status == 200 and (await resp.json())["id"] == "slow-0.5"
        await asyncio.wait_for(server, PATIENCE)  # serve() returned: stopped cleanly
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectionError):
            await fresh.get(f"{base}/healthz")
