"""Secrets the platform must read back (webhook signing secrets), sealed at rest.

AES-256-GCM under the platform master key `INNOSYSTEM_KEYS_MASTER_KEY` (base64 of 32 bytes; the
keys service seals key managers' secrets under the same key), bound by the associated data to a
purpose and the row the secret belongs to, so a sealed value copied to another row does not open.
Unset in development, the key is derived from the internal secret, as the keys service does.
"""

from __future__ import annotations

import base64
import hashlib
import logging

from innosystem.keymanager.aead import NONCE_BYTES, IntegrityError, open_, seal
from innosystem.kit.config import ConfigError

log = logging.getLogger(__name__)
MASTER_KEY_ENV = "INNOSYSTEM_KEYS_MASTER_KEY"


def master_key(raw: str | None, internal_secret: bytes) -> bytes:
    """32 bytes from base64; unset: derived from the internal secret (logged as such)."""
    if not raw:
        log.warning("%s is not set: deriving it from INNOSYSTEM_INTERNAL_SECRET (development only; set a "
                    "separate key in production)", MASTER_KEY_ENV)
        return hashlib.sha256(b"innosystem.keys.master|" + internal_secret).digest()
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ConfigError(f"{MASTER_KEY_ENV} must be base64 of 32 bytes") from None
    if len(key) != 32:
        raise ConfigError(f"{MASTER_KEY_ENV} must be 32 bytes, got {len(key)}")
    return key


class Sealer:
    def __init__(self, key: bytes, purpose: str) -> None:
        self._key, self._purpose = key, purpose.encode()

    def _aad(self, owner: str) -> bytes:
        return b"innosystem.sealed|" + self._purpose + b"|" + owner.encode()

    def seal(self, owner: str, plaintext: str) -> bytes:
        nonce, ct = seal(self._key, plaintext.encode(), self._aad(owner))
        return nonce + ct

    def open(self, owner: str, sealed: bytes) -> str:
        try:
            return open_(self._key, sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], self._aad(owner)).decode()
        except IntegrityError:
            raise IntegrityError(f"a sealed secret does not open (wrong {MASTER_KEY_ENV}?)") from None
