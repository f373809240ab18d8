"""What each role may do: one table from public RPC to permission, checked by the bootstrap.

A person (a session) or an API key acts inside its account with one role. Which account's
resources it can see is the services' business (`scope`: NOT_FOUND beyond it); what it may do
with what it sees is decided here, before the servicer runs, from the method alone:
PERMISSION_DENIED (reason `PERMISSION_DENIED`) for a role without the method's permission. A
refusal here says nothing about any resource, so it leaks no other tenant's ids.

Runners and services are not people: they have no role and are held to their methods by
`callers` and by the services themselves. Every public RPC (one with a `google.api.http` rule)
is in `METHOD_PERMISSIONS`; a test holds the table to the protos, and a method missing from
it is refused to every role below ADMIN.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from innosystem.kit.errors import PermissionDenied
from innosystem.kit.principal import ADMIN, CUSTOMER, RESELLER
from innosystem.tenancy.v1.tenancy_pb2 import Principal, Role

OWNER, ADMIN_ROLE, DEVELOPER, BILLING, VIEWER = (Role.ROLE_OWNER, Role.ROLE_ADMIN, Role.ROLE_DEVELOPER,
                                                 Role.ROLE_BILLING, Role.ROLE_VIEWER)
ROLES = (OWNER, ADMIN_ROLE, DEVELOPER, BILLING, VIEWER)


class Permission(enum.Enum):
    READ = "read"  # any GET: every role reads what its account sees
    SELF = "self"  # one's own sign-in, profile and sessions (the service checks whose)
    ACCOUNT = "account"  # resellers, customers, users, API keys, rotation: the account's administration
    AUDIT = "audit"  # the account's audit log
    DEVELOP = "develop"  # projects, job types, jobs, runners, encryption keys, access-log channels
    BILLING = "billing"  # wallet settings, top-ups, reconciliation


GRANTS: Mapping[int, frozenset[Permission]] = MappingProxyType({
    OWNER: frozenset(Permission),
    ADMIN_ROLE: frozenset(Permission),
    DEVELOPER: frozenset({Permission.READ, Permission.SELF, Permission.DEVELOP}),
    BILLING: frozenset({Permission.READ, Permission.SELF, Permission.BILLING}),
    VIEWER: frozenset({Permission.READ, Permission.SELF}),
})

R, S, A, AU, D, B = (Permission.READ, Permission.SELF, Permission.ACCOUNT, Permission.AUDIT, Permission.DEVELOP,
                     Permission.BILLING)
_BY_SERVICE: dict[str, dict[str, Permission]] = {
    "innosystem.billing.v1.BillingService": {
        "GetWallet": R, "ListWalletTransactions": R, "GetCommissionStatement": R, "GetReconciliation": R,
        "ListReconciliations": R, "UpdateWallet": B, "TopUpWallet": B, "Reconcile": B,
        "ListCreditGrants": R, "ListSpendingLimits": R, "GetUsage": R, "GetResellerUsage": R, "ListWallets": R,
        "ListExchangeRates": R, "ListWalletEvents": R, "GetStatement": R,
        # refunds, adjustments, grants and exchange rates are also held to admins (and resellers) by the service
        "RefundWallet": B, "AdjustWallet": B, "GrantCredit": B, "SetSpendingLimit": B, "CreateWallet": B,
        "CreateExchangeRate": B,
    },
    "innosystem.jobs.v1.JobService": {
        "GetJobType": R, "ListJobTypes": R, "GetJob": R, "ListJobs": R, "WatchJob": R, "WatchJobs": R,
        "ListDeadLetterJobs": R, "GetQueueStats": R, "WatchQueueStats": R, "CreateJobType": D, "UpdateJobType": D,
        "DeleteJobType": D, "SubmitJob": D, "BatchSubmitJobs": D, "CancelJob": D, "RetryJob": D, "DeleteJob": D,
        "BatchCancelJobs": D, "BatchRetryJobs": D,
        "GetWebhook": R, "ListWebhooks": R, "ListWebhookDeliveries": R, "CreateWebhook": D, "DeleteWebhook": D,
        "RedeliverWebhookDelivery": D,
        # the catalog: everyone reads it, the service holds its changes to admins
        "ListCatalogJobTypes": R, "ListJobTypePrices": R, "CreateCatalogJobType": D, "AddJobTypePrice": D,
        "GetPriceMarkup": R, "UpdatePriceMarkup": B,  # the service holds the markup to the customer's reseller
    },
    "innosystem.tenancy.v1.TenancyService": {
        "GetReseller": R, "ListResellers": R, "GetCustomer": R, "ListCustomers": R, "GetProject": R,
        "ListProjects": R, "ListUsers": R, "ListApiKeys": R,
        "CreateReseller": A, "UpdateReseller": A, "DeleteReseller": A, "RotateResellerApiKey": A,
        "CreateCustomer": A, "UpdateCustomer": A, "DeleteCustomer": A, "RotateCustomerApiKey": A,
        "CreateUser": A, "DeactivateUser": A, "CreateApiKey": A, "DeleteApiKey": A,
        "ListAuditEvents": AU,
        "CreateProject": D, "UpdateProject": D, "DeleteProject": D,
        # the service checks that it is the caller's own (or that the caller administers the account)
        "GetMe": S, "GetUser": S, "UpdateUser": S, "GetCurrentSession": S, "DeleteCurrentSession": S,
        "ListSessions": S, "DeleteSession": S, "EnrollTotp": S, "ConfirmTotp": S, "DisableTotp": S,
        "SetTotpRequirement": A,  # and the service asks for an OWNER
        # public (no credentials at all): sign-in, invitations, password resets
        "CreateSession": S, "AcceptInvitation": S, "CreatePasswordReset": S, "CompletePasswordReset": S,
    },
    "innosystem.keys.v1.AccessLoggingService": {
        "ListAccessLogs": R, "VerifyAccessLogs": R, "WatchAccessLogs": R, "GetNotificationChannel": R,
        "ListNotificationChannels": R, "CreateNotificationChannel": D, "DeleteNotificationChannel": D,
    },
    "innosystem.keys.v1.KeyManagementService": {
        "GetClientKey": R, "ListClientKeys": R, "GetProjectKey": R, "CreateClientKey": D, "UpdateClientKey": D,
        "VerifyClientKey": D, "RotateClientKey": D, "DisableClientKey": D, "UpdateProjectKey": D,
        "RotateProjectKey": D,
        "DecryptFields": D,  # a read, but of a customer's plaintext: not for viewers
    },
    "innosystem.runners.v1.RunnerService": {
        "GetRunner": R, "ListRunners": R, "CreateRunner": D, "UpdateRunner": D, "DeleteRunner": D,
        "RotateRunnerToken": D,
    },
}

# gRPC method path (`/package.Service/Method`) → the permission it needs.
METHOD_PERMISSIONS: Mapping[str, Permission] = MappingProxyType({
    f"/{service}/{method}": permission for service, methods in _BY_SERVICE.items()
    for method, permission in methods.items()
})

# RPCs the gateway forwards without credentials; each guards itself (rate limits, one-time tokens).
PUBLIC_METHODS = frozenset(f"/innosystem.tenancy.v1.TenancyService/{m}" for m in (
    "CreateSession", "AcceptInvitation", "CreatePasswordReset", "CompletePasswordReset"))


def name(role: int) -> str:
    return Role.Name(Role.ValueType(role))


def role_of(principal: Principal) -> int:
    """The caller's role; an account's legacy key (no role) is its OWNER."""
    return principal.role or OWNER


def allows(principal: Principal, permission: Permission) -> bool:
    return permission in GRANTS.get(role_of(principal), frozenset())


def check(method: str, caller: Principal | None) -> None:
    """Refuse an account's person or key whose role lacks `method`'s permission. Runners,
    services and unauthenticated callers are not checked here (`callers`, the services)."""
    if caller is None or caller.kind not in (ADMIN, RESELLER, CUSTOMER):
        return
    permission = METHOD_PERMISSIONS.get(method)
    if caller.totp_enrollment_required and permission is not Permission.SELF:
        raise PermissionDenied("this account requires a second factor: enrol TOTP first (POST "
                               f"/v1/users/{caller.user_id}:enrollTotp)", reason="TOTP_ENROLLMENT_REQUIRED")
    if permission is None:  # not a public method of this table: only an account's administrators
        if role_of(caller) in (OWNER, ADMIN_ROLE):
            return
        raise PermissionDenied(f"role {name(role_of(caller))} may not call {method}", reason="PERMISSION_DENIED")
    if not allows(caller, permission):
        raise PermissionDenied(f"role {name(role_of(caller))} lacks the {permission.value!r} permission "
                               f"that {method.rsplit('/', 1)[-1]} needs", reason="PERMISSION_DENIED")


def require(caller: Principal, permission: Permission, what: str) -> None:
    """For a service deciding inside a method (e.g. a role change within UpdateUser)."""
    if caller.kind in (ADMIN, RESELLER, CUSTOMER) and not allows(caller, permission):
        raise PermissionDenied(f"role {name(role_of(caller))} may not {what}", reason="PERMISSION_DENIED")
