"""People of an account: invite, accept, list, change, deactivate, reset a password.

Invitation and reset tokens are one-time, stored as keyed hashes, valid for a bounded time;
the invitation's token is answered to the inviter (and mailed), a reset's only mailed. Every
change is audited in its own transaction.
"""

from __future__ import annotations

import re
import secrets
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from innosystem.kit import pagination, roles
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy import audit, visibility
from services.tenancy.accounts import Account
from services.tenancy.mailer import Mailer
from services.tenancy.models import User, UserToken
from services.tenancy.passwords import check_policy, hash_password
from services.tenancy.repository import TenancyRepository
from services.tenancy.service import Revoked

INVITATION, RESET = "invitation", "reset"
INVITATION_TTL, RESET_TTL = timedelta(days=7), timedelta(hours=1)
LOCALES = ("", "en", "fi", "sv")
_TOKEN_PREFIX = {INVITATION: "isi_", RESET: "isp_"}
# The document's pattern (tenancy.proto), whose \s (ECMA-262) also covers U+FEFF.
_EMAIL = re.compile(r"^[^@\s\ufeff\x00]+@[^@\s\ufeff\x00]+\.[^@\s\ufeff\x00]+$")


@dataclass(frozen=True)
class Invited:
    user: User
    token: str


def check_role(role: int, field: str = "role") -> None:
    if role not in roles.ROLES:
        raise InvalidArgument(f"{field} must be one of ROLE_OWNER, ROLE_ADMIN, ROLE_DEVELOPER, ROLE_BILLING, "
                              "ROLE_VIEWER", field=field, reason="INVALID_ROLE")


def check_grant(caller: Principal, role: int) -> None:
    """Only an OWNER makes (or unmakes) an OWNER: an ADMIN cannot raise itself above its role."""
    if role == roles.OWNER and roles.role_of(caller) != roles.OWNER:
        raise PermissionDenied("only an OWNER may grant or take away the OWNER role", field="role",
                               reason="OWNER_ONLY")


def _profile(changes: dict[str, Any]) -> None:
    if "display_name" in changes:
        changes["display_name"] = changes["display_name"].strip()
        if len(changes["display_name"]) > 200:
            raise InvalidArgument("display_name must be at most 200 characters", field="display_name",
                                  reason="INVALID_NAME")
    if changes.get("locale", "") not in LOCALES:
        raise InvalidArgument("locale must be en, fi or sv (or empty)", field="locale", reason="INVALID_LOCALE")
    if changes.get("time_zone"):
        try:
            zoneinfo.ZoneInfo(changes["time_zone"])
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise InvalidArgument("time_zone must be an IANA time zone such as Europe/Helsinki",
                                  field="time_zone", reason="INVALID_TIME_ZONE") from None


