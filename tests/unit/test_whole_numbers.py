"""JSON numbers cross protobuf's Struct as doubles; integral ones come back as ints (kit.protos)."""

from __future__ import annotations

from google.protobuf import struct_pb2

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit.protos import whole_numbers
from innosystem.runner.processors import Job


def test_integral_floats_become_ints_at_every_depth_and_nothing_else_changes() -> None:
    doc = {"a": 1.0, "b": [2.0, 2.5, {"c": -3.0}], "s": "1.0", "t": True, "n": None, "z": 0.0}
    assert whole_numbers(doc) == {"a": 1, "b": [2, 2.5, {"c": -3}], "s": "1.0", "t": True, "n": None, "z": 0}
    assert [type(v) for v in (doc["a"], doc["b"][0], doc["b"][2]["c"], doc["z"])] == [int] * 4  # type: ignore[index]
    assert type(doc["b"][1]) is float  # type: ignore[index]
    assert whole_numbers(4.0) == 4 and type(whole_numbers(4.0)) is int


def test_beyond_what_a_double_holds_exactly_a_float_stays_a_float() -> None:
    assert type(whole_numbers(2.0**53)) is int
    assert type(whole_numbers(2.0**60)) is float  # not an integer anyone sent exactly
    assert type(whole_numbers(float("inf"))) is float


def test_a_processor_gets_the_ints_its_job_was_submitted_with() -> None:
    payload = struct_pb2.Struct()
    payload.update({"count": 3, "ratio": 0.5})
    job = Job(jobs_pb2.JobLease(job_id="j", lease_id="l", payload=payload))
    assert job.payload == {"count": 3, "ratio": 0.5}
    assert type(job.payload["count"]) is int and list(range(job.payload["count"])) == [0, 1, 2]
