"""`convert.add_jobs` (a batch submit's answer) gives exactly what `job_pb` gives for each job,
while building one message per shape of job and copying it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs import convert
from services.jobs.convert import add_jobs, job_pb
from services.jobs.models import Job, NewJob

NOW = datetime(2026, 12, 6, 7, 30, tzinfo=UTC)
TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
ECHO = {"timeout_seconds": 300, "price": {"id": "price-echo"}}
SLOW = {"timeout_seconds": 30, "price": {"id": "price-slow"}}
ECHO_TYPE, SLOW_TYPE = uuid.uuid4(), uuid.uuid4()
CUSTOMER, PROJECT = uuid.uuid4(), uuid.uuid4()


def new(**changes: Any) -> NewJob:
    values: dict[str, Any] = dict(
        id=uuid.uuid4(), customer_id=CUSTOMER, project_id=PROJECT, reseller_id=None, job_type_id=ECHO_TYPE,
        job_type_name="echo", queue_name="q:echo", status=1, priority=2, retry_max_attempts=3,
        retry_initial_interval_seconds=1, retry_backoff_multiplier=2.0, retry_max_interval_seconds=60,
        non_retryable_error_types=["Fatal"], persistence_policy=1, settings=ECHO, payload={"n": 1}, result=None,
        error="", error_type="", runner_id="", attempt_count=0, next_attempt_time=None, cost_cents=0,
        estimated_cost_cents=10, currency_code="USD", hold_id="h", hold_expire_time=NOW, retry_count=0,
        create_time=NOW, schedule_time=None, queue_time=NOW, update_time=NOW, request_id="", cancel_requested=False,
        cancel_reason="", lease_session_id="", dead_lettered=False, encryption=None, trace_context=dict(TRACE),
        purged=False)  # as a submit builds them: a type's settings shared, a list and a trace context of its own
    values.update(changes)
    return NewJob(**values)


def _added(jobs: list[Job | NewJob]) -> list[pb.Job]:
    answer = pb.BatchSubmitJobsResponse()
    add_jobs(answer.jobs, jobs)
    return list(answer.jobs)


def test_each_job_is_answered_as_job_pb_answers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    later = NOW + timedelta(hours=1)
    jobs: list[Job | NewJob] = [
        new(), new(payload={"n": 2}, hold_id="other", queue_time=None),  # differ only where nothing shows
        new(request_id="req-1"), new(request_id="req-2"), new(),
        new(priority=3), new(job_type_id=SLOW_TYPE, job_type_name="slow", settings=SLOW, estimated_cost_cents=25),
        new(status=6, schedule_time=later, next_attempt_time=later),
        new(status=6, schedule_time=later + timedelta(1), next_attempt_time=later),  # only its schedule differs
        new(encryption={"key_id": "ck-1", "encrypted_fields": ["payload.secret"]}),
        new(encryption={"key_id": "ck-2", "encrypted_fields": []}),
        new(trace_context={"traceparent": "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
        new(settings={"timeout_seconds": 300, "price": {"id": "price-echo-v2"}}),
        new(create_time=NOW + timedelta(seconds=1)),
        Job(id=uuid.uuid4(), customer_id=CUSTOMER, project_id=PROJECT, job_type_id=ECHO_TYPE, job_type_name="echo",
            status=3, priority=2, retry_max_attempts=3, retry_initial_interval_seconds=1,
            retry_backoff_multiplier=2.0, retry_max_interval_seconds=60, non_retryable_error_types=[],
            persistence_policy=1, settings=ECHO, error="", error_type="", runner_id="r", attempt_count=1,
            cost_cents=10, estimated_cost_cents=10, currency_code="USD", create_time=NOW, update_time=NOW,
            complete_time=NOW, request_id="req-old", cancel_requested=False, dead_lettered=False,
            trace_context=TRACE),  # a stored job (an idempotent repeat) among new ones
        new(),
    ]
    built: list[Job | NewJob] = []

    def counted(job: Job | NewJob) -> Any:
        built.append(job)
        return job_pb(job)

    monkeypatch.setattr(convert, "job_pb", counted)
    got = _added(jobs)
    monkeypatch.undo()
    assert got == [job_pb(j) for j in jobs]
    assert len(built) == len(jobs) - 5  # jobs 1 to 4 and the last share the first's shape
    assert len({m.id for m in got}) == len(jobs)
    assert [m.request_id for m in got[2:4]] == ["req-1", "req-2"] and got[4].request_id == ""
    assert got[6].price_id == "price-slow" and got[12].price_id == "price-echo-v2"
    assert got[7].schedule_time != got[8].schedule_time


def test_a_copy_is_a_message_of_its_own() -> None:
    first, second = _added([new(), new()])
    second.error = "changed"
    assert first.error == "" and first.id != second.id