class Users:
    def __init__(self, db: Database, hash_token: Any, mailer: Mailer, on_access_revoked: Revoked) -> None:
        self.db = db
        self._hash = hash_token  # the keyed hash API keys use (TenancyService.hash_key)
        self._mailer = mailer
        self._revoked = on_access_revoked

    async def _issue_token(self, repo: TenancyRepository, user_id: uuid.UUID, purpose: str) -> str:
        token = _TOKEN_PREFIX[purpose] + secrets.token_urlsafe(32)
        ttl = INVITATION_TTL if purpose == INVITATION else RESET_TTL
        await repo.add(UserToken(token_hash=self._hash(token), user_id=user_id, purpose=purpose,
                                 expire_time=utcnow() + ttl))
        return token

    async def invite(self, caller: Principal, customer_id: str, reseller_id: str, email: str, display_name: str,
                     role: int) -> Invited:
        email = email.strip()
        if len(email) > 320 or not _EMAIL.match(email):
            raise InvalidArgument(f"email {email!r} is not an email address", field="email", reason="INVALID_EMAIL")
        check_role(role)
        fields = {"display_name": display_name}
        _profile(fields)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            account, customers_reseller = await visibility.account(repo, caller, customer_id, reseller_id,
                                                                   manage=True)
            check_grant(caller, role)
            if await repo.email_taken(email):
                raise AlreadyExists(f"a user with e-mail {email} exists", field="email", reason="EMAIL_TAKEN")
            user = User(id=uuid.uuid4(), account_kind=account.kind, email=email, role=role, active=True,
                        **fields, **account.row_ids())
            await repo.add(user)
            token = await self._issue_token(repo, user.id, INVITATION)
            await audit.record(repo, caller, "CreateUser", account, target=f"users/{user.id}",
                               detail=f"invited {email} as {roles.name(role)}", reseller_id=customers_reseller)
        await self._mailer.send_link(email, "Your InnoSystem invitation", "accept-invitation", token)
        return Invited(user, token)

    async def accept(self, token: str, password: str) -> User:
        check_policy(password)
        digest = await hash_password(password)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user_id = await repo.use_token(self._hash(token), INVITATION, utcnow())
            user = await repo.get_user(user_id, lock=True) if user_id is not None else None
            if user is None or not user.active:
                raise NotFound("the invitation is unknown, already used or expired", reason="INVITATION_INVALID")
            user.password_hash = digest
            await audit.record(repo, _as_user(user), "AcceptInvitation", visibility.account_of(user),
                               target=f"users/{user.id}")
            await s.flush()
            return user

    async def request_reset(self, email: str) -> None:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user = await repo.find_user(email.strip())
            if user is None or not user.active:
                return  # the same answer: no enumeration of addresses
            token = await self._issue_token(repo, user.id, RESET)
            await audit.record(repo, _as_user(user), "CreatePasswordReset", visibility.account_of(user),
                               target=f"users/{user.id}")
        await self._mailer.send_link(user.email, "Reset your InnoSystem password", "reset-password", token)

    async def complete_reset(self, token: str, password: str) -> None:
        check_policy(password)
        digest = await hash_password(password)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user_id = await repo.use_token(self._hash(token), RESET, utcnow())
            user = await repo.get_user(user_id, lock=True) if user_id is not None else None
            if user is None or not user.active:
                raise NotFound("the reset token is unknown, already used or expired", reason="RESET_TOKEN_INVALID")
            user.password_hash, user.failed_logins, user.locked_until = digest, 0, None
            await repo.revoke_sessions(user.id)  # whoever knew the old password is signed out
            await audit.record(repo, _as_user(user), "CompletePasswordReset", visibility.account_of(user),
                               target=f"users/{user.id}")
        await self._revoked(user_id=str(user.id))

    async def get(self, caller: Principal, user_id: str) -> User:
        async with self.db.session() as s:
            return await visibility.user(TenancyRepository(s), caller, user_id)

    async def list(self, caller: Principal, customer_id: str, reseller_id: str, size: int,
                   token: str) -> pagination.Page:
        size = pagination.page_size(size)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            account, _ = await visibility.account(repo, caller, customer_id, reseller_id, manage=False)
            rows = await repo.list_users(account, size + 1, pagination.decode_keyset(token))
        return pagination.keyset_page(rows, size)

    async def update(self, caller: Principal, user_id: str, changes: dict[str, Any]) -> User:
        unknown = set(changes) - {"display_name", "locale", "time_zone", "role"}
        if unknown:
            raise InvalidArgument(f"only display_name, locale, time_zone and role can be changed, not "
                                  f"{', '.join(sorted(unknown))}", field=f"user.{sorted(unknown)[0]}",
                                  reason="FIELD_NOT_UPDATABLE")
        _profile(changes)
        if "role" in changes:
            check_role(changes["role"], "user.role")
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user = await visibility.user(repo, caller, user_id, lock=True)
            account = visibility.account_of(user)
            if str(user.id) != caller.user_id or "role" in changes:
                visibility.may_manage(caller, account)
            if "role" in changes and changes["role"] != user.role:
                check_grant(caller, changes["role"])
                check_grant(caller, user.role)
                if user.role == roles.OWNER:
                    await self._keep_an_owner(repo, account, user)
                await audit.record(repo, caller, "UpdateUserRole", account, target=f"users/{user.id}",
                                   detail=f"{roles.name(user.role)} -> {roles.name(changes['role'])}")
            for name, value in changes.items():
                setattr(user, name, value)
            await s.flush()
        if "role" in changes:  # the user's cached principals carry the old role
            await self._revoked(user_id=str(user.id))
        return user

    async def deactivate(self, caller: Principal, user_id: str) -> User:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user = await visibility.user(repo, caller, user_id, lock=True)
            account = visibility.account_of(user)
            visibility.may_manage(caller, account)
            check_grant(caller, user.role)
            if user.active:
                if user.role == roles.OWNER:
                    await self._keep_an_owner(repo, account, user)
                user.active = False
                await repo.revoke_sessions(user.id)
                await audit.record(repo, caller, "DeactivateUser", account, target=f"users/{user.id}")
            await s.flush()
        await self._revoked(user_id=str(user.id))
        return user

    @staticmethod
    async def _keep_an_owner(repo: TenancyRepository, account: Account, leaving: User) -> None:
        owners = await repo.lock_active_owners(account, roles.OWNER)
        if not [o for o in owners if o != leaving.id]:
            raise FailedPrecondition("an account keeps at least one active OWNER; make another user OWNER first",
                                     reason="LAST_OWNER")


def _as_user(user: User) -> Principal:
    """The user acting on itself through a one-time token (for the audit record)."""
    return Principal(kind=user.account_kind,  # type: ignore[arg-type]
                     customer_id=str(user.customer_id or ""), reseller_id=str(user.reseller_id or ""),
                     user_id=str(user.id), role=user.role)  # type: ignore[arg-type]
