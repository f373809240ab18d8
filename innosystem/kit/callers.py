"""Which services may call which internal method: the one table, enforced by the bootstrap.

Internal RPCs (the ones without a `google.api.http` rule) move money, leases, keys and
identities between services. Being an InnoSystem service is not enough to call one: a
compromised or buggy `keys` must not reserve money, and a customer's principal (forwarded by the
gateway) or an admin's never reaches them. `kit.server` checks every call of a method named here
against its callers before the servicer runs; a method not named here is public and checks its
caller's role itself. A test holds this table to the protos (every method without an HTTP rule
is here, every name here exists) and to the code that calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from innosystem.kit.errors import PermissionDenied, Unauthenticated
from innosystem.kit.principal import SERVICE
from innosystem.tenancy.v1.tenancy_pb2 import Principal

# proto service → method → the services (the name each signs as, see `clients.channel`) that call it.
_BY_SERVICE: dict[str, dict[str, frozenset[str]]] = {
    "innosystem.billing.v1.BillingService": {
        "OpenWallet": frozenset({"tenancy"}),  # a new customer's wallet (tenancy's wallet outbox)
        # Open-to-Buy: holds at submit, settled at completion or cancel (services/jobs/billing.py)
        "Reserve": frozenset({"jobs"}),
        "Capture": frozenset({"jobs"}),
        "Release": frozenset({"jobs"}),
        "BatchReserve": frozenset({"jobs"}),
        "BatchCapture": frozenset({"jobs"}),
        "BatchRelease": frozenset({"jobs"}),
        "BatchExtend": frozenset({"jobs"}),
        "ListActiveHolds": frozenset({"jobs"}),  # holds of submits that died before their job's commit
        # wallet.low_balance: jobs' webhook fan-out (services/jobs/deliveries.py) and keys'
        # notification channels (services/keys/walletfeed.py) read the stored events
        "ListWalletEventsAfter": frozenset({"jobs", "keys"}),
    },
    "innosystem.jobs.v1.JobService": {
        # the runner stream's lease loop, result path and cancel feed (services/runners)
        "LeaseJobs": frozenset({"runners"}),
        "CompleteJobs": frozenset({"runners"}),
        "Relay": frozenset({"runners"}),  # LeaseJobs and CompleteJobs on one stream
        "ExtendLeases": frozenset({"runners"}),
        "ReleaseLeases": frozenset({"runners"}),
        "WatchCancellations": frozenset({"runners"}),
        "GetLease": frozenset({"keys"}),  # secure access confirms the runner holds the lease
    },
    "innosystem.keys.v1.KeyManagementService": {
        "EncryptFields": frozenset({"jobs"}),  # payloads at submit, results at completion
        # The proto names these callers; nothing in the tree calls them over gRPC yet.
        "GenerateDataKey": frozenset({"jobs", "keys"}),
        "RewrapDataKey": frozenset({"keys"}),
        # relayed for the runner that holds the job's lease (services/runners/hub.py)
        "SecureAccess": frozenset({"runners"}),
        "CompleteSecureAccess": frozenset({"runners"}),
    },
    "innosystem.runners.v1.RunnerService": {
        # The proto's caller; runners resolves its own tokens today, so nothing calls it yet.
        "AuthenticateRunner": frozenset({"tenancy"}),
    },
    "innosystem.tenancy.v1.TenancyService": {
        # API key → principal: the gateway for REST, jobs and runners for direct gRPC callers
        "Authenticate": frozenset({"gateway", "jobs", "runners"}),
        # administrative actions of other services, for the audit log (kit/audit.py)
        "RecordAuditEvent": frozenset({"billing", "jobs", "keys"}),
    },
}

# gRPC method path (`/package.Service/Method`, what a server interceptor sees) → its callers.
INTERNAL_CALLERS: Mapping[str, frozenset[str]] = MappingProxyType({
    f"/{service}/{method}": callers for service, methods in _BY_SERVICE.items() for method, callers in methods.items()
})


def check(method: str, caller: Principal | None) -> None:
    """Refuse `caller` on `method` unless the table allows it; a method not in it is not checked."""
    allowed = INTERNAL_CALLERS.get(method)
    if allowed is None:
        return
    if caller is None:
        raise Unauthenticated("this internal method needs a service's signed principal", reason="NO_CREDENTIALS")
    if caller.kind != SERVICE or caller.service not in allowed:
        who = f"service {caller.service!r}" if caller.kind == SERVICE else "this principal"
        raise PermissionDenied(f"{who} may not call {method}", reason="CALLER_NOT_ALLOWED")
