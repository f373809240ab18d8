"""People's passwords: the policy, and argon2id hashes (argon2-cffi's RFC 9106 low-memory profile).

Hashing is deliberately slow (tens of milliseconds, 64 MiB), so it runs in a worker thread and
never blocks the event loop. A sign-in for an address without a user still verifies against a
dummy hash, so the answer takes as long as for a real one (no user enumeration by timing).
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from innosystem.kit.errors import InvalidArgument

MIN_LENGTH, MAX_LENGTH = 12, 256
_hasher = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4


@functools.cache
def _common() -> frozenset[str]:
    text = (Path(__file__).parent / "common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def check_policy(password: str, field: str = "password") -> None:
    """INVALID_ARGUMENT naming `field` unless the password is long enough and not a common one."""
    if len(password) < MIN_LENGTH:
        raise InvalidArgument(f"{field} must be at least {MIN_LENGTH} characters", field=field,
                              reason="PASSWORD_TOO_SHORT")
    if len(password) > MAX_LENGTH:
        raise InvalidArgument(f"{field} must be at most {MAX_LENGTH} characters", field=field,
                              reason="PASSWORD_TOO_LONG")
    if password.lower() in _common():
        raise InvalidArgument(f"{field} is too common; choose another", field=field, reason="COMMON_PASSWORD")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


@functools.cache
def _dummy() -> str:
    return _hasher.hash("not the password of anyone")


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored`; with no stored hash, spends the same time and says no."""
    def verify() -> bool:
        try:
            return _hasher.verify(stored or _dummy(), password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False
    return await asyncio.to_thread(verify)
