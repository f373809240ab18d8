"""Issue 14, item 11 through the real gateway and service processes: per-customer caps answer
429 with reason QUOTA_EXCEEDED naming their setting, and a watch slot is given back when the
client hangs up (the gateway cancels the stream, the jobs process ends the watch)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from innosystem.embedded import EmbeddedPostgres, EmbeddedValkey
from innosystem.stack import Stack
from tests.conftest import fresh_redis, running_stack
from tests.e2e.conftest import Client, Response

pytestmark = pytest.mark.e2e

LIMITS = {
    "INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER": "1",
    "INNOSYSTEM_JOBS_MAX_JOB_TYPES_PER_CUSTOMER": "1",
    "INNOSYSTEM_JOBS_MAX_WATCHERS_PER_CUSTOMER": "1",
    "INNOSYSTEM_KEYS_MAX_CHANNELS_PER_CUSTOMER": "1",
    "INNOSYSTEM_EGRESS_ALLOW_HOSTS": "127.0.0.1",  # the webhook below is on loopback
}


@pytest.fixture(scope="module")
def quota_stack(pg_server: EmbeddedPostgres, valkey_server: EmbeddedValkey,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pg_server, fresh_redis(valkey_server), tmp_path_factory.mktemp("quota-logs"),
                       services=("tenancy", "billing", "jobs", "keys"), extra_env=LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def customer(quota_stack: Stack) -> dict[str, Any]:
    admin = Client(quota_stack.gateway_url, quota_stack.admin_api_key)
    created = admin.post("/v1/customers", {"name": "Capped Co", "email": "capped@example.com"})
    assert created.status == 200, created.body
    cid = created.body["customer"]["id"]
    me = admin.as_key(created.body["apiKey"])
    topped = admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 10_000, "requestId": f"fund-{cid}"})
    assert topped.status == 200, topped.body
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "only"})
    assert project.status == 200, project.body
    job_type = me.post(f"/v1/projects/{project.body['id']}/jobTypes", {"name": "only-type"})
    assert job_type.status == 200, job_type.body
    return {"id": cid, "client": me, "project": project.body["id"], "job_type": job_type.body["id"]}


def assert_quota(resp: Response, setting: str) -> None:
    assert resp.status == 429, resp.body
    info = next(d for d in resp.body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "QUOTA_EXCEEDED" and info["metadata"]["setting"] == setting
    assert setting in resp.body["message"]


def test_projects_job_types_and_channels_past_their_caps_are_429(customer: dict[str, Any]) -> None:
    me: Client = customer["client"]
    assert_quota(me.post(f"/v1/customers/{customer['id']}/projects", {"name": "second"}),
                 "INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER")
    assert len(me.get(f"/v1/customers/{customer['id']}/projects").body["projects"]) == 1
    assert_quota(me.post(f"/v1/projects/{customer['project']}/jobTypes", {"name": "second-type"}),
                 "INNOSYSTEM_JOBS_MAX_JOB_TYPES_PER_CUSTOMER")
    channel = {"webhookUrl": "http://127.0.0.1:9/hook", "triggers": ["NOTIFICATION_TRIGGER_ACCESS_DENIED"]}
    first = me.post(f"/v1/customers/{customer['id']}/notificationChannels", channel)
    assert first.status == 200, first.body
    assert_quota(me.post(f"/v1/customers/{customer['id']}/notificationChannels", channel),
                 "INNOSYSTEM_KEYS_MAX_CHANNELS_PER_CUSTOMER")


def open_watch(base: str, api_key: str, job_id: str) -> Any:
    """An open SSE response whose first event (the snapshot) has arrived, or the HTTPError."""
    request = urllib.request.Request(f"{base}/v1/jobs/{job_id}:watch", headers={"Authorization": f"Bearer {api_key}"})
    resp = urllib.request.urlopen(request, timeout=30)
    while not (line := resp.readline().decode()).startswith("data: "):
        assert line, "the stream ended before its snapshot"
    assert json.loads(line[len("data: "):])["type"] == "JOB_EVENT_TYPE_SNAPSHOT"
    return resp


def test_a_second_watch_is_429_until_the_first_client_hangs_up(quota_stack: Stack,
                                                              customer: dict[str, Any]) -> None:
    me: Client = customer["client"]
    jobs = [me.post(f"/v1/projects/{customer['project']}/jobs", {"jobTypeId": customer["job_type"]}).body["id"]
            for _ in range(2)]
    base, key = quota_stack.gateway_url, str(me.api_key)
    first = open_watch(base, key, jobs[0])
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            open_watch(base, key, jobs[1]).close()  # admitted: fails here, not after a stream's life
        err = refused.value
        assert_quota(Response(err.code, json.loads(err.read()), dict(err.headers)),
                     "INNOSYSTEM_JOBS_MAX_WATCHERS_PER_CUSTOMER")
    finally:
        first.close()
    # The hang-up travels gateway → jobs asynchronously: retry until the slot is back (bounded).
    deadline = time.monotonic() + 20
    while True:
        try:
            open_watch(base, key, jobs[1]).close()
            break
        except urllib.error.HTTPError as err:
            assert err.code == 429 and time.monotonic() < deadline, f"the slot never came back ({err.code})"
            time.sleep(0.2)
