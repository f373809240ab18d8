"""The client SDK (innosystem.client) against the real stack: batches, waiting, paging, errors,
idempotency, cancel and retry, the wallet and the access log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from innosystem.client import ApiError, AsyncClient, Client, WaitTimeout, job_request
from innosystem.client.accesslog import verify
from innosystem.client.calls import Call
from innosystem.demo import Demo
from innosystem.stack import Stack
from tests.keys.keymanager_process import start_keymanager
from tests.support.client_world import served_customer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Iterator[Demo]:
    with served_customer(stack, "client-sdk", slots=16) as seeded:
        yield seeded


@pytest.fixture
def client(stack: Stack, demo: Demo) -> Iterator[Client]:
    with Client(stack.gateway_url, demo.api_key) as c:
        yield c


async def test_a_script_submits_1000_jobs_in_batches_and_waits_for_all(stack: Stack, demo: Demo) -> None:
    echo = demo.job_type_ids["echo"]
    async with AsyncClient(stack.gateway_url, demo.api_key) as client:
        before = await client.wallet()
        batches: list[int] = []
        jobs = await client.submit_batch(demo.project_id, (job_request(echo, {"n": n}) for n in range(1000)),
                                         batch_size=250, on_batch=lambda done: batches.append(len(done)))
        assert batches == [250, 250, 250, 250]
        assert len({j.id for j in jobs}) == 1000 and all(j.request_id for j in jobs)

        finished = await client.wait_all([j.id for j in jobs], timeout=600)
        assert [j.id for j in finished] == [j.id for j in jobs]
        assert {j.status for j in finished} == {"JOB_STATUS_SUCCEEDED"}

        one = await client.get(jobs[123].id)
        assert one.result == {"n": 123} and one.succeeded
        # Each job cost its cent, and the wallet paid exactly that.
        assert sum(j.cost_cents for j in finished) == 1000
        for _ in range(200):  # billing settles after the endings, within seconds
            if (await client.wallet()).balance_cents == before.balance_cents - 1000:
                break
            await asyncio.sleep(0.05)
        assert (await client.wallet()).balance_cents == before.balance_cents - 1000


def test_submit_wait_and_the_wallet_with_the_sync_client(client: Client, demo: Demo) -> None:
    job = client.submit(demo.project_id, demo.job_type_ids["echo"], {"hello": "sdk"})
    done = client.wait(job.id, timeout=120)
    assert done.succeeded and done.result == {"hello": "sdk"} and done.cost_cents == 1
    assert [c["status"] for c in done.raw["statusHistory"]][-1] == "JOB_STATUS_SUCCEEDED"
    captures = [t for t in client.transactions(job_id=job.id)]
    assert captures and all(t.job_id == job.id for t in captures)
    assert client.wallet().customer_id == demo.customer_id


def test_whole_numbers_come_back_whole(client: Client, demo: Demo) -> None:
    """JSON numbers cross protobuf as doubles; a 3 sent is a 3 stored, processed and answered, not 3.0."""
    sent = {"count": 3, "ratio": 0.5, "items": [1, 2.5, {"deep": -4}], "big": 2**40}
    job = client.submit(demo.project_id, demo.job_type_ids["echo"], sent)
    done = client.wait(job.id, timeout=60)
    assert done.succeeded
    for seen in (done.payload, done.result):  # as stored and read back, and as the processor echoed it
        assert seen == sent
        assert type(seen["count"]) is int and type(seen["items"][2]["deep"]) is int and type(seen["big"]) is int
        assert type(seen["ratio"]) is float and type(seen["items"][1]) is float


def test_a_repeated_request_id_returns_the_first_job_and_a_different_body_is_refused(client: Client,
                                                                                       demo: Demo) -> None:
    key = f"sdk-{uuid.uuid4()}"
    first = client.submit(demo.project_id, demo.job_type_ids["echo"], {"v": 1}, request_id=key)
    again = client.submit(demo.project_id, demo.job_type_ids["echo"], {"v": 1}, request_id=key)
    assert again.id == first.id
    with pytest.raises(ApiError) as refused:
        client.submit(demo.project_id, demo.job_type_ids["echo"], {"v": 2}, request_id=key)
    assert refused.value.http_status == 400 and refused.value.reason == "IDEMPOTENCY_KEY_REUSED"


def test_errors_carry_the_reason_and_the_field(client: Client, demo: Demo) -> None:
    with pytest.raises(ApiError) as bad:
        client.submit(demo.project_id, "", {})
    assert bad.value.http_status == 400 and bad.value.code == 3, bad.value
    assert bad.value.reason == "REQUIRED_FIELD_MISSING", bad.value
    assert any("job_type_id" in v.field for v in bad.value.field_violations), bad.value
    with pytest.raises(ApiError) as unknown:
        client.submit(demo.project_id, "not-a-job-type", {})
    assert unknown.value.reason == "JOB_TYPE_NOT_FOUND" and "job_type_id" in str(unknown.value)
    with pytest.raises(ApiError) as missing:
        client.get(str(uuid.uuid4()))
    assert missing.value.http_status == 404 and missing.value.code == 5


def test_another_customer_cannot_see_the_job(stack: Stack, client: Client, demo: Demo) -> None:
    job = client.submit(demo.project_id, demo.job_type_ids["echo"], {})
    with served_customer(stack, "client-sdk-other", slots=1) as other, \
            Client(stack.gateway_url, other.api_key) as stranger:
        with pytest.raises(ApiError) as hidden:
            stranger.get(job.id)
        assert hidden.value.http_status == 404
        assert all(j.id != job.id for j in stranger.iter_jobs())


def test_iterating_a_list_walks_every_page_once(client: Client, demo: Demo) -> None:
    jobs = client.submit_batch(demo.project_id, [job_request(demo.job_type_ids["echo"], {"p": n}) for n in range(12)])
    seen = [j.id for j in client.iter_jobs(demo.project_id, page_size=5)]
    assert len(seen) == len(set(seen)) and {j.id for j in jobs} <= set(seen)
    first = client.list_jobs(demo.project_id, page_size=5)
    assert len(first) == 5 and first.next_page_token


def test_cancel_a_scheduled_job_and_a_wait_that_runs_out(client: Client, demo: Demo) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job = client.submit(demo.project_id, demo.job_type_ids["echo"], {}, schedule_time=later)
    assert job.status == "JOB_STATUS_SCHEDULED"
    with pytest.raises(WaitTimeout) as waited:
        client.wait(job.id, timeout=0.5)
    assert waited.value.job.status == "JOB_STATUS_SCHEDULED"
    assert client.cancel(job.id, "not needed").status == "JOB_STATUS_CANCELLED"
    assert client.wait(job.id, timeout=30).status == "JOB_STATUS_CANCELLED"


def test_retry_a_failed_job(client: Client, demo: Demo) -> None:
    job = client.submit(demo.project_id, demo.job_type_ids["fail"], {"times": 1},
                        retryPolicy={"maxAttempts": 1})
    assert client.wait(job.id, timeout=120).status == "JOB_STATUS_FAILED"
    retried = client.retry_job(job.id)
    assert retried.status in ("JOB_STATUS_PENDING", "JOB_STATUS_RUNNING", "JOB_STATUS_SUCCEEDED")
    again = client.wait(job.id, timeout=120)  # a retry starts a fresh attempt budget: attempt 1 fails again
    history = [c["status"] for c in again.raw["statusHistory"]]
    assert again.status == "JOB_STATUS_FAILED" and history.count("JOB_STATUS_FAILED") == 2, history


def test_the_access_log_chain_verifies_locally(client: Client) -> None:
    check = client.verify_access_logs()
    assert check.ok, check.message
    assert client.me().kind == "PRINCIPAL_KIND_CUSTOMER"


def test_the_local_chain_check_agrees_with_the_platform_on_real_records(
        stack: Stack, client: Client, demo: Demo, tmp_path: Path) -> None:
    """Key events are access records: register a key at a real reference key manager and change it;
    the client recomputes the same chain the keys service keeps, and notices an edit."""
    km = start_keymanager(tmp_path / "km", "cmk-sdk")
    try:
        key = client.send(Call("POST", f"/v1/customers/{demo.customer_id}/keys", dict, body={
            "endpointUrl": km.grpc_url, "externalKeyId": "cmk-sdk", "hmacSecrets": [km.secret]}))
        client.send(Call("PATCH", f"/v1/keys/{key['id']}", dict, params={"updateMask": "description"},
                         body={"description": "checked by the SDK"}))
    finally:
        km.stop()
    records = list(client.access_logs())
    kinds = {r["type"] for r in records}
    assert {"ACCESS_RECORD_TYPE_KEY_REGISTERED", "ACCESS_RECORD_TYPE_KEY_UPDATED"} <= kinds, kinds

    check = client.verify_access_logs()
    server = client.send(Call("GET", f"/v1/customers/{demo.customer_id}/accessLogs:verify", dict))
    assert check.ok and check.checked == len(records) == int(server["recordsChecked"]) >= 2
    assert (check.head_sequence, check.head_hash) == (int(server["headSequence"]), server["headHash"])

    edited = [dict(r) for r in records]
    edited[1]["description"] = "rewritten"
    broken = verify(edited)
    assert (broken.break_kind, broken.break_sequence) == ("HASH_MISMATCH", 2)
