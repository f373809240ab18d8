"""The caller's identity inside the platform, and how it travels between processes.

The gateway (or a service calling another) authenticates the caller once and sends the
resulting `Principal`, signed for one gRPC method, in two metadata entries:

    x-innosystem-principal      base64url(Principal bytes) "." expiry (unix seconds) "." method path
    x-innosystem-principal-sig  hex HMAC-SHA256(internal secret, the value above)

Outside callers do not hold the internal secret, so they cannot forge it. Because the method
path (`/innosystem.jobs.v1.JobService/CompleteJobs`) and a near expiry are inside what is
signed, a header seen on one call (in a log, a proxy, a compromised service) cannot be replayed
on another method, nor on the same one a minute later. The verifier enforces the lifetime too:
a header that claims to live longer than `LIFETIME_SECONDS` is refused, whatever its signer
asked for. A service reads the verified principal from `current()`; which principals may call
which internal method is `kit.callers`.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import hmac
import time
from collections.abc import Iterable

from google.protobuf.message import DecodeError

from innosystem.kit.errors import NotFound, PermissionDenied, Unauthenticated
from innosystem.tenancy.v1.tenancy_pb2 import Principal, PrincipalKind

PRINCIPAL_HEADER = "x-innosystem-principal"
SIGNATURE_HEADER = "x-innosystem-principal-sig"
# Long enough for a call to cross a busy hop (retries, a wait for a ready channel), short enough
# that a captured header is worth little. Service channels re-sign every quarter of it (`clients`).
LIFETIME_SECONDS = 60
# Hosts' clocks disagree a little (NTP keeps them well inside this); the expiry is the signer's clock.
CLOCK_SKEW_SECONDS = 5

ADMIN = PrincipalKind.PRINCIPAL_KIND_ADMIN
RESELLER = PrincipalKind.PRINCIPAL_KIND_RESELLER
CUSTOMER = PrincipalKind.PRINCIPAL_KIND_CUSTOMER
RUNNER = PrincipalKind.PRINCIPAL_KIND_RUNNER
SERVICE = PrincipalKind.PRINCIPAL_KIND_SERVICE

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """The HMAC already keyed with `secret`: every call copies it instead of hashing the key
    pads again (a process has one or two secrets, so the cache stays tiny)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def _mac(secret: bytes, value: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(value.encode())
    return mac.hexdigest()


def encode(principal: Principal) -> str:
    """The body part of the header; a signer that sends one principal often may keep it."""
    return base64.urlsafe_b64encode(principal.SerializeToString()).decode().rstrip("=")


def sign(principal: Principal | str, secret: bytes, method: str, ttl: int = LIFETIME_SECONDS,
         now: float | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata entries that carry `principal` (or its `encode`d body) on one call of `method`,
    the full gRPC path (`/package.Service/Method`), valid for `ttl` seconds from `now`."""
    body = principal if isinstance(principal, str) else encode(principal)
    value = f"{body}.{int(now if now is not None else time.time()) + ttl}.{method}"
    return ((PRINCIPAL_HEADER, value), (SIGNATURE_HEADER, _mac(secret, value)))


def verify(metadata: Iterable[tuple[str, str | bytes]], secret: bytes, method: str,
           now: float | None = None) -> Principal | None:
    """The principal in `metadata` for a call of `method`; None if there is none;
    Unauthenticated if it is forged, malformed, signed for another method or out of its lifetime."""
    value = sig = None
    for key, v in metadata:
        if key == PRINCIPAL_HEADER:
            value = v
        elif key == SIGNATURE_HEADER:
            sig = v
    if value is None and sig is None:
        return None
    if not isinstance(value, str) or not isinstance(sig, str):
        raise Unauthenticated("malformed principal metadata", reason="PRINCIPAL_MALFORMED")
    if not hmac.compare_digest(_mac(secret, value), sig):
        raise Unauthenticated("principal metadata signature does not verify", reason="PRINCIPAL_FORGED")
    # Only what this platform signed gets here: a malformed value is a signer's bug, not an attack.
    body, _, rest = value.partition(".")
    expiry, _, signed_for = rest.partition(".")
    if not expiry.isdigit() or not signed_for:
        raise Unauthenticated("malformed principal metadata", reason="PRINCIPAL_MALFORMED")
    if signed_for != method:
        raise Unauthenticated(f"principal metadata was signed for {signed_for}, not {method}",
                              reason="PRINCIPAL_METHOD_MISMATCH")
    now = time.time() if now is None else now
    if int(expiry) + CLOCK_SKEW_SECONDS < now:
        raise Unauthenticated("principal metadata expired", reason="PRINCIPAL_EXPIRED")
    if int(expiry) - now > LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
        raise Unauthenticated(f"principal metadata may live at most {LIFETIME_SECONDS}s",
                              reason="PRINCIPAL_LIFETIME_TOO_LONG")
    try:
        return Principal.FromString(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, DecodeError):  # binascii.Error is a ValueError
        raise Unauthenticated("malformed principal metadata", reason="PRINCIPAL_MALFORMED") from None


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
