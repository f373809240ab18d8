"""Versioned AES-256-GCM wrapping (a keyring), shared by the keys service and the reference key manager.

A wrapped blob is self-describing and fully authenticated:

    format (1 byte, 0x01) | key version (4 bytes, big endian) | nonce (12 bytes) | ciphertext + tag

The first 17 bytes are part of the associated data, so changing the version or the nonce in a
blob fails like changing the ciphertext. Versions below `min_version` are refused, as in Vault
Transit's `min_decryption_version`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
BLOB_FORMAT = 1
_HEAD = struct.Struct(">BI")
HEAD_BYTES = _HEAD.size + NONCE_BYTES


class IntegrityError(Exception):
    """The blob is malformed or fails authentication (tampered, moved, or the wrong key)."""


class VersionRefused(Exception):
    """The blob names a key version that is unknown, retired (below the minimum) or destroyed."""

    def __init__(self, version: int, why: str) -> None:
        super().__init__(f"key version {version} {why}")
        self.version = version


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def seal(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """(nonce, ciphertext+tag) under a fresh random nonce (96 bits: at most 2^32 uses per key is the
    NIST bound; each data key encrypts the few fields of one job)."""
    nonce = nonce or os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise IntegrityError("authentication failed") from None


def blob_version(blob: bytes) -> int:
    """The key version a wrapped blob names (unauthenticated until it is opened)."""
    if len(blob) < HEAD_BYTES + TAG_BYTES or blob[0] != BLOB_FORMAT:
        raise IntegrityError("not a wrapped key blob (format or length)")
    return int(_HEAD.unpack_from(blob)[1])


@dataclass
class Keyring:
    """Key versions from 1; the highest is primary (wraps); every version >= min_version unwraps."""

    versions: dict[int, bytes] = field(default_factory=dict)
    min_version: int = 1

    @property
    def primary(self) -> int:
        return max(self.versions)

    def add(self, key: bytes | None = None) -> int:
        version = (max(self.versions) if self.versions else 0) + 1
        self.versions[version] = key or new_key()
        return version

    def wrap(self, plaintext: bytes, aad: bytes, version: int | None = None) -> bytes:
        version = self.primary if version is None else version
        if version not in self.versions or version < self.min_version:
            raise VersionRefused(version, "cannot wrap (unknown or retired)")
        head = _HEAD.pack(BLOB_FORMAT, version)
        nonce, ct = seal(self.versions[version], plaintext, head + aad)
        return head + nonce + ct

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        version = blob_version(blob)
        if version < self.min_version:
            raise VersionRefused(version, f"is below the minimum decryption version {self.min_version}")
        key = self.versions.get(version)
        if key is None:
            raise VersionRefused(version, "is unknown or destroyed")
        head, nonce, ct = blob[:_HEAD.size], blob[_HEAD.size:HEAD_BYTES], blob[HEAD_BYTES:]
        return open_(key, nonce, ct, head + aad)
