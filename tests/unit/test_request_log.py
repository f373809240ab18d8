"""The request log's level: failures and slow calls at INFO, the rest at DEBUG; a long poll is
slow only past the wait it asked for."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit import server


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
        async with server._request_context("/svc/Method", request_message, Context()):  # type: ignore[arg-type]
            pass
    assert any(r.getMessage() == "rpc finished" for r in caplog.records) == logged
