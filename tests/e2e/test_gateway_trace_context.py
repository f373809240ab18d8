"""Where no span is recorded (no exporter, no sampler: the default), the gateway and the services
leave OpenTelemetry's gRPC interceptors out for their cost, and carry the trace context
themselves: a client's `traceparent` still reaches the job it submits, through the gateway or
straight over gRPC. (With an exporter the interceptors are in, and tests/e2e/test_trace.py
follows one trace through every process.) Real processes: the session's stack."""

from __future__ import annotations

import grpc

from innosystem.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from innosystem.stack import Stack
from tests.e2e.conftest import Client

TRACE_ID, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


def _tenant(admin: Client) -> tuple[Client, str, str, str]:
    created = admin.post("/v1/customers", {"name": "Traced", "email": "traced@example.com"}).body
    key, cid = created["apiKey"], created["customer"]["id"]
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 1_000, "requestId": f"fund-{cid}"}
                      ).status == 200
    me = admin.as_key(key)
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "traced"}).body["id"]
    job_type = me.post(f"/v1/projects/{project}/jobTypes", {"name": "traced-type"}).body["id"]
    return me, key, project, job_type


def _trace_of(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def test_a_clients_trace_reaches_the_job_through_the_gateway_and_over_grpc(stack: Stack, admin: Client) -> None:
    me, key, project, job_type = _tenant(admin)
    submitted = me.post(f"/v1/projects/{project}/jobs", {"jobTypeId": job_type, "payload": {"n": 1}},
                        headers={"traceparent": TRACEPARENT})
    assert submitted.status == 200, submitted.body
    trace_id, span_id = _trace_of(submitted.body["traceContext"]["traceparent"])
    assert trace_id == TRACE_ID and span_id != CALLER_SPAN  # the same trace, continued by the gateway and jobs

    untraced = me.post(f"/v1/projects/{project}/jobs", {"jobTypeId": job_type, "payload": {"n": 2}})
    own, _ = _trace_of(untraced.body["traceContext"]["traceparent"])
    assert own != TRACE_ID and int(own, 16) != 0  # a request without one starts its own trace

    with grpc.insecure_channel(stack.address("jobs")) as channel:
        job = jobs_pb2_grpc.JobServiceStub(channel).SubmitJob(
            jobs_pb2.SubmitJobRequest(project_id=project, job_type_id=job_type),
            metadata=[("authorization", f"Bearer {key}"), ("traceparent", TRACEPARENT)], timeout=30)
    trace_id, span_id = _trace_of(job.trace_context["traceparent"])
    assert trace_id == TRACE_ID and span_id != CALLER_SPAN
