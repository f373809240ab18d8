"""The request log's level: failures and slow calls at INFO, the rest at DEBUG; a long poll is
slow only past the wait it asked for. Where no span is recorded, the request context continues
the caller's trace itself."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import logs, server


class Context:
    def invocation_metadata(self) -> list[tuple[str, str]]:
        return []

    def time_remaining(self) -> float | None:
        return None

    def code(self) -> Any:
        return None


@pytest.mark.parametrize(("request_message", "elapsed", "logged"), [
    (None, 0.1, False),
    (None, 1.5, True),
    (jobs_pb2.LeaseJobsRequest(wait_ms=20_000), 20.2, False),  # waited as asked: not slow
    (jobs_pb2.LeaseJobsRequest(wait_ms=20_000), 21.5, True),
    (jobs_pb2.LeaseJobsRequest(), 1.5, True),
])
async def test_slow_calls_are_logged_and_long_polls_only_past_their_wait(
        request_message: Any, elapsed: float, logged: bool, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0 + elapsed])
    monkeypatch.setattr(server.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger=server.log.name):
        async with server._request_context(None)("/svc/Method", request_message, Context()):  # type: ignore[arg-type]
            pass
    assert any(r.getMessage() == "rpc finished" for r in caplog.records) == logged


class TracedContext(Context):
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata


CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


async def test_where_no_span_is_recorded_an_rpc_still_continues_the_callers_trace() -> None:
    """No OpenTelemetry interceptor in front (nothing records spans): the request context step
    opens the RPC's span itself, so the caller's trace id reaches the logs and the next hop."""
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    caller = TracedContext([("x-request-id", "r-1"), ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")])
    async with server._request_context(tracer)("/svc/Method", None, caller):  # type: ignore[arg-type]
        assert logs.current_trace_id() == CALLER_TRACE
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # what a downstream call or a submitted job carries
        _, trace_id, span_id, _ = carrier["traceparent"].split("-")
        assert trace_id == CALLER_TRACE and span_id != CALLER_SPAN  # a child of the caller's span
    assert logs.current_trace_id() == ""  # the span ends with the call

    async with server._request_context(tracer)("/svc/Method", None, TracedContext([])):  # type: ignore[arg-type]
        own = logs.current_trace_id()
    assert len(own) == 32 and own != CALLER_TRACE  # no caller's trace: one of its own
