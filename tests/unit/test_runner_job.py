"""The runner's per-job objects: a job's cancel event made on first use (one per job, whichever
thread asks first), and attempt results filled in place equal to those built apart and copied in."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from google.protobuf import struct_pb2

from innosystem.jobs.v1 import jobs_pb2
from innosystem.runner import Job, Result
from innosystem.runner.client import _success

Outcome = jobs_pb2.AttemptOutcome


def test_a_jobs_cancel_event_is_one_whichever_thread_asks_first() -> None:
    lease = jobs_pb2.JobLease(job_id="j1", lease_id="l1")
    lease.payload.update({"n": 1})
    for _ in range(20):
        job = Job(lease)
        seen: list[threading.Event] = []
        start = threading.Barrier(8)

        def ask(job: Job = job, seen: list[threading.Event] = seen, start: threading.Barrier = start) -> None:
            start.wait()
            seen.append(job.cancelled)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(e) for e in seen}) == 1
        job.cancelled.set()
        assert all(e.is_set() for e in seen)
    assert Job(lease).payload == {"n": 1} and not Job(lease).cancelled.is_set()


def _built_apart(value: Any) -> jobs_pb2.AttemptResult:
    """What the runner sent before: each Struct built on its own, then copied into the result."""
    def struct(v: dict[str, Any] | None) -> struct_pb2.Struct:
        out = struct_pb2.Struct()
        if v:
            out.update(v)
        return out

    result = jobs_pb2.AttemptResult(outcome=Outcome.ATTEMPT_OUTCOME_SUCCEEDED)
    if isinstance(value, Result):
        result.result.CopyFrom(struct(value.result))
        if value.cost_cents is not None:
            result.actual_cost_cents = int(value.cost_cents)
        if value.units is not None:
            result.units = int(value.units)
        if value.details:
            result.details.CopyFrom(struct(value.details))
    elif isinstance(value, dict):
        result.result.CopyFrom(struct(value))
    elif value is not None:
        result.result.CopyFrom(struct({"value": value}))
    return result


@pytest.mark.parametrize("value", [
    None, {}, {"a": 1, "b": [1, "two", None, {"c": True}], "d": {}}, 7, "text", [1, 2],
    Result(), Result(result={"x": 1.5}, details={"why": "because"}, cost_cents=3, units=2),
    Result(result={}, details={}, cost_cents=0),
])
def test_a_success_is_filled_in_place_as_it_was_built_apart(value: Any) -> None:
    filled, apart = _success(value), _built_apart(value)
    assert filled == apart
    assert filled.SerializeToString(deterministic=True) == apart.SerializeToString(deterministic=True)
    assert filled.HasField("result") == apart.HasField("result")
    assert filled.HasField("details") == apart.HasField("details")


def test_a_value_a_struct_cannot_hold_is_refused_as_before() -> None:
    with pytest.raises(ValueError):
        _success({"when": object()})
    with pytest.raises(ValueError):
        _built_apart({"when": object()})
