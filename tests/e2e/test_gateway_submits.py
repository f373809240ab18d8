"""Issue 13: concurrent single submits of one caller to one project reach the jobs service as
BatchSubmitJobs calls (gateway/submits.py), and each request is answered as its own SubmitJob
would be: its own job, its own trace, its own refusal naming its own field, one job per request
id. Real processes: the session's stack; bursts of clients released together by a barrier."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from innosystem.stack import Stack
from tests.e2e.conftest import Client, Response
from tests.support.metrics import rpc_calls

SUBMIT = "/innosystem.jobs.v1.JobService/SubmitJob"
BATCH = "/innosystem.jobs.v1.JobService/BatchSubmitJobs"
BURST = 48


def _tenant(admin: Client, funds: int, price: int = 0) -> tuple[Client, str, str, str]:
    name = f"Burst {uuid.uuid4().hex[:6]}"
    created = admin.post("/v1/customers", {"name": name, "email": f"{uuid.uuid4().hex[:8]}@example.com"}).body
    cid = created["customer"]["id"]
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": funds, "requestId": f"fund-{cid}"}
                      ).status == 200
    me = admin.as_key(created["apiKey"])
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "burst"}).body["id"]
    if not price:
        return me, cid, project, me.post(f"/v1/projects/{project}/jobTypes", {"name": "burst-type"}).body["id"]
    made = admin.post("/v1/jobTypes", {"name": f"burst-{uuid.uuid4().hex[:8]}"})  # a catalog type has a price
    assert made.status == 200, made.body
    priced = admin.post(f"/v1/jobTypes/{made.body['id']}/prices", {"currencyCode": "USD", "unitPriceCents": price})
    assert priced.status == 200, priced.body
    return me, cid, project, str(made.body["id"])


def _burst(me: Client, project: str, bodies: list[dict[str, Any]],
           headers: list[dict[str, str]] | None = None) -> list[Response]:
    """Every body POSTed as its own single submit, all released at once."""
    start = threading.Barrier(len(bodies))

    def one(i: int) -> Response:
        start.wait()
        return me.post(f"/v1/projects/{project}/jobs", bodies[i], headers=headers[i] if headers else None)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, range(len(bodies))))


def _reason(answer: Response) -> str:
    return str(next(d["reason"] for d in answer.body["details"] if "reason" in d))


def _calls(stack: Stack) -> tuple[int, int]:
    return rpc_calls(stack, "jobs", SUBMIT), rpc_calls(stack, "jobs", BATCH)


def test_a_burst_of_single_submits_goes_upstream_in_batches_and_each_gets_its_own_job(
        stack: Stack, admin: Client) -> None:
    me, _, project, job_type = _tenant(admin, 10_000)
    singles, batches = _calls(stack)
    answers = _burst(me, project, [{"jobTypeId": job_type, "payload": {"n": i}} for i in range(BURST)])
    assert [a.status for a in answers] == [200] * BURST, [a.body for a in answers if a.status != 200][:3]
    more_singles, more_batches = (after - before for after, before in zip(_calls(stack), (singles, batches),
                                                                          strict=True))
    assert more_batches >= 1 and more_singles + more_batches < BURST  # fewer upstream calls than requests
    assert len({a.body["id"] for a in answers}) == BURST
    for i, answer in enumerate(answers):  # each request's own job, stored with its own payload
        assert answer.body["projectId"] == project
        assert me.get(f"/v1/jobs/{answer.body['id']}").body["payload"] == {"n": i}


def test_each_submit_of_a_batch_keeps_its_own_trace(stack: Stack, admin: Client) -> None:
    me, _, project, job_type = _tenant(admin, 10_000)
    traces = [uuid.uuid4().hex for _ in range(BURST)]
    answers = _burst(me, project, [{"jobTypeId": job_type} for _ in range(BURST)],
                     [{"traceparent": f"00-{t}-00f067aa0ba902b7-01"} for t in traces])
    assert [a.body["traceContext"]["traceparent"].split("-")[1] for a in answers] == traces


def test_a_refused_submit_is_refused_alone_naming_its_own_field(stack: Stack, admin: Client) -> None:
    me, _, project, job_type = _tenant(admin, 10_000)
    bodies: list[dict[str, Any]] = [{"jobTypeId": job_type, "payload": {"n": i}} for i in range(BURST)]
    bodies[7] = {"jobTypeId": str(uuid.uuid4())}  # no such type
    answers = _burst(me, project, bodies)
    refused = answers[7]
    assert refused.status == 404 and _reason(refused) == "JOB_TYPE_NOT_FOUND", refused.body
    violations = [v["field"] for d in refused.body["details"] for v in d.get("fieldViolations", [])]
    assert violations == ["job_type_id"]  # named as its own call names it, not as a batch item
    assert [a.status for i, a in enumerate(answers) if i != 7] == [200] * (BURST - 1)


def test_a_burst_beyond_the_balance_holds_exactly_what_it_can_pay(stack: Stack, admin: Client) -> None:
    me, cid, project, job_type = _tenant(admin, 1_000, price=100)  # ten jobs' worth
    answers = _burst(me, project, [{"jobTypeId": job_type, "payload": {"n": i}} for i in range(BURST)])
    accepted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(accepted) == 10 and len(refused) == BURST - 10
    assert {(a.status, _reason(a)) for a in refused} == {(400, "INSUFFICIENT_FUNDS")}, refused[0].body
    assert all(a.body["message"].startswith("project_id: ") for a in refused)  # as a single submit names it
    wallet = me.get(f"/v1/customers/{cid}/wallet").body
    assert int(wallet["heldCents"]) == 1_000  # held once per accepted job, nothing for the refused


def test_concurrent_repeats_of_a_request_id_are_one_job(stack: Stack, admin: Client) -> None:
    me, _, project, job_type = _tenant(admin, 10_000)
    bodies = [{"jobTypeId": job_type, "requestId": f"order-{i // 2}", "payload": {"order": i // 2}}
              for i in range(BURST)]  # each request id twice
    answers = _burst(me, project, bodies)
    assert [a.status for a in answers] == [200] * BURST, [a.body for a in answers if a.status != 200][:3]
    by_request: dict[str, set[str]] = {}
    for body, answer in zip(bodies, answers, strict=True):
        by_request.setdefault(body["requestId"], set()).add(answer.body["id"])
    assert all(len(ids) == 1 for ids in by_request.values()) and len(by_request) == BURST // 2
