"""Job event webhooks through the gateway against real processes (tenancy, billing, jobs): a local
HTTP receiver gets correctly signed events, retries after failures, a redelivery on request; bad
input is refused naming the field; another tenant sees nothing. The internal lease API plays the
runner."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1 import jobs_pb2_grpc
from innosystem.kit.clients import channel
from innosystem.stack import Stack
from innosystem.webhooks import InvalidSignature, verify
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client
from tests.support.tiny_http import serve

pytestmark = pytest.mark.e2e

SETTINGS = {
    "INNOSYSTEM_EGRESS_ALLOW_HOSTS": "127.0.0.1",  # the receiver is a plain-http server on loopback
    "INNOSYSTEM_JOBS_WEBHOOK_RETRY_SCALE": "0.01",  # retries after 0.05 s, 3 s, …
    "INNOSYSTEM_JOBS_WEBHOOK_SCAN_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("webhooks-logs"),
                       services=("tenancy", "billing", "jobs"), extra_env=SETTINGS) as running:
        yield running


@pytest.fixture
async def jobs_stub(stack: Stack) -> AsyncIterator[jobs_pb2_grpc.JobServiceStub]:
    async with channel(stack.address("jobs"), service="runners", secret=stack.internal_secret.encode()) as ch:
        yield jobs_pb2_grpc.JobServiceStub(ch)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; answers `fail_first` of them with 500, the rest with 200."""

    fail_first: int = 0
    got: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    count: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        await self.got.put(Received({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=500 if self.count <= self.fail_first else 200)

    async def next(self) -> Received:
        async with asyncio.timeout(30):
            return await self.got.get()


@dataclass
class Tenant:
    client: Client
    customer_id: str
    project_id: str
    job_type_id: str
    type_name: str


def tenant(stack: Stack, max_attempts: int = 3) -> Tenant:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    made = admin.post("/v1/customers", {"name": "Hooked", "email": f"{uuid.uuid4().hex[:8]}@example.com"})
    assert made.status == 200, made.body
    cid = made.body["customer"]["id"]
    me = admin.as_key(made.body["apiKey"])
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "main"})
    assert project.status == 200, project.body
    deadline = time.monotonic() + 30
    while admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 1000, "requestId": f"f-{cid}"}).status \
            != 200:  # the wallet opens right after the customer (README): at most a short wait
        assert time.monotonic() < deadline, "no wallet"
        time.sleep(0.05)
    name = f"hook-{uuid.uuid4().hex[:8]}"
    jt = admin.post("/v1/jobTypes", {  # a catalog type: the shared runner these tests play serves only those
        "name": name, "defaultRetryPolicy": {"maxAttempts": max_attempts}})
    assert jt.status == 200, jt.body
    priced = admin.post(f"/v1/jobTypes/{jt.body['id']}/prices", {"currencyCode": "USD", "unitPriceCents": 1})
    assert priced.status == 200, priced.body
    return Tenant(me, cid, project.body["id"], jt.body["id"], name)


def make_webhook(t: Tenant, url: str, events: list[str]) -> tuple[dict[str, Any], str]:
    resp = t.client.post(f"/v1/projects/{t.project_id}/webhooks", {"url": url, "events": events})
    assert resp.status == 200, resp.body
    return resp.body["webhook"], resp.body["signingSecret"]


async def run_one(stub: jobs_pb2_grpc.JobServiceStub, t: Tenant, *, fail: bool = False) -> str:
    job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": t.job_type_id})
    assert job.status == 200, job.body
    reply = await stub.LeaseJobs(pb.LeaseJobsRequest(runner_id="hooks", session_id="s", job_type_names=[t.type_name],
                                                     max_jobs=1, wait_ms=5000))
    assert [x.job_id for x in reply.leases] == [job.body["id"]]
    lease = reply.leases[0]
    outcome = pb.ATTEMPT_OUTCOME_FAILED if fail else pb.ATTEMPT_OUTCOME_SUCCEEDED
    done = await stub.CompleteJobs(pb.CompleteJobsRequest(completions=[pb.JobCompletion(
        job_id=lease.job_id, lease_id=lease.lease_id, runner_id=lease.runner_id, result=pb.AttemptResult(
            outcome=outcome, error=pb.JobError(message="boom", type="Boom") if fail else None))]))
    assert not [r for r in done.results if r.HasField("error")], done.results
    return str(job.body["id"])


