"""Demo data for the embedded default (`innosystem up --demo`): never for production.

Everything goes through the public REST API with the admin key, each create with a fixed
`requestId`, so a second start finds the first start's tenants instead of adding more. Keys
and tokens are shown once by the platform and never written down here: on a repeat they are
rotated and the new ones printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from innosystem.rest import Rest, RestError

TOP_UP_CENTS = 100_000  # $1,000.00, once (the top-up's requestId makes repeats no-ops)
WALLET_WAIT_SECONDS = 30.0

# The runner SDK's built-in processors: (name, processor type, base cost in cents, timeout).
JOB_TYPES = (
    ("echo", "PROCESSOR_TYPE_SYNC", 1, 30),
    ("sleep", "PROCESSOR_TYPE_ASYNC", 2, 300),
    ("sha256", "PROCESSOR_TYPE_ASYNC", 1, 30),  # reads payload.data through secure access when encrypted
    ("fail", "PROCESSOR_TYPE_SYNC", 1, 30),
)


@dataclass(frozen=True)
class Demo:
    customer_id: str
    api_key: str
    project_id: str
    runner_id: str
    runner_token: str
    job_type_ids: dict[str, str] = field(default_factory=dict)

    def curl(self, gateway_url: str) -> str:
        return (f"curl -s -H 'Authorization: Bearer {self.api_key}' "
                f"-d '{{\"jobTypeId\": \"{self.job_type_ids['echo']}\", \"payload\": {{\"hello\": \"world\"}}}}' "
                f"{gateway_url}/v1/projects/{self.project_id}/jobs")


def seed(admin: Rest, label: str = "demo", top_up_cents: int = TOP_UP_CENTS) -> Demo:
    """A reseller, customer (funded wallet), project, job types and shared runner named for `label`;
    the benchmark seeds its own under another label."""
    title = label.title()
    reseller = admin("POST", f"/v1/resellers?requestId={label}-reseller",
                     {"name": f"{title} Reseller", "email": f"{label}-reseller@example.com", "commissionRateBps": 1000})
    reseller_id = reseller["reseller"]["id"]
    created = admin("POST", f"/v1/customers?requestId={label}-customer",
                    {"name": f"{title} Customer", "email": f"{label}@example.com", "resellerId": reseller_id})
    customer_id = created["customer"]["id"]
    api_key = created.get("apiKey") or admin("POST", f"/v1/customers/{customer_id}:rotateApiKey", {})["apiKey"]

    _top_up(admin, customer_id, top_up_cents, f"{label}-top-up")
    customer = admin.as_key(api_key)
    project = customer("POST", f"/v1/customers/{customer_id}/projects?requestId={label}-project",
                       {"name": label, "description": f"seeded by innosystem ({label})"})
    project_id = project["id"]
    type_ids = {name: _job_type(customer, project_id, label, name, processor, cost, timeout)
                for name, processor, cost, timeout in JOB_TYPES}

    runner = admin("POST", f"/v1/runners?requestId={label}-runner",
                   {"name": f"{label}-runner", "scope": "RUNNER_SCOPE_SHARED",
                    "description": "a shared runner with the built-in processors"})
    runner_id = runner["runner"]["id"]
    token = runner.get("token") or admin("POST", f"/v1/runners/{runner_id}:rotateToken", {})["token"]
    return Demo(customer_id, api_key, project_id, runner_id, token, type_ids)


def _job_type(customer: Rest, project_id: str, label: str, name: str, processor: str, cost: int,
              timeout: int) -> str:
    """The type's id, created once; a type an earlier version of this seed made differently is
    brought up to date rather than duplicated."""
    fields = {"name": name, "processorType": processor, "baseCostCents": cost, "timeoutSeconds": timeout,
              "description": f"built-in `{name}` processor"}
    status, made = customer.call("POST", f"/v1/projects/{project_id}/jobTypes?requestId={label}-type-{name}", fields)
    if 200 <= status < 300:
        return str(made["id"])
    listed = customer("GET", f"/v1/projects/{project_id}/jobTypes?pageSize=1000")
    existing = next((t for t in listed.get("jobTypes", []) if t["name"] == name), None)
    if existing is None:
        raise RestError("POST", f"/v1/projects/{project_id}/jobTypes", status, made)
    mask = "processorType,baseCostCents,timeoutSeconds,description"
    customer("PATCH", f"/v1/jobTypes/{existing['id']}?updateMask={mask}", fields)
    return str(existing["id"])


def _top_up(admin: Rest, customer_id: str, cents: int, request_id: str) -> None:
    # The wallet is opened by tenancy's outbox a moment after the customer exists.
    deadline = time.monotonic() + WALLET_WAIT_SECONDS
    while True:
        try:
            admin("POST", f"/v1/customers/{customer_id}/wallet:topUp",
                  {"amountCents": cents, "requestId": request_id, "description": "seed credit"})
            return
        except RestError as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# People to sign in with (the console): (e-mail, account, role). One password for all three.
DEMO_USERS = (
    ("demo@innosystem.local", "customer", "ROLE_OWNER"),
    ("viewer@innosystem.local", "customer", "ROLE_VIEWER"),
    ("admin@innosystem.local", "platform", "ROLE_OWNER"),
)


def seed_users(admin: Rest, customer_id: str, password: str) -> list[str]:
    """The demo's people, invited and accepted with `password`; the e-mails of those made now.
    A user an earlier start made keeps the password it got then (the platform stores no password
    it could hand back; `INNOSYSTEM_DEMO_PASSWORD` or the data folder keeps it the same)."""
    made = []
    for email, account, role in DEMO_USERS:
        path = f"/v1/customers/{customer_id}/users" if account == "customer" else "/v1/users"
        name = email.split("@")[0].title()
        status, invited = admin.call("POST", path, {"email": email, "displayName": f"{name} User", "role": role})
        if status == 409:
            continue
        if not 200 <= status < 300:
            raise RestError("POST", path, status, invited)
        admin("POST", f"/v1/invitations/{invited['invitationToken']}:accept", {"password": password})
        made.append(email)
    return made
