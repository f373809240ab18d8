"""JSON numbers cross protobuf's Struct as doubles; integral ones come back as ints (kit.protos), and
`struct_dict` reads a Struct as protobuf's json_format does."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from innosystem.jobs.v1 import jobs_pb2
from innosystem.kit.protos import struct_dict, whole_numbers
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


DOCS = [
    {},
    {"text": "x" * 70, "n": 12345},
    {"a": 1.0, "b": [2.0, 2.5, {"c": -3.0, "d": []}], "s": "1.0", "t": True, "f": False, "n": None, "z": -0.0},
    {"deep": {"er": {"still": [[1, [2, {"x": "y"}]], {}]}}, "big": 2.0**60, "edge": 2.0**53, "tiny": 1e-300},
    {"ключ": "значение", "emoji": "🙂", "": "empty key"},
]


@pytest.mark.parametrize("doc", DOCS)
def test_struct_dict_reads_a_struct_as_json_format_and_whole_numbers_do(doc: dict[str, Any]) -> None:
    s = struct_pb2.Struct()
    s.update(doc)
    got = struct_dict(s)
    assert got == whole_numbers(json_format.MessageToDict(s))
    assert [type(v) for v in _leaves(got)] == [type(v) for v in _leaves(whole_numbers(json_format.MessageToDict(s)))]


def test_struct_dict_takes_a_value_without_a_kind_as_null() -> None:
    s = struct_pb2.Struct()
    s.fields["unset"]
    assert struct_dict(s) == {"unset": None} == json_format.MessageToDict(s)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_struct_dict_refuses_what_json_cannot_hold_as_json_format_does(bad: float) -> None:
    s = struct_pb2.Struct()
    s.update({"ok": 1, "nested": {"list": [1, bad]}})
    with pytest.raises(ValueError):
        json_format.MessageToDict(s)
    with pytest.raises(ValueError, match="not a number JSON can hold"):
        struct_dict(s)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _leaves(value[k])]
    if isinstance(value, list):
        return [x for item in value for x in _leaves(item)]
    return [value]
