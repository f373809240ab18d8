"""The caller's identity inside the platform, and how it travels between processes.

The gateway (or a service calling another) authenticates the caller once and sends the
resulting `Principal` in two metadata entries:

    x-innosystem-principal      base64url(Principal bytes) + "." + expiry (unix seconds)
    x-innosystem-principal-sig  hex HMAC-SHA256(internal secret, the value above)

Outside callers do not hold the internal secret, so they cannot forge it; the expiry bounds
replay of a captured header. A service reads the verified principal from `current()`.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import time
from collections.abc import Iterable

from innosystem.kit.errors import NotFound, PermissionDenied, Unauthenticated
from innosystem.tenancy.v1.tenancy_pb2 import Principal, PrincipalKind

PRINCIPAL_HEADER = "x-innosystem-principal"
SIGNATURE_HEADER = "x-innosystem-principal-sig"
DEFAULT_TTL_SECONDS = 300

ADMIN = PrincipalKind.PRINCIPAL_KIND_ADMIN
RESELLER = PrincipalKind.PRINCIPAL_KIND_RESELLER
CUSTOMER = PrincipalKind.PRINCIPAL_KIND_CUSTOMER
RUNNER = PrincipalKind.PRINCIPAL_KIND_RUNNER
SERVICE = PrincipalKind.PRINCIPAL_KIND_SERVICE

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def sign(principal: Principal, secret: bytes, ttl: int = DEFAULT_TTL_SECONDS) -> tuple[tuple[str, str], ...]:
    """Metadata entries that carry `principal` to another service."""
    body = base64.urlsafe_b64encode(principal.SerializeToString()).decode().rstrip("=")
    value = f"{body}.{int(time.time()) + ttl}"
    sig = hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()
    return ((PRINCIPAL_HEADER, value), (SIGNATURE_HEADER, sig))


def verify(metadata: Iterable[tuple[str, str | bytes]], secret: bytes) -> Principal | None:
    """The principal in `metadata`; None if there is none; Unauthenticated if it is forged or stale."""
    entries = {k: v for k, v in metadata if k in (PRINCIPAL_HEADER, SIGNATURE_HEADER)}
    value, sig = entries.get(PRINCIPAL_HEADER), entries.get(SIGNATURE_HEADER)
    if value is None and sig is None:
        return None
    if not isinstance(value, str) or not isinstance(sig, str):
        raise Unauthenticated("malformed principal metadata", reason="PRINCIPAL_MALFORMED")
    expected = hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        raise Unauthenticated("principal metadata signature does not verify", reason="PRINCIPAL_FORGED")
    body, _, expiry = value.rpartition(".")
    if not expiry.isdigit() or int(expiry) < time.time():
        raise Unauthenticated("principal metadata expired", reason="PRINCIPAL_EXPIRED")
    return Principal.FromString(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def service_principal(service: str) -> Principal:
    return Principal(kind=SERVICE, service=service)


def current() -> Principal:
    """The authenticated caller of the RPC being served; UNAUTHENTICATED if there is none."""
    principal = _current.get()
    if principal is None or principal.kind == PrincipalKind.PRINCIPAL_KIND_UNSPECIFIED:
        raise Unauthenticated("this method needs an API key (Authorization: Bearer …)", reason="NO_CREDENTIALS")
    return principal


def current_or_none() -> Principal | None:
    return _current.get()


def bind(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


def account(principal: Principal) -> str:
    """Whose idempotency keys a caller's request ids are: its account, not the API key it used,
    so a rotated key (or the admin key `innosystem up` makes at each start) finds its earlier requests."""
    return principal.customer_id or principal.reseller_id or principal.service or f"kind-{principal.kind}"


def require_admin(principal: Principal) -> None:
    if principal.kind != ADMIN:
        raise PermissionDenied("only an admin may do this", reason="ADMIN_ONLY")


def require_service(principal: Principal, *services: str) -> None:
    """Internal methods: only InnoSystem services (optionally, only the named ones) may call."""
    if principal.kind != SERVICE or (services and principal.service not in services):
        raise PermissionDenied("internal method", reason="INTERNAL_ONLY")


def can_see_customer(principal: Principal, customer_id: str, customer_reseller_id: str) -> bool:
    """Tenant visibility of one customer: admin all, reseller its own, customer itself."""
    if principal.kind in (ADMIN, SERVICE):
        return True
    if principal.kind == RESELLER:
        return bool(customer_reseller_id) and customer_reseller_id == principal.reseller_id
    if principal.kind in (CUSTOMER, RUNNER):
        return principal.customer_id == customer_id
    return False


def ensure_customer_visible(principal: Principal, customer_id: str, customer_reseller_id: str,
                            what: str = "customer") -> None:
    """NOT_FOUND (never PERMISSION_DENIED) so ids of other tenants do not leak."""
    if not can_see_customer(principal, customer_id, customer_reseller_id):
        raise NotFound(f"{what} not found", reason=f"{what.upper()}_NOT_FOUND")
