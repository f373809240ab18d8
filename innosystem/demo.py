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

# The runner SDK's built-in processors as catalog types (the shared runner serves only those):
# (name, processor type, timeout, price: model, unit price in cents, cap in cents).
JOB_TYPES = (
    ("echo", "PROCESSOR_TYPE_SYNC", 30, ("PRICE_MODEL_FLAT", 1, 0)),
    ("sleep", "PROCESSOR_TYPE_ASYNC", 300, ("PRICE_MODEL_PER_SECOND", 1, 300)),  # a cent a second, held for 300 s
    ("sha256", "PROCESSOR_TYPE_ASYNC", 30, ("PRICE_MODEL_FLAT", 1, 0)),  # reads payload.data by secure access
    ("fail", "PROCESSOR_TYPE_SYNC", 30, ("PRICE_MODEL_FLAT", 1, 0)),
)
CURRENCY = "USD"  # the embedded default's (INNOSYSTEM_BILLING_CURRENCY)


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
    """A reseller, customer (funded wallet), project and shared runner named for `label`, and the
    catalog types of the built-in processors with their prices (one catalog for every label); the
    benchmark seeds its own tenants under another label."""
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
    type_ids = {name: _catalog_type(admin, name, processor, timeout, price)
                for name, processor, timeout, price in JOB_TYPES}

    runner = admin("POST", f"/v1/runners?requestId={label}-runner",
                   {"name": f"{label}-runner", "scope": "RUNNER_SCOPE_SHARED",
                    "description": "a shared runner with the built-in processors"})
    runner_id = runner["runner"]["id"]
    token = runner.get("token") or admin("POST", f"/v1/runners/{runner_id}:rotateToken", {})["token"]
    return Demo(customer_id, api_key, project_id, runner_id, token, type_ids)


def _catalog_type(admin: Rest, name: str, processor: str, timeout: int, price: tuple[str, int, int]) -> str:
    """The catalog type's id, created once, with a price in CURRENCY if it has none yet (prices
    are versions: a repeat does not append another)."""
    fields = {"name": name, "processorType": processor, "timeoutSeconds": timeout,
              "description": f"built-in `{name}` processor"}
    status, made = admin.call("POST", f"/v1/jobTypes?requestId=catalog-{name}", fields)
    if not 200 <= status < 300:
        listed = admin("GET", f"/v1/jobTypes?name={name}")
        made = next((t for t in listed.get("jobTypes", []) if t["name"] == name), None)
        if made is None:
            raise RestError("POST", "/v1/jobTypes", status, made)
    type_id = str(made["id"])
    if not admin("GET", f"/v1/jobTypes/{type_id}/prices?currencyCode={CURRENCY}").get("prices"):
        model, unit, cap = price
        admin("POST", f"/v1/jobTypes/{type_id}/prices",
              {"currencyCode": CURRENCY, "model": model, "unitPriceCents": unit, "capCents": cap})
    return type_id


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
