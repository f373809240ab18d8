"""People's sessions: sign in (password, then TOTP when enrolled), resolve a cookie, sign out.

A wrong e-mail, password or TOTP code is the same 401 `INVALID_CREDENTIALS`, in the same time
(`passwords.verify_password`). `MAX_FAILURES` wrong answers in a row lock the user for
`LOCK_TIME`; the gateway limits failed attempts per client address on top. A session ends after
`idle` without use or `max_age` after sign-in, whichever comes first; deactivating the user,
resetting its password or signing out ends it at once (and tells the gateways).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from innosystem.kit import logs, sessions
from innosystem.kit.db import Database, utcnow
from innosystem.kit.errors import NotFound, ResourceExhausted, Unauthenticated
from innosystem.kit.validation import id_or_not_found
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.tenancy import audit, visibility
from services.tenancy.models import SignInSession, User
from services.tenancy.passwords import verify_password
from services.tenancy.repository import TenancyRepository
from services.tenancy.service import Revoked
from services.tenancy.totp import SecondFactor

MAX_FAILURES = 5
LOCK_TIME = timedelta(minutes=15)


@dataclass(frozen=True)
class SignedIn:
    user: User
    session_id: str
    token: str  # the cookie's value: returned this once, stored as its keyed hash


def _invalid() -> Unauthenticated:
    return Unauthenticated("the e-mail or the password is wrong", reason="INVALID_CREDENTIALS")


class SignIn:
    def __init__(self, db: Database, hash_token: Any, csrf_secret: bytes, on_access_revoked: Revoked,
                 second_factor: SecondFactor, idle: timedelta = timedelta(hours=2),
                 max_age: timedelta = timedelta(hours=12)) -> None:
        self.db = db
        self._second_factor = second_factor
        self._hash = hash_token
        self._csrf_secret = csrf_secret
        self._revoked = on_access_revoked
        self.idle, self.max_age = idle, max_age

    def csrf(self, session_id: str) -> str:
        return sessions.csrf_token(self._csrf_secret, session_id)

    async def create(self, email: str, password: str, totp_code: str) -> SignedIn:
        async with self.db.session() as s:
            user = await TenancyRepository(s).find_user(email.strip())
        now = utcnow()
        # Said before the password is checked, so a locked user's password cannot be guessed meanwhile
        # (it tells that the address has a user, which only a flood of wrong passwords finds out).
        if user is not None and user.locked_until is not None and user.locked_until > now:
            raise ResourceExhausted("too many failed sign-ins; try again later", reason="ACCOUNT_LOCKED",
                                    metadata={"retry_after_seconds": str(int((user.locked_until - now).seconds))})
        stored = user.password_hash if user is not None and user.active else None
        if not await verify_password(stored, password) or user is None:
            await self._failed(user)
            raise _invalid()
        if user.totp_secret is not None:
            if not totp_code:
                raise Unauthenticated("this user signs in with a TOTP code too (totpCode)", field="totp_code",
                                      reason="TOTP_REQUIRED")
            if not await self._second_factor.verify(user.id, totp_code):
                await self._failed(user)
                raise _invalid()
        token = sessions.SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            reseller, customer = await repo.account_of(user)
            if (customer is not None and not customer.active) or (reseller is not None and not reseller.active):
                raise Unauthenticated("the account of this user is inactive", reason="ACCOUNT_INACTIVE")
            row = SignInSession(id=uuid.uuid4(), token_hash=self._hash(token), user_id=user.id,
                                client_address=logs.client_address.get(), create_time=now, last_use_time=now,
                                expire_time=now + self.max_age)
            await repo.add(row)
            fresh = await repo.get_user(user.id, lock=True)
            assert fresh is not None
            fresh.failed_logins, fresh.locked_until = 0, None
            principal = await self._principal(repo, fresh, row, reseller.id if reseller else None)
            await audit.record(repo, principal, "CreateSession", visibility.account_of(fresh),
                               target=f"users/{user.id}", reseller_id=reseller.id if reseller else None)
        return SignedIn(fresh, str(row.id), token)

    async def _failed(self, user: User | None) -> None:
        if user is None:
            return
        async with self.db.session() as s:
            row = await TenancyRepository(s).get_user(user.id, lock=True)
            if row is None:
                return
            row.failed_logins += 1
            if row.failed_logins >= MAX_FAILURES:
                row.failed_logins, row.locked_until = 0, utcnow() + LOCK_TIME

    @staticmethod
    async def _principal(repo: TenancyRepository, user: User, session: SignInSession,
                         reseller_id: uuid.UUID | None) -> Principal:
        enrol = user.totp_secret is None and await repo.requires_totp(visibility.account_of(user))
        return Principal(kind=user.account_kind,  # type: ignore[arg-type]
                         reseller_id=str(reseller_id or ""), customer_id=str(user.customer_id or ""),
                         key_id=str(session.id), role=user.role, user_id=str(user.id),  # type: ignore[arg-type]
                         totp_enrollment_required=enrol)

    async def authenticate(self, token: str) -> Principal:
        if not token.startswith(sessions.SESSION_TOKEN_PREFIX) or len(token) > 256:
            raise Unauthenticated("the session is unknown or has ended", reason="SESSION_INVALID")
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await repo.touch_session(self._hash(token), utcnow(), self.idle)
            user = await repo.get_user(row.user_id) if row is not None else None
            if row is None or user is None or not user.active:
                raise Unauthenticated("the session is unknown or has ended", reason="SESSION_INVALID")
            reseller, customer = await repo.account_of(user)
            if (customer is not None and not customer.active) or (reseller is not None and not reseller.active):
                raise Unauthenticated("the account of this user is inactive", reason="ACCOUNT_INACTIVE")
            return await self._principal(repo, user, row, reseller.id if reseller else None)

    async def current(self, caller: Principal) -> User:
        if not caller.user_id:
            raise Unauthenticated("no session: this request was made with an API key", reason="NO_SESSION")
        async with self.db.session() as s:
            user = await TenancyRepository(s).get_user(uuid.UUID(caller.user_id))
        if user is None:
            raise Unauthenticated("the session has ended", reason="SESSION_INVALID")
        return user

    async def delete_current(self, caller: Principal) -> None:
        if not caller.user_id:
            raise Unauthenticated("no session: this request was made with an API key", reason="NO_SESSION")
        await self._end(caller, caller.key_id)

    async def list(self, caller: Principal, user_id: str) -> list[SignInSession]:
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            user = await visibility.user(repo, caller, user_id)
            if str(user.id) != caller.user_id:
                visibility.may_manage(caller, visibility.account_of(user))
            return list(await repo.list_sessions(user.id, utcnow(), self.idle))

    async def delete(self, caller: Principal, session_id: str) -> None:
        await self._end(caller, session_id)

    async def _end(self, caller: Principal, session_id: str) -> None:
        sid = id_or_not_found(session_id, "session_id", "session")
        async with self.db.session() as s:
            repo = TenancyRepository(s)
            row = await repo.get_session(sid)
            if row is None:
                raise NotFound(f"session {session_id} not found", reason="SESSION_NOT_FOUND")
            try:
                user = await visibility.user(repo, caller, str(row.user_id))
            except NotFound:
                raise NotFound(f"session {session_id} not found", reason="SESSION_NOT_FOUND") from None
            if str(user.id) != caller.user_id:
                visibility.may_manage(caller, visibility.account_of(user))
            await repo.revoke_sessions(user.id, sid)
            await audit.record(repo, caller, "DeleteSession", visibility.account_of(user),
                               target=f"sessions/{sid}")
        await self._revoked(key_id=str(sid))
