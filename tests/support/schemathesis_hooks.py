"""schemathesis hooks for the contract test (loaded through SCHEMATHESIS_HOOKS).

Value generators for the formats the OpenAPI document names but JSON Schema cannot describe:

- `page-token`: opaque; the only values a client can have are "" (the first page) and a
  `nextPageToken` the list returned, so generated requests ask for the first page.
- `request-id`: an idempotency key, one per logical request. A key reused with another body is
  refused, as it must be, so every schema-valid request gets a fresh one (below; the generator's
  own value may be reused across cases).
- `iso-4217`: an active ISO 4217 currency code (the list in innosystem/kit/currencies.py).
- `https-url`: the document states the egress guard's first rule (https); whether the host
  resolves to a public address is decided at the call. Generated URLs name a public host under a
  reserved name (RFC 2606) that the guard accepts without sending anything.

And, for schema-valid requests only, the rules that relate a value to the clock, to another
field or to a list, which JSON Schema cannot state (docs/openapi.md lists them): an `expireTime`
is in the future (and within 10 years); a usage report's `endTime` is after its `startTime` and
at most 400 days later; an exchange rate converts between two different currencies; a password is
not one of the common ones; a batch's jobs name no other project; an update mask names only
fields the body sets; a URL's host resolves to a public address (the egress guard); a
customer-owned runner registered by an admin names its customer; a job type has an
`externalApi` if and only if it is an EXTERNAL_API type; a retry policy's multiplier is 0 (the
default) or at least 1, and its longest delay 0 (the default) or at least its first delay; a
job type's maximum cost is 0 (the base cost) or at least its base cost. A generated value that breaks
one is moved inside it; schema-violating requests are sent as generated.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from innosystem.kit.currencies import ISO_4217
from services.tenancy.passwords import _common as common_passwords

schemathesis.openapi.format("page-token", st.just(""))
schemathesis.openapi.format("request-id", st.just("contract"))  # made unique per case in map_case
schemathesis.openapi.format("iso-4217", st.sampled_from(sorted(ISO_4217)))
schemathesis.openapi.format("https-url", st.builds(
    "https://hooks.example.com/{}".format, st.text("abcdefghijklmnopqrstuvwxyz0123456789-_/", max_size=40)))


def _time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _retry_policy(policy: dict[str, Any]) -> None:
    """0 or ≥ 1 for the multiplier; 0 or ≥ the first delay for the longest delay."""
    multiplier = policy.get("backoffMultiplier")
    if isinstance(multiplier, (int, float)) and 0 < multiplier < 1:
        policy["backoffMultiplier"] = 1.0
    first, longest = policy.get("initialIntervalSeconds") or 0, policy.get("maxIntervalSeconds") or 0
    if isinstance(first, int) and isinstance(longest, int) and 0 < longest < first:
        policy["maxIntervalSeconds"] = first


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return case
    now = datetime.now(UTC)
    body = case.body if isinstance(case.body, dict) else None
    query = case.query if isinstance(case.query, dict) else None
    for part in (body, query, *(r for r in (body or {}).get("requests") or () if isinstance(r, dict))):
        if part is not None and isinstance(part.get("requestId"), str):
            part["requestId"] = f"contract-{uuid.uuid4().hex}"
    if body is not None and isinstance(body.get("password"), str) and body["password"].lower() in common_passwords():
        body["password"] = f"contract-{uuid.uuid4().hex}"
    for name in ("url", "webhookUrl", "endpointUrl"):
        if body is not None and isinstance(body.get(name), str) and body[name].startswith("https://") \
                and not body[name].startswith("https://hooks.example.com/"):
            body[name] = "https://hooks.example.com/" + body[name].removeprefix("https://").partition("/")[2]
    if body is not None and case.path == "/v1/runners" and case.method == "POST" and not body.get("customerId") \
            and body.get("scope") in (2, "RUNNER_SCOPE_CUSTOMER"):
        body.pop("scope")
    for part in (body, query):
        for name, value in (part or {}).items():
            if name.endswith("urrencyCode") and isinstance(value, str) and value and value not in ISO_4217:
                part[name] = "USD"  # format iso-4217: only the active codes (the pattern cannot say which)
    if body is not None and "/jobTypes" in case.path and int(body.get("baseCostCents") or 0) > int(
            body.get("maxCostCents") or 0):
        # 0 (= the base cost) or at least the base cost; in an update 0 keeps the stored maximum,
        # which may be below the new base cost, so the maximum comes along
        body["maxCostCents"] = body["baseCostCents"]
    if body is not None and "/jobTypes" in case.path:  # `externalApi` if and only if an EXTERNAL_API type
        if body.get("externalApi"):
            body["processorType"] = "PROCESSOR_TYPE_EXTERNAL_API"
        elif body.get("processorType") in (3, "PROCESSOR_TYPE_EXTERNAL_API"):
            body.pop("processorType")
    for holder in (body, *((body or {}).get("requests") or ())):
        for name in ("defaultRetryPolicy", "retryPolicy"):
            policy = holder.get(name) if isinstance(holder, dict) else None
            if isinstance(policy, dict):
                _retry_policy(policy)
    if body is not None and case.path.endswith("/jobs:batchSubmit"):
        for item in body.get("requests") or ():
            if isinstance(item, dict) and item.get("projectId"):
                item["projectId"] = ""
    if query is not None and case.method == "PATCH" and query.get("updateMask") and body is not None:
        named = [p.strip() for p in str(query["updateMask"]).split(",")]
        if any(body.get(_camel(p)) in (None, "", [], 0) for p in named):
            query["updateMask"] = ""
    if body is not None and "expireTime" in body:
        at = _time(body["expireTime"])
        if at is not None and not now + timedelta(minutes=5) < at < now + timedelta(days=3650):
            body["expireTime"] = _stamp(now + timedelta(days=30))
    if body is not None and case.path.endswith("/prices") and case.method == "POST" and "effectiveTime" in body:
        at = _time(body["effectiveTime"])  # now or later, at most ten years ahead
        if at is not None and not now + timedelta(minutes=5) < at < now + timedelta(days=3650):
            body["effectiveTime"] = _stamp(now + timedelta(days=1))
    if body is not None and case.path.endswith("/prices") and case.method == "POST":
        # a flat price has no cap; a per-second or per-unit price's cap is at least its unit price
        if body.get("model") in (None, 0, 1, "PRICE_MODEL_UNSPECIFIED", "PRICE_MODEL_FLAT"):
            body["capCents"] = "0"
        elif int(body.get("capCents") or 0) < int(body.get("unitPriceCents") or 0):
            body["capCents"] = str(body.get("unitPriceCents") or 0)
    if body is not None and case.path.endswith(("/jobs:batchCancel", "/jobs:batchRetry")):
        flt = body.get("filter")  # at least one of its fields set: an action on every job is refused
        if isinstance(flt, dict) and not any(v not in (None, "", 0, "JOB_STATUS_UNSPECIFIED",
                                                       "PRIORITY_LEVEL_UNSPECIFIED") for v in flt.values()):
            flt["requestId"] = f"contract-{uuid.uuid4().hex}"
    if body is not None and case.path == "/v1/exchangeRates" and case.method == "POST" \
            and body.get("baseCurrencyCode") == body.get("quoteCurrencyCode"):
        body["quoteCurrencyCode"] = "EUR" if body.get("baseCurrencyCode") != "EUR" else "USD"
    if query is not None and case.path.endswith("/usage"):
        start, end = _time(query.get("startTime")), _time(query.get("endTime"))
        start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = end or now
        if not start < end <= start + timedelta(days=400):
            query.pop("startTime", None)
            query.pop("endTime", None)
    return case
