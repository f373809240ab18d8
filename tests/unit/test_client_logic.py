"""The client SDK's pure parts: retry delays and Retry-After, the SSE parser, batching, and the
local access-log chain check, which must agree with the keys service's own (services/keys/chain.py)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from google.protobuf import json_format

from innosystem.client import ApiError, Client, RetryPolicy
from innosystem.client.accesslog import GENESIS, verify
from innosystem.client.config import Settings
from innosystem.client.retry import retry_after
from innosystem.client.sse import Parser
from innosystem.client.wire import batches
from innosystem.keys.v1 import access_logs_pb2 as pb
from services.keys.chain import record_hash


def test_backoff_grows_to_its_maximum_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial=1.0, maximum=4.0)
    assert all(0 <= policy.delay(1) <= 1.0 for _ in range(50))
    assert all(0 <= policy.delay(10) <= 4.0 for _ in range(50))
    assert policy.delay(1, retry_after=3.0) == 3.0 and policy.delay(1, retry_after=60.0) == 4.0
    assert retry_after("2") == 2.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_a_429_is_sent_again_and_a_refusal_is_an_error_with_its_reason() -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "0"}, json={"code": 8, "message": "slow down"}),
               httpx.Response(200, json={"principal": {"kind": "PRINCIPAL_KIND_ADMIN"}})]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    with Client("http://gw", "isk_x", transport=httpx.MockTransport(handler)) as client:
        assert client.me().kind == "PRINCIPAL_KIND_ADMIN"
    assert len(seen) == 2 and seen[0].headers["Authorization"] == "Bearer isk_x"

    refusal = {"code": 3, "message": "bad", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_FIELD", "domain": "jobs.innosystem"},
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "fieldViolations": [{"field": "payload", "description": "not an object"}]}]}
    with Client("http://gw", "k", transport=httpx.MockTransport(lambda r: httpx.Response(400, json=refusal))) as c, \
            pytest.raises(ApiError) as err:
        c.get(str(uuid.uuid4()))
    assert err.value.reason == "INVALID_FIELD" and err.value.field_violations[0].field == "payload"


def test_the_sse_parser_reads_events_errors_and_skips_keepalives() -> None:
    parser = Parser()
    lines = [": keepalive", "", 'data: {"a": 1}', "", "event: error", 'data: {"code": 14}', ""]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert [(e.name, e.data) for e in events] == [("message", {"a": 1}), ("error", {"code": 14})]


def test_batches_split_in_order_and_refuse_a_size_past_the_limit() -> None:
    assert list(batches(range(5), 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        list(batches(range(5), 1001))


def chain(n: int) -> list[dict[str, object]]:
    """n records hashed as the keys service hashes them, in the JSON the gateway returns."""
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        record = pb.AccessRecord(id=str(uuid.uuid4()), sequence=seq, customer_id=str(uuid.uuid4()),
                                 job_id=str(uuid.uuid4()), prev_hash=prev, requested_fields=["payload.card"])
        record.hash = prev = record_hash(record)
        out.append(json_format.MessageToDict(record))
    return out


def test_the_local_chain_check_agrees_with_the_service_and_finds_each_kind_of_break() -> None:
    records = chain(4)
    good = verify(records)
    assert good.ok and good.checked == 4 and good.head_sequence == 4 and good.head_hash == records[-1]["hash"]

    edited = [dict(r) for r in records]
    edited[2]["jobId"] = str(uuid.uuid4())
    assert (verify(edited).break_kind, verify(edited).break_sequence) == ("HASH_MISMATCH", 3)
    deleted = records[:1] + records[2:]
    assert verify(deleted).break_kind == "SEQUENCE_GAP"
    renumbered = [dict(r) for r in deleted]
    renumbered[1]["sequence"] = "2"
    assert verify(renumbered).break_kind == "PREV_HASH_MISMATCH"


def test_settings_come_from_arguments_then_the_environment_then_the_file(tmp_path, monkeypatch) -> None:
    config = tmp_path / "client.toml"
    config.write_text('url = "http://file:1/"\napi_key = "isk_file"\n')
    config.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        Settings.load(path=config)
    config.chmod(0o600)
    monkeypatch.delenv("INNOSYSTEM_URL", raising=False)
    monkeypatch.delenv("INNOSYSTEM_API_KEY", raising=False)
    assert Settings.load(path=config) == Settings("http://file:1", "isk_file")
    monkeypatch.setenv("INNOSYSTEM_API_KEY", "isk_env")
    assert Settings.load(path=config) == Settings("http://file:1", "isk_env")
    assert Settings.load("http://arg:2", "isk_arg", path=config) == Settings("http://arg:2", "isk_arg")
    assert Settings.load(path=tmp_path / "none.toml").url == "http://127.0.0.1:8080"


def _job(status: str) -> dict[str, object]:
    return {"id": "j1", "projectId": "p", "jobTypeId": "t", "status": status, "costCents": "1"}


def test_wait_follows_the_stream_to_its_end_and_falls_back_to_reads_without_one() -> None:
    events = b"".join(b"data: " + json.dumps({"type": t, "job": _job(s)}).encode() + b"\n\n" for t, s in (
        ("JOB_EVENT_TYPE_SNAPSHOT", "JOB_STATUS_RUNNING"), ("JOB_EVENT_TYPE_STATUS_CHANGED", "JOB_STATUS_SUCCEEDED")))
    streamed = {"/v1/jobs/j1:watch": httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                                                    content=events)}
    with Client("http://gw", "k", transport=httpx.MockTransport(lambda r: streamed[r.url.path])) as client:
        done = client.wait("j1", full=False)
    assert done.succeeded and done.cost_cents == 1

    # No stream to be had (the watch quota): the job is read instead, with backoff, until final.
    reads = iter(["JOB_STATUS_PENDING", "JOB_STATUS_RUNNING", "JOB_STATUS_FAILED"])
    quota = {"code": 8, "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXCEEDED"}]}

    def no_stream(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(":watch"):
            return httpx.Response(429, json=quota)
        return httpx.Response(200, json=_job(next(reads)))

    fast = RetryPolicy(attempts=1, maximum=0.01)
    with Client("http://gw", "k", retry=fast, transport=httpx.MockTransport(no_stream)) as client:
        assert client.wait("j1").status == "JOB_STATUS_FAILED"
    assert next(reads, None) is None
