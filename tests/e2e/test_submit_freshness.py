"""Issue 13: a submit sees a project or job type change made a moment before it, without asking
tenancy (or reading the job types table) on every submit. Real processes: tenancy announces each
change to a customer's projects with a change token in Valkey, the jobs service announces its job
type changes the same way, and a submit reads the tokens (one shared Valkey call) instead."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

from innosystem.stack import Stack
from tests.e2e.conftest import Client

GET_PROJECT = "/innosystem.tenancy.v1.TenancyService/GetProject"


def _calls(stack: Stack, service: str, method: str) -> int:
    """How many `method` calls the service has answered (its Prometheus RPC histogram count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(int(float(m.group(1))) for m in re.finditer(
        r'^rpc_server_duration_seconds_count\{[^}]*rpc_method="' + re.escape(method) + r'"[^}]*\} (\S+)$', text, re.M))


def _tenant(admin: Client, name: str) -> dict[str, Any]:
    created = admin.post("/v1/customers", {"name": name, "email": f"{name.lower()}@example.com"})
    assert created.status == 200, created.body
    cid = created.body["customer"]["id"]
    me = admin.as_key(created.body["apiKey"])
    assert admin.post(f"/v1/customers/{cid}/wallet:topUp", {"amountCents": 10_000, "requestId": f"fund-{cid}"}
                      ).status == 200
    project = me.post(f"/v1/customers/{cid}/projects", {"name": "fresh"}).body["id"]
    job_type = me.post(f"/v1/projects/{project}/jobTypes", {"name": "fresh-type"}).body["id"]
    return {"client": me, "project": project, "job_type": job_type}


def _submit(t: dict[str, Any]) -> Any:
    return t["client"].post(f"/v1/projects/{t['project']}/jobs", {"jobTypeId": t["job_type"], "payload": {"n": 1}})


def test_steady_submits_ask_tenancy_nothing_yet_see_a_change_made_a_moment_before(stack: Stack,
                                                                                   admin: Client) -> None:
    t = _tenant(admin, "Freshco")
    for _ in range(2):  # a project seen for the first time is fetched, then labelled with its token
        assert _submit(t).status == 200
    before = _calls(stack, "tenancy", GET_PROJECT)
    for _ in range(20):
        assert _submit(t).status == 200
    assert _calls(stack, "tenancy", GET_PROJECT) == before  # no tenancy call per submit

    # Deactivated a moment ago: the very next submit is refused, and nothing is held for it.
    assert t["client"].patch(f"/v1/projects/{t['project']}?updateMask=active", {"active": False}).status == 200
    refused = _submit(t)
    assert refused.status == 400 and refused.body["details"][0]["reason"] == "PROJECT_INACTIVE", refused.body
    assert t["client"].patch(f"/v1/projects/{t['project']}?updateMask=active", {"active": True}).status == 200
    assert _submit(t).status == 200

    # A job type disabled a moment ago (the jobs service's own change token) likewise.
    assert t["client"].patch(f"/v1/jobTypes/{t['job_type']}?updateMask=enabled", {"enabled": False}).status == 200
    refused = _submit(t)
    assert refused.status == 400 and refused.body["details"][0]["reason"] == "JOB_TYPE_DISABLED", refused.body
    assert t["client"].patch(f"/v1/jobTypes/{t['job_type']}?updateMask=enabled", {"enabled": True}).status == 200
    assert _submit(t).status == 200


def test_a_lost_token_makes_submits_ask_tenancy_again(stack: Stack, admin: Client) -> None:
    """Valkey losing the tokens (a flush, a restart without persistence) must not revive a stale
    copy: a missing token is created afresh, unlike the one the copy was labelled with."""
    import redis

    t = _tenant(admin, "Lostco")
    for _ in range(2):
        assert _submit(t).status == 200
    before = _calls(stack, "tenancy", GET_PROJECT)
    client = redis.Redis.from_url(stack.redis_url)
    assert client.delete(*client.keys("changed:{tokens}:tenancy:projects:*")) >= 1
    assert _submit(t).status == 200
    assert _calls(stack, "tenancy", GET_PROJECT) > before
