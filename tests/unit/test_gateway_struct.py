"""A JSON object read into a Struct field (a job's payload) by `Struct.update`, not json_format:
the message json_format makes, and a refusal naming the depth where json_format refuses it as
nested too deep."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pool, json_format, struct_pb2

from gateway.fields import MAX_DEPTH, FieldError, merge_object
from innosystem.jobs.v1 import jobs_pb2

PAYLOADS: list[Any] = [
    {},
    {"i": 123, "name": "job-12345", "tags": ["a", "b"], "nested": {"x": 1.5, "y": None, "z": True}},
    {"text": "été 🙂", "empty": {}, "list": [], "mixed": [None, False, 0, -0.0, "x", [1, [2]], {"a": None}]},
    {"big": 2**64, "small": -(2**70), "float": 1e300, "tiny": 5e-324},
]


def _nested(levels: int, kinds: str = "dl") -> dict[str, Any]:
    """A payload whose one field holds `levels` objects or arrays, one inside the other."""
    value: Any = 1
    for k in range(levels):
        value = {"a": value} if kinds[k % len(kinds)] == "d" else [value]
    return {"top": value}


def _by_json_format(payload: Any) -> bytes:
    s = struct_pb2.Struct()
    json_format.ParseDict(payload, s, max_recursion_depth=MAX_DEPTH)
    return s.SerializeToString(deterministic=True)


def _read(payload: Any) -> jobs_pb2.SubmitJobRequest:
    message = jobs_pb2.SubmitJobRequest()
    merge_object(message, {"payload": payload}, "", descriptor_pool.Default())
    return message


@pytest.mark.parametrize("payload", [*PAYLOADS, _nested(31), _nested(31, "d"), _nested(31, "l"), _nested(30, "ld")])
def test_a_payload_is_the_struct_json_format_makes(payload: Any) -> None:
    assert _read(payload).payload.SerializeToString(deterministic=True) == _by_json_format(payload)


@pytest.mark.parametrize("payload", [_nested(32), _nested(32, "d"), _nested(32, "l"), _nested(100)])
def test_a_payload_nested_deeper_than_json_format_takes_is_refused_naming_the_depth(payload: Any) -> None:
    with pytest.raises(json_format.ParseError):
        _by_json_format(payload)
    with pytest.raises(FieldError) as refused:
        _read(payload)
    assert (refused.value.field, refused.value.message) == ("payload", "payload: nested more than 32 levels deep")


def test_json_format_reads_no_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    parse = json_format.ParseDict

    def counting(value: Any, message: Any, **kwargs: Any) -> Any:
        calls.append(value)
        return parse(value, message, **kwargs)

    monkeypatch.setattr(json_format, "ParseDict", counting)
    for payload in [*PAYLOADS, _nested(31)]:
        _read(payload)
    with pytest.raises(FieldError):
        _read(_nested(32))
    assert calls == []
