"""A completion as the jobs service receives it (`leases._Item.of`): its result stored as compact
JSON in UTF-8 and measured as such against the result limit."""

from __future__ import annotations

import json

from google.protobuf import struct_pb2

from innosystem.jobs.v1 import jobs_pb2 as pb
from services.jobs.leases import _Item


def _completion(result: dict[str, object]) -> pb.JobCompletion:
    s = struct_pb2.Struct()
    s.update(result)
    return pb.JobCompletion(job_id="j", lease_id="l", result=pb.AttemptResult(
        outcome=pb.ATTEMPT_OUTCOME_SUCCEEDED, result=s))


def test_a_result_is_measured_as_the_utf8_it_is_stored_as() -> None:
    result = {"text": "é" * 10}  # 31 bytes as stored; 71 with every é written as \\u00e9
    it = _Item.of(_completion(result), max_result_bytes=40)
    assert it.outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED and it.text == '{"text":"éééééééééé"}'
    refused = _Item.of(_completion(result), max_result_bytes=30)
    assert refused.outcome == pb.ATTEMPT_OUTCOME_FAILED
    assert refused.error is not None and refused.error["type"] == "RESULT_TOO_LARGE"
    assert "31 bytes" in refused.error["message"]


def test_a_whole_number_beyond_64_bits_is_stored_as_the_json_module_writes_it() -> None:
    it = _Item.of(_completion({"n": 1e20, "x": 0.5}), max_result_bytes=1000)
    assert it.text is not None and json.loads(it.text) == {"n": 10**20, "x": 0.5}
