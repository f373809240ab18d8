"""The role table: every public RPC has a permission, every name in it exists, grants are as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.descriptors import build_pool, parse_descriptor_set
from gateway.routes import load_routes
from innosystem.kit import roles
from innosystem.kit.errors import PermissionDenied
from innosystem.kit.principal import ADMIN, CUSTOMER, RUNNER
from innosystem.tenancy.v1.tenancy_pb2 import Principal, Role

DESCRIPTORS = Path(__file__).resolve().parents[2] / "innosystem" / "descriptors.binpb"


def _public_rpcs() -> set[str]:
    files = parse_descriptor_set(DESCRIPTORS.read_bytes())
    return {route.rpc.grpc_path for route in load_routes(files, build_pool(files))}


def test_every_public_rpc_has_a_permission_and_every_entry_exists() -> None:
    public = _public_rpcs()
    assert public - set(roles.METHOD_PERMISSIONS) == set()
    assert set(roles.METHOD_PERMISSIONS) - public == set()
    assert roles.PUBLIC_METHODS <= public


@pytest.mark.parametrize(("role", "method", "allowed"), [
    (Role.ROLE_VIEWER, "/innosystem.jobs.v1.JobService/GetJob", True),
    (Role.ROLE_VIEWER, "/innosystem.jobs.v1.JobService/SubmitJob", False),
    (Role.ROLE_VIEWER, "/innosystem.keys.v1.KeyManagementService/DecryptFields", False),
    (Role.ROLE_BILLING, "/innosystem.billing.v1.BillingService/TopUpWallet", True),
    (Role.ROLE_BILLING, "/innosystem.tenancy.v1.TenancyService/DeleteProject", False),
    (Role.ROLE_DEVELOPER, "/innosystem.tenancy.v1.TenancyService/DeleteProject", True),
    (Role.ROLE_DEVELOPER, "/innosystem.tenancy.v1.TenancyService/CreateApiKey", False),
    (Role.ROLE_DEVELOPER, "/innosystem.billing.v1.BillingService/TopUpWallet", False),
    (Role.ROLE_ADMIN, "/innosystem.tenancy.v1.TenancyService/CreateApiKey", True),
    (Role.ROLE_VIEWER, "/innosystem.tenancy.v1.TenancyService/UpdateUser", True),  # its own profile
    (Role.ROLE_VIEWER, "/innosystem.tenancy.v1.TenancyService/ListAuditEvents", False),
    (Role.ROLE_VIEWER, "/innosystem.tenancy.v1.TenancyService/NotInTheTable", False),
    (Role.ROLE_ADMIN, "/innosystem.tenancy.v1.TenancyService/NotInTheTable", True),
])
def test_role_checks(role: int, method: str, allowed: bool) -> None:
    caller = Principal(kind=CUSTOMER, customer_id="c", role=role)  # type: ignore[arg-type]
    if allowed:
        roles.check(method, caller)
    else:
        with pytest.raises(PermissionDenied) as denied:
            roles.check(method, caller)
        assert denied.value.reason == "PERMISSION_DENIED"


def test_a_legacy_key_without_a_role_is_its_accounts_owner() -> None:
    legacy = Principal(kind=ADMIN)
    assert roles.role_of(legacy) == Role.ROLE_OWNER
    roles.check("/innosystem.tenancy.v1.TenancyService/CreateApiKey", legacy)


def test_runners_and_services_are_not_held_to_roles() -> None:
    roles.check("/innosystem.jobs.v1.JobService/SubmitJob", Principal(kind=RUNNER, role=Role.ROLE_VIEWER))
    roles.check("/innosystem.jobs.v1.JobService/SubmitJob", None)
