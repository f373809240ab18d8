"""Issue 14 item 17: the table of internal callers (innosystem/kit/callers.py) matches the protos
and the code that calls them, so the bootstrap's check neither leaves an internal method open nor
refuses a real caller."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf.descriptor import MethodDescriptor

from innosystem.billing.v1 import billing_pb2
from innosystem.jobs.v1 import jobs_pb2
from innosystem.keys.v1 import access_logs_pb2, keys_pb2
from innosystem.kit import callers, principal
from innosystem.kit.config import SERVICES
from innosystem.kit.errors import PermissionDenied, Unauthenticated
from innosystem.runners.v1 import runners_pb2
from innosystem.tenancy.v1 import tenancy_pb2
from innosystem.tenancy.v1.tenancy_pb2 import Principal

ROOT = Path(__file__).resolve().parents[2]
# Internal without an HTTP rule but not a service-to-service call: runners hold this stream with a
# runner token (the runners service checks the principal is a runner).
NOT_SERVICE_TO_SERVICE = {"/innosystem.runners.v1.RunnerService/Connect"}
# Calls known to be in the code, so the search below is seen to find calls at all.
REAL_CALLS = {"/innosystem.billing.v1.BillingService/BatchReserve": {"jobs"},
              "/innosystem.jobs.v1.JobService/CompleteJobs": {"runners"},
              "/innosystem.keys.v1.KeyManagementService/SecureAccess": {"runners"},
              "/innosystem.tenancy.v1.TenancyService/Authenticate": {"gateway", "jobs", "runners"}}


def _methods() -> dict[str, MethodDescriptor]:
    out = {}
    for module in (billing_pb2, jobs_pb2, keys_pb2, access_logs_pb2, runners_pb2, tenancy_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out[f"/{service.full_name}/{method.name}"] = method
    return out


def test_every_name_in_the_table_is_a_method_and_every_caller_a_service() -> None:
    methods = _methods()
    assert set(callers.INTERNAL_CALLERS) <= set(methods)
    for method, allowed in callers.INTERNAL_CALLERS.items():
        assert allowed and allowed <= {*SERVICES, "gateway"}, method


def test_every_method_without_an_http_rule_has_its_callers_declared() -> None:
    """Internal RPCs are the ones a client cannot reach through the gateway (no HTTP rule): a new one
    is not callable until its callers are written down."""
    internal = {path for path, m in _methods().items() if not m.GetOptions().HasExtension(annotations_pb2.http)}
    assert internal - NOT_SERVICE_TO_SERVICE == set(callers.INTERNAL_CALLERS)


def _calls_in(package: Path, pattern: str) -> bool:
    return any(re.search(pattern, p.read_text()) for p in package.rglob("*.py"))


@pytest.mark.parametrize("method", sorted(callers.INTERNAL_CALLERS))
def test_every_service_whose_code_calls_an_internal_method_is_its_declared_caller(method: str) -> None:
    """From the code: who names the RPC (its own servicer aside) must be in the table. Authenticate
    is called through kit's ApiKeyAuthenticator, so its callers are whoever builds one."""
    name = method.rsplit("/", 1)[1]
    own = {"BillingService": "billing", "JobService": "jobs", "KeyManagementService": "keys",
           "RunnerService": "runners", "TenancyService": "tenancy"}[method.split("/")[1].rsplit(".", 1)[1]]
    packages = {s: ROOT / "services" / s for s in SERVICES} | {"gateway": ROOT / "gateway"}
    if name == "Authenticate":
        found = {s for s, p in packages.items() if _calls_in(p, r"\bApiKeyAuthenticator\(")}
    else:  # a stub attribute called, or the name handed to getattr
        found = {s for s, p in packages.items() if s != own and _calls_in(p, rf"\.{name}\(|\"{name}\"")}
    assert found <= callers.INTERNAL_CALLERS[method], (method, found)
    if method in REAL_CALLS:  # and the search finds what is known to be there
        assert REAL_CALLS[method] <= found, (method, found)


@pytest.mark.parametrize(("method", "service"), [
    ("/innosystem.billing.v1.BillingService/Reserve", "jobs"),
    ("/innosystem.billing.v1.BillingService/BatchCapture", "jobs"),
    ("/innosystem.billing.v1.BillingService/OpenWallet", "tenancy"),
    ("/innosystem.jobs.v1.JobService/CompleteJobs", "runners"),
    ("/innosystem.jobs.v1.JobService/GetLease", "keys"),
    ("/innosystem.keys.v1.KeyManagementService/EncryptFields", "jobs"),
    ("/innosystem.keys.v1.KeyManagementService/SecureAccess", "runners"),
    ("/innosystem.tenancy.v1.TenancyService/Authenticate", "gateway"),
])
def test_the_real_callers_are_allowed(method: str, service: str) -> None:
    callers.check(method, principal.service_principal(service))


@pytest.mark.parametrize(("method", "caller"), [
    ("/innosystem.billing.v1.BillingService/Reserve", principal.service_principal("keys")),
    ("/innosystem.billing.v1.BillingService/Capture", principal.service_principal("runners")),
    ("/innosystem.jobs.v1.JobService/CompleteJobs", principal.service_principal("jobs")),
    ("/innosystem.jobs.v1.JobService/CompleteJobs", Principal(kind=principal.CUSTOMER, customer_id="c")),
    ("/innosystem.keys.v1.KeyManagementService/EncryptFields", principal.service_principal("runners")),
    ("/innosystem.keys.v1.KeyManagementService/SecureAccess", Principal(kind=principal.RUNNER, runner_id="r")),
    ("/innosystem.tenancy.v1.TenancyService/Authenticate", Principal(kind=principal.ADMIN)),
])
def test_anyone_else_is_refused(method: str, caller: Principal) -> None:
    with pytest.raises(PermissionDenied) as err:
        callers.check(method, caller)
    assert err.value.reason == "CALLER_NOT_ALLOWED"


def test_no_principal_on_an_internal_method_is_unauthenticated_and_public_methods_are_not_checked() -> None:
    with pytest.raises(Unauthenticated):
        callers.check("/innosystem.billing.v1.BillingService/Reserve", None)
    callers.check("/innosystem.billing.v1.BillingService/GetWallet", None)
