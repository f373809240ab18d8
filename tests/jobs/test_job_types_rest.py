"""Job types through the real gateway, tenancy and jobs processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Tenancy, jobs and the gateway as real processes; stopped when this module ends."""
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("jobs-stack-logs"),
                       services=("tenancy", "jobs")) as running:
        yield running


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> dict:
    admin = Client(stack.gateway_url, stack.admin_api_key)
    first = admin.post("/v1/customers", {"name": "First Co", "email": "first@example.com"})
    second = admin.post("/v1/customers", {"name": "Second Co", "email": "second@example.com"})
    assert first.status == 200 and second.status == 200, (first.body, second.body)
    as_first, as_second = admin.as_key(first.body["apiKey"]), admin.as_key(second.body["apiKey"])
    project = as_first.post(f"/v1/customers/{first.body['customer']['id']}/projects", {"name": "pipeline"})
    assert project.status == 200, project.body
    return {"admin": admin, "as_first": as_first, "as_second": as_second, "project": project.body["id"],
            "first": first.body["customer"]["id"]}


def _reason(body: dict) -> str:
    return next(d["reason"] for d in body["details"] if d["@type"].endswith("ErrorInfo"))


def _violations(body: dict) -> list[str]:
    """Violated fields, spelled alike: the service names proto fields (job_type.base_cost_cents),
    the gateway's own JSON checks name JSON fields (jobType.defaultPriority)."""
    return [v["field"].replace("_", "").lower() for d in body["details"] if d["@type"].endswith("BadRequest")
            for v in d["fieldViolations"]]


def test_customer_manages_its_job_types(tenants: dict) -> None:
    as_first, project = tenants["as_first"], tenants["project"]
    created = as_first.post(f"/v1/projects/{project}/jobTypes", {
        "name": "render-pdf", "description": "invoices", "defaultPriority": "PRIORITY_LEVEL_HIGH",
        "processorType": "PROCESSOR_TYPE_ASYNC", "requiredTags": ["gpu"],
        "defaultRetryPolicy": {"maxAttempts": 4, "initialIntervalSeconds": 2, "backoffMultiplier": 3}})
    assert created.status == 200, created.body
    jt = created.body
    assert jt["projectId"] == project and jt["customerId"] == tenants["first"] and jt["enabled"] is True
    assert jt["defaultPriority"] == "PRIORITY_LEVEL_HIGH" and jt["processorType"] == "PROCESSOR_TYPE_ASYNC"
    assert jt["defaultRetryPolicy"]["maxAttempts"] == 4 and jt["timeoutSeconds"] == 300
    assert jt["defaultPersistencePolicy"] == "PERSISTENCE_POLICY_STANDARD"

    got = as_first.get(f"/v1/jobTypes/{jt['id']}")
    assert got.status == 200 and got.body["name"] == "render-pdf"
    listed = as_first.get(f"/v1/projects/{project}/jobTypes")
    assert listed.status == 200 and [t["id"] for t in listed.body["jobTypes"]] == [jt["id"]]

    patched = as_first.patch(f"/v1/jobTypes/{jt['id']}?updateMask=enabled,description",
                             {"enabled": False, "description": "paused", "baseCostCents": "999"})
    assert patched.status == 200, patched.body
    assert patched.body["enabled"] is False and patched.body["description"] == "paused"
    assert patched.body.get("baseCostCents", "0") == "0"  # not in the mask (and an own type has no price)
    enabled_only = as_first.get(f"/v1/projects/{project}/jobTypes?enabledOnly=true")
    assert enabled_only.status == 200 and enabled_only.body.get("jobTypes", []) == []

    taken = as_first.post(f"/v1/projects/{project}/jobTypes", {"name": "render-pdf"})
    assert taken.status == 409 and _reason(taken.body) == "JOB_TYPE_NAME_TAKEN", taken.body

    assert as_first.delete(f"/v1/jobTypes/{jt['id']}").status == 200
    gone = as_first.get(f"/v1/jobTypes/{jt['id']}")
    assert gone.status == 404 and _reason(gone.body) == "JOB_TYPE_NOT_FOUND"


def test_another_customer_gets_404(tenants: dict) -> None:
    as_first, as_second, project = tenants["as_first"], tenants["as_second"], tenants["project"]
    jt = as_first.post(f"/v1/projects/{project}/jobTypes", {"name": "private"}).body
    for resp in (as_second.get(f"/v1/jobTypes/{jt['id']}"),
                 as_second.patch(f"/v1/jobTypes/{jt['id']}", {"description": "mine"}),
                 as_second.delete(f"/v1/jobTypes/{jt['id']}"),
                 as_second.get(f"/v1/projects/{project}/jobTypes"),
                 as_second.post(f"/v1/projects/{project}/jobTypes", {"name": "intruder"}),
                 as_second.post(f"/v1/projects/{uuid.uuid4()}/jobTypes", {"name": "nowhere"})):
        assert resp.status == 404, resp.body
    assert as_first.get(f"/v1/jobTypes/{jt['id']}").body["description"] == ""
    assert tenants["admin"].get(f"/v1/jobTypes/{jt['id']}").status == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "bad name!"}, "job_type.name"),
    ({"name": "ok", "baseCostCents": "-5"}, "job_type.base_cost_cents"),
    ({"name": "ok", "defaultRetryPolicy": {"maxAttempts": 0}}, "job_type.default_retry_policy.max_attempts"),
    ({"name": "ok", "defaultRetryPolicy": {"maxAttempts": 2, "backoffMultiplier": 0.5}},
     "job_type.default_retry_policy.backoff_multiplier"),
    ({"name": "ok", "timeoutSeconds": 999999}, "job_type.timeout_seconds"),
    ({"name": "ok", "defaultPriority": -1}, "job_type.default_priority"),
    ({"description": "no name"}, "job_type.name"),
])
def test_bad_input_is_400_naming_the_field(tenants: dict, body: dict, field: str) -> None:
    resp = tenants["as_first"].post(f"/v1/projects/{tenants['project']}/jobTypes", body)
    assert resp.status == 400, resp.body
    assert field.replace("_", "").lower() in _violations(resp.body), resp.body


def test_submit_of_an_unknown_type_is_404_naming_the_field(tenants: dict) -> None:
    body = {"jobTypeId": str(uuid.uuid4()), "payload": {}}
    resp = tenants["as_first"].post(f"/v1/projects/{tenants['project']}/jobs", body)
    assert resp.status == 404 and _reason(resp.body) == "JOB_TYPE_NOT_FOUND", resp.body
    assert "jobtypeid" in _violations(resp.body), resp.body
