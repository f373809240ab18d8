"""Server-streaming RPCs as Server-Sent Events, against the sample service's `Watch`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from gateway.app import GATEWAY
from tests.gateway.conftest import config_for, serving
from tests.gateway.doubles import ADMIN_KEY, Recorder

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

# How long a test waits for something that must happen; never asserted as a duration.
PATIENCE = 10.0


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next event as (type, parsed data); comment lines (keepalives) are skipped."""
    kind, data = "message", []
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), PATIENCE)).decode()
        assert line, "the stream ended before an event"
        line = line.rstrip("\n")
        if line == "" and data:
            return kind, json.loads("\n".join(data))
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))


async def test_each_message_is_a_data_event(client: TestClient, recorder: Recorder) -> None:
    recorder.release.set()  # the stream ends after its messages
    resp = await client.get("/v1/samples/s1:watch?count=3", headers={**ADMIN, "X-Request-Id": "watch-1"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Request-Id"] == "watch-1"
    text = await asyncio.wait_for(resp.text(), PATIENCE)
    events = [json.loads(line.removeprefix("data: ")) for line in text.split("\n") if line.startswith("data: ")]
    assert [(e["id"], e["count"]) for e in events] == [("s1", 0), ("s1", 1), ("s1", 2)]
    assert "event: error" not in text
    assert events[0]["big"] == "0" and events[0]["tags"] == []  # proto3 JSON with defaults, as for unary


async def test_an_error_before_any_message_is_a_plain_http_error(client: TestClient) -> None:
    resp = await client.get("/v1/samples/fail-now:watch", headers=ADMIN)
    assert resp.status == 404 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["code"] == 5 and body["details"][0]["reason"] == "SAMPLE_NOT_FOUND"


async def test_an_error_mid_stream_is_an_error_event_with_the_status(client: TestClient) -> None:
    resp = await client.get("/v1/samples/fail-later:watch", headers=ADMIN)
    assert resp.status == 200
    assert (await next_event(resp))[1]["id"] == "fail-later"
    kind, status = await next_event(resp)
    assert kind == "error"
    assert status["code"] == 9 and status["message"] == "sample broke"
    assert status["details"][0]["reason"] == "SAMPLE_BROKEN"
    assert await asyncio.wait_for(resp.content.read(), PATIENCE) == b""  # and the stream ends


async def test_keepalive_comments_while_the_stream_is_quiet(upstream_port: int, sample_set_path: Path) -> None:
    async with serving(config_for(upstream_port, sample_set_path, sse_keepalive_seconds=0.05)) as c:
        resp = await c.get("/v1/samples/s1:watch", headers=ADMIN)
        await next_event(resp)
        lines = [await asyncio.wait_for(resp.content.readline(), PATIENCE) for _ in range(4)]
        assert b": keepalive\n" in lines
        resp.close()


async def test_a_client_that_leaves_cancels_the_grpc_call(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/samples/s1:watch", headers=ADMIN)
    await next_event(resp)
    assert not recorder.stream_cancelled.is_set()
    resp.close()
    await asyncio.wait_for(recorder.stream_cancelled.wait(), PATIENCE)


async def test_a_stopping_gateway_ends_its_streams(client: TestClient, recorder: Recorder) -> None:
    resp = await client.get("/v1/samples/s1:watch", headers=ADMIN)
    await next_event(resp)
    client.app[GATEWAY].stopping.set()  # what on_shutdown does
    kind, status = await next_event(resp)
    assert kind == "error" and status["details"][0]["reason"] == "GATEWAY_STOPPING" and status["code"] == 14
    await asyncio.wait_for(recorder.stream_cancelled.wait(), PATIENCE)


async def test_streams_have_their_own_deadline(upstream_port: int, sample_set_path: Path) -> None:
    async with serving(config_for(upstream_port, sample_set_path, stream_deadline_seconds=0.3,
                                  deadline_seconds=0.01)) as c:
        resp = await c.get("/v1/samples/s1:watch", headers=ADMIN)
        assert (await next_event(resp))[0] == "message"  # the unary deadline does not apply
        kind, status = await next_event(resp)
        assert kind == "error" and status["code"] == 4
