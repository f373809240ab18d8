"""Tenants, job types and jobs for the runners end-to-end tests, through the real gateway."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from tests.e2e.conftest import Client
from tests.runners.conftest import wait_for

BASE_COST = 7
FINAL = {"JOB_STATUS_SUCCEEDED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"}


@dataclass
class Tenant:
    customer_id: str
    client: Client
    project_id: str
    admin: Client

    def job_type(self, builtin: str, *, tags: tuple[str, ...] = (), max_attempts: int = 3,
                 timeout_seconds: int = 60, own: bool = False) -> dict[str, Any]:
        """A job type named `<builtin>-<random>`: a runner serves it with `--processor NAME=…:builtin`.
        A catalog type at BASE_COST a job (shared runners serve it), or (`own`) the customer's own
        type (only its runners serve it, for the platform fee)."""
        name = f"{builtin}-{uuid.uuid4().hex[:8]}"
        fields = {"name": name, "requiredTags": list(tags), "timeoutSeconds": timeout_seconds,
                  "defaultRetryPolicy": {"maxAttempts": max_attempts, "initialIntervalSeconds": 0,
                                         "backoffMultiplier": 1.0, "maxIntervalSeconds": 0}}
        if own:
            made = self.client.post(f"/v1/projects/{self.project_id}/jobTypes", fields)
            assert made.status == 200, made.body
            return dict(made.body)
        made = self.admin.post("/v1/jobTypes", fields)
        assert made.status == 200, made.body
        priced = self.admin.post(f"/v1/jobTypes/{made.body['id']}/prices",
                                 {"currencyCode": "USD", "unitPriceCents": BASE_COST})
        assert priced.status == 200, priced.body
        return dict(made.body)

    def submit(self, job_type: dict[str, Any], payload: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.client.post(f"/v1/projects/{self.project_id}/jobs",
                                {"jobTypeId": job_type["id"], "payload": payload or {}})
        assert resp.status == 200, resp.body
        return dict(resp.body)

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.client.get(f"/v1/jobs/{job_id}")
        assert resp.status == 200, resp.body
        return dict(resp.body)

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        return dict(wait_for(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout,
                             what=f"job {job_id} {'/'.join(statuses)}"))

    def balance(self) -> int:
        wallet = self.client.get(f"/v1/customers/{self.customer_id}/wallet").body
        return int(wallet.get("balanceCents", 0))

    def held(self) -> int:
        wallet = self.client.get(f"/v1/customers/{self.customer_id}/wallet").body
        return int(wallet.get("heldCents", 0))


def tenant(admin: Client, funds: int = 100_000) -> Tenant:
    created = admin.post("/v1/customers", {"name": f"Runner Co {uuid.uuid4().hex[:6]}",
                                           "email": f"{uuid.uuid4().hex[:8]}@example.com"})
    assert created.status == 200, created.body
    customer_id = created.body["customer"]["id"]
    client = admin.as_key(created.body["apiKey"])
    project = client.post(f"/v1/customers/{customer_id}/projects", {"name": "work"})
    assert project.status == 200, project.body
    deadline = time.monotonic() + 20
    while admin.get(f"/v1/customers/{customer_id}/wallet").status != 200:  # opened in the background
        assert time.monotonic() < deadline, "wallet never opened"
        time.sleep(0.05)
    topped = admin.post(f"/v1/customers/{customer_id}/wallet:topUp",
                        {"amountCents": funds, "requestId": f"fund-{customer_id}"})
    assert topped.status == 200, topped.body
    return Tenant(customer_id, client, project.body["id"], admin)


def shared_runner(admin: Client, name: str = "") -> tuple[str, str]:
    created = admin.post("/v1/runners", {"name": name or f"shared-{uuid.uuid4().hex[:6]}"})
    assert created.status == 200, created.body
    return created.body["runner"]["id"], created.body["token"]


def serve(job_type: dict[str, Any], builtin: str | None = None) -> list[str]:
    """CLI arguments that serve `job_type` with a built-in processor."""
    name = job_type["name"]
    return ["--processor", f"{name}=innosystem.runner.builtin:{builtin or name.split('-')[0]}"]