def deliveries(t: Tenant, webhook_id: str) -> list[dict[str, Any]]:
    resp = t.client.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert resp.status == 200, resp.body
    return list(resp.body.get("deliveries", []))


def settled(t: Tenant, webhook_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The delivery log once it holds `count` deliveries, none of them pending (the receiver saw the
    POST before the sender recorded its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(t, webhook_id)
        if len(found) == count and all(d["state"] != "WEBHOOK_DELIVERY_STATE_PENDING" for d in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


async def test_succeeded_job_is_signed_delivered_and_redelivered(
        stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    receiver = Receiver()
    async with serve({"/hook": receiver.handle}) as served:
        t = tenant(stack)
        hook, secret = make_webhook(t, served.url("/hook"), ["job.succeeded", "job.failed"])
        assert secret.startswith("whsec_") and hook["events"] == ["job.failed", "job.succeeded"]
        shown = t.client.get(f"/v1/webhooks/{hook['id']}")
        assert shown.status == 200 and "whsec_" not in json.dumps(shown.body), shown.body

        job_id = await run_one(jobs_stub, t)
        first = await receiver.next()
        event = verify(secret, first.headers, first.body)
        assert event["type"] == "job.succeeded" and event["data"]["jobId"] == job_id
        assert event["data"]["status"] == "JOB_STATUS_SUCCEEDED" and event["id"] == first.headers["webhook-id"]
        with pytest.raises(InvalidSignature):
            verify("whsec_" + "A" * 43 + "=", first.headers, first.body)  # another secret
        with pytest.raises(InvalidSignature):
            verify(secret, first.headers, first.body.replace(b"succeeded", b"cancelled"))  # tampered

        [logged] = settled(t, hook["id"], 1)
        assert logged["state"] == "WEBHOOK_DELIVERY_STATE_SUCCEEDED" and logged["attempts"] == 1
        assert logged["id"] == event["id"] and logged["jobId"] == job_id and logged["lastStatusCode"] == 200

        again = t.client.post(f"/v1/webhooks/{hook['id']}/deliveries/{logged['id']}:redeliver", {})
        assert again.status == 200 and again.body["state"] == "WEBHOOK_DELIVERY_STATE_PENDING", again.body
        second = await receiver.next()
        assert second.headers["webhook-id"] == first.headers["webhook-id"] and second.body == first.body
        assert verify(secret, second.headers, second.body)["data"]["jobId"] == job_id
        [logged] = settled(t, hook["id"], 1)
        assert logged["state"] == "WEBHOOK_DELIVERY_STATE_SUCCEEDED" and logged["attempts"] == 2


async def test_failing_receiver_is_retried_until_it_answers(stack: Stack,
                                                             jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    receiver = Receiver(fail_first=2)
    async with serve({"/flaky": receiver.handle}) as served:
        t = tenant(stack)
        hook, secret = make_webhook(t, served.url("/flaky"), ["job.succeeded"])
        await run_one(jobs_stub, t)
        seen = [await receiver.next() for _ in range(3)]
        assert len({r.headers["webhook-id"] for r in seen}) == 1  # one delivery, three attempts
        for r in seen:
            verify(secret, r.headers, r.body)
        [logged] = settled(t, hook["id"], 1)
        assert logged["state"] == "WEBHOOK_DELIVERY_STATE_SUCCEEDED" and logged["attempts"] == 3


async def test_each_endpoint_gets_only_its_events(stack: Stack, jobs_stub: jobs_pb2_grpc.JobServiceStub) -> None:
    failed, cancelled = Receiver(), Receiver()
    async with serve({"/failed": failed.handle, "/cancelled": cancelled.handle}) as served:
        t = tenant(stack, max_attempts=1)
        on_fail, fail_secret = make_webhook(t, served.url("/failed"), ["job.failed", "job.dead_lettered"])
        on_cancel, cancel_secret = make_webhook(t, served.url("/cancelled"), ["job.cancelled"])

        failed_job = await run_one(jobs_stub, t, fail=True)
        got = [verify(fail_secret, r.headers, r.body) for r in [await failed.next(), await failed.next()]]
        assert sorted(e["type"] for e in got) == ["job.dead_lettered", "job.failed"]
        assert {e["data"]["jobId"] for e in got} == {failed_job} and got[0]["data"]["errorType"] == "Boom"

        job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": t.job_type_id}).body
        assert t.client.post(f"/v1/jobs/{job['id']}:cancel", {"reason": "no"}).status == 200
        event = verify(cancel_secret, *(lambda r: (r.headers, r.body))(await cancelled.next()))
        assert event["type"] == "job.cancelled" and event["data"]["jobId"] == job["id"]
        # The failure, written in the same pass as the other endpoint's, never reached this one.
        assert [d["jobId"] for d in settled(t, on_cancel["id"], 1)] == [job["id"]]
        assert len(settled(t, on_fail["id"], 2)) == 2 and cancelled.count == 1


def test_bad_input_is_refused_naming_the_field(stack: Stack) -> None:
    t = tenant(stack)
    base = f"/v1/projects/{t.project_id}/webhooks"
    cases = [
        ({"url": "https://10.1.2.3/hook", "events": ["job.succeeded"]}, "webhook.url", "EGRESS_BLOCKED"),
        ({"url": "http://example.com/hook", "events": ["job.succeeded"]}, "webhook.url", "EGRESS_BLOCKED"),
        ({"url": "ftp://example.com/", "events": ["job.succeeded"]}, "webhook.url", "INVALID_WEBHOOK_URL"),
        ({"url": "https://example.com/hook", "events": ["job.exploded"]}, "webhook.events", "INVALID_WEBHOOK_EVENTS"),
        ({"url": "https://example.com/hook", "events": []}, "webhook.events", "REQUIRED_FIELD_MISSING"),
        ({"events": ["job.succeeded"]}, "webhook.url", "REQUIRED_FIELD_MISSING"),
    ]
    for body, field_path, reason in cases:
        resp = t.client.post(base, body)
        assert resp.status == 400, (body, resp.body)
        details = {d["@type"].rsplit(".", 1)[-1]: d for d in resp.body["details"]}
        assert details["ErrorInfo"]["reason"] == reason, resp.body
        assert [v["field"] for v in details["BadRequest"]["fieldViolations"]] == [field_path], resp.body
    assert t.client.get(base).body.get("webhooks", []) == []  # nothing was created


def test_another_tenant_sees_nothing(stack: Stack) -> None:
    owner, other = tenant(stack), tenant(stack)
    hook, _ = make_webhook(owner, "https://example.com/hook", ["job.succeeded"])
    for path in (f"/v1/webhooks/{hook['id']}", f"/v1/webhooks/{hook['id']}/deliveries"):
        resp = other.client.get(path)
        assert resp.status == 404, resp.body
    assert other.client.get(f"/v1/projects/{owner.project_id}/webhooks").status == 404
    assert other.client.delete(f"/v1/webhooks/{hook['id']}").status == 404
    assert owner.client.get(f"/v1/webhooks/{hook['id']}").status == 200  # still there
    assert owner.client.delete(f"/v1/webhooks/{hook['id']}").status == 200
    assert owner.client.get(f"/v1/webhooks/{hook['id']}").status == 404


async def test_low_balance_reaches_every_subscribed_endpoint_of_the_customer_once(stack: Stack) -> None:
    """A submit's hold takes the wallet below its threshold: billing stores one wallet.low_balance
    event, and each endpoint of the customer's projects that asked for it gets it, signed; an
    endpoint that did not ask, and another customer's, get nothing."""
    hooks = {name: Receiver() for name in ("first", "second", "jobs_only", "stranger")}
    async with serve({f"/{name}": r.handle for name, r in hooks.items()}) as served:
        t, other = tenant(stack), tenant(stack)
        second_project = t.client.post(f"/v1/customers/{t.customer_id}/projects", {"name": "second"})
        assert second_project.status == 200, second_project.body
        first, first_secret = make_webhook(t, served.url("/first"), ["wallet.low_balance"])
        second, second_secret = make_webhook(Tenant(t.client, t.customer_id, second_project.body["id"], "", ""),
                                             served.url("/second"), ["wallet.low_balance", "job.succeeded"])
        jobs_only, _ = make_webhook(t, served.url("/jobs_only"), ["job.succeeded"])
        stranger, _ = make_webhook(other, served.url("/stranger"), ["wallet.low_balance"])
        assert other.client.patch(f"/v1/customers/{other.customer_id}/wallet",
                                  {"lowBalanceThresholdCents": "900"}).status == 200

        # 1000 on the wallet (tenant()); threshold 500; a job type whose hold is 700 crosses it.
        wallet = t.client.patch(f"/v1/customers/{t.customer_id}/wallet", {"lowBalanceThresholdCents": "500"})
        assert wallet.status == 200 and wallet.body["lowBalanceAlerted"] is False, wallet.body
        admin = Client(stack.gateway_url, stack.admin_api_key)  # prices are the operator's: a catalog type
        costly = admin.post("/v1/jobTypes", {"name": f"dear-{uuid.uuid4().hex[:8]}"})
        assert costly.status == 200, costly.body
        priced = admin.post(f"/v1/jobTypes/{costly.body['id']}/prices", {"currencyCode": "USD", "unitPriceCents": 700})
        assert priced.status == 200, priced.body
        job = t.client.post(f"/v1/projects/{t.project_id}/jobs", {"jobTypeId": costly.body["id"]})
        assert job.status == 200, job.body

        got = {}
        for name, secret in (("first", first_secret), ("second", second_secret)):
            received = await hooks[name].next()
            got[name] = verify(secret, received.headers, received.body)
            assert got[name]["id"] == received.headers["webhook-id"]
        [stored] = t.client.get(f"/v1/customers/{t.customer_id}/wallet/events").body["events"]
        for event in got.values():
            data = event["data"]
            assert event["type"] == "wallet.low_balance" and data["eventId"] == stored["id"], event
            assert data["customerId"] == t.customer_id and data["thresholdCents"] == 500, event
            assert data["availableCents"] < 500 and data["availableCents"] == int(stored["availableCents"]), event
        assert got["first"]["id"] != got["second"]["id"]  # one delivery per endpoint

        [logged] = settled(t, first["id"], 1)
        assert logged["eventType"] == "wallet.low_balance" and logged["state"] == "WEBHOOK_DELIVERY_STATE_SUCCEEDED"
        assert "jobId" not in logged or logged["jobId"] == "", logged
        assert len(settled(t, second["id"], 1)) == 1
        # Written in the same fan-out pass as the two above: had they been due, they would be here.
        assert deliveries(t, jobs_only["id"]) == [] and deliveries(other, stranger["id"]) == []
        assert hooks["jobs_only"].count == 0 and hooks["stranger"].count == 0
        # Redelivery works as for job events: the same id, the same bytes.
        again = t.client.post(f"/v1/webhooks/{first['id']}/deliveries/{logged['id']}:redeliver", {})
        assert again.status == 200, again.body
        repeat = await hooks["first"].next()
        assert verify(first_secret, repeat.headers, repeat.body) == got["first"]
