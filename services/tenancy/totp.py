"""The second factor: TOTP (RFC 6238, pyotp) with one-time recovery codes.

A TOTP secret must be readable to check a code, so it is sealed, not hashed: AES-256-GCM under
a key derived from the API-key pepper, bound to the user's id (a sealed secret copied to another
user does not open). Recovery codes are keyed hashes and each works once; a TOTP code works once
too (the last accepted time step is kept), so a code seen over a shoulder is spent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime

import pyotp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from innosystem.kit import roles
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import InvalidArgument, PermissionDenied
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy import audit, visibility
from services.tenancy.models import User
from services.tenancy.repository import TenancyRepository
from services.tenancy.service import Revoked

ISSUER = "InnoSystem"
RECOVERY_CODES = 10
_NONCE = 12


class Sealer:
    def __init__(self, pepper: bytes) -> None:
        self._aead = AESGCM(hmac.new(pepper, b"innosystem totp secret seal", hashlib.sha256).digest())

    def seal(self, user_id: uuid.UUID, secret: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, secret.encode(), user_id.bytes)

    def open(self, user_id: uuid.UUID, sealed: bytes) -> str:
        return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], user_id.bytes).decode()


def _accepted_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step `code` belongs to (this one or a neighbour, for clock drift), if it is
    newer than the last one spent; None otherwise."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if (last_step is None or step > last_step) and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


class SecondFactor:
    def __init__(self, db: Database, hash_token: Callable[[str], bytes], pepper: bytes,
                 on_access_revoked: Revoked) -> None:
        self.db = db
        self._hash = hash_token
        self._sealer = Sealer(pepper)
        self._revoked = on_access_revoked

    async def enroll(self, caller: Principal, user_id: str) -> tuple[str, str]:
        """A fresh secret and its otpauth:// URI; nothing changes until `confirm`."""
        async with self.db.session() as s:
            user = await visibility.user(TenancyRepository(s), caller, user_id)
        _self_only(caller, user)
        secret = pyotp.random_base32()
        return secret, pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)

    async def confirm(self, caller: Principal, user_id: str, secret: str, code: str) -> tuple[User, list[str]]:
        secret = secret.strip().replace(" ", "").upper()
        try:
            pyotp.TOTP(secret).now()
        except (ValueError, TypeError):
            raise InvalidArgument("secret is not the one EnrollTotp answered", field="secret",
                                  reason="INVALID_TOTP_SECRET") from None
        step = _accepted_step(secret, code.strip(), utcnow(), None)
        if step is None:
            raise InvalidArgument("code does not match the secret (check the device's clock)", field="code",
                                  reason="INVALID_TOTP_CODE")
        codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user = await visibility.user(repo, caller, user_id, lock=True)
            _self_only(caller, user)
            user.totp_secret = self._sealer.seal(user.id, secret)
            user.totp_last_step = step
            user.recovery_codes = [self._hash(c) for c in codes]
            await audit.record(repo, caller, "ConfirmTotp", visibility.account_of(user), target=f"users/{user.id}")
            await s.flush()
        await self._revoked(user_id=str(user.id))  # its sessions no longer need to enrol
        return user, codes

    async def disable(self, caller: Principal, user_id: str) -> User:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user = await visibility.user(repo, caller, user_id, lock=True)
            if str(user.id) != caller.user_id:
                visibility.may_manage(caller, visibility.account_of(user))
            user.totp_secret, user.totp_last_step, user.recovery_codes = None, None, []
            await audit.record(repo, caller, "DisableTotp", visibility.account_of(user), target=f"users/{user.id}")
            await s.flush()
        await self._revoked(user_id=str(user.id))
        return user

    async def verify(self, user_id: uuid.UUID, code: str) -> bool:
        """Whether `code` (a TOTP code or an unused recovery code) is good; spends it if so."""
        code = code.strip()
        async with self.db.session() as s:
            user = await TenancyRepository(s).get_user(user_id, lock=True)
            if user is None or user.totp_secret is None:
                return False
            secret = self._sealer.open(user.id, user.totp_secret)
            step = _accepted_step(secret, code, utcnow(), user.totp_last_step) if code.isdigit() else None
            if step is not None:
                user.totp_last_step = step
                return True
            digest = self._hash(code.lower())
            if any(hmac.compare_digest(digest, c) for c in user.recovery_codes):
                user.recovery_codes = [c for c in user.recovery_codes if not hmac.compare_digest(digest, c)]
                return True
            return False

    async def set_requirement(self, caller: Principal, customer_id: str, reseller_id: str, required: bool) -> bool:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            account, customers_reseller = await visibility.account(repo, caller, customer_id, reseller_id,
                                                                   manage=True)
            if roles.role_of(caller) != roles.OWNER:
                raise PermissionDenied("only an OWNER may require or stop requiring TOTP", reason="OWNER_ONLY")
            await repo.set_totp_requirement(account, required)
            await audit.record(repo, caller, "SetTotpRequirement", account, detail=f"required={required}",
                               reseller_id=customers_reseller)
        # Cached sessions of the account carry the old rule.
        if account.customer_id is not None:
            await self._revoked(customer_id=str(account.customer_id))
        elif account.reseller_id is not None:
            await self._revoked(reseller_id=str(account.reseller_id))
        else:
            await self._revoked(everyone=True)
        return required


def _self_only(caller: Principal, user: User) -> None:
    if str(user.id) != caller.user_id:
        raise PermissionDenied("only the user itself, signed in, enrols its second factor", reason="SELF_ONLY")

