"""The field envelope: how one encrypted job field is stored in place of its value.

    "isk1." + base64url(header | ciphertext + tag)

    header = magic "ISKF" | format version (1) | algorithm (1 = AES-256-GCM)
             | client key version (u32) | project key version (u32) | data key id (16 bytes)
             | nonce (12 bytes)

The associated data is the whole header followed by the field's context (customer, project,
job, field path), each length-prefixed: a ciphertext moved to another job or field, or with any
header byte changed (versions, key id, nonce), fails authentication.
"""

from __future__ import annotations

import base64
import os
import struct
import uuid
from dataclasses import dataclass

from innosystem.keymanager.aead import NONCE_BYTES, TAG_BYTES, IntegrityError, open_, seal

PREFIX = "isk1."
MAGIC = b"ISKF"
FORMAT_VERSION = 1
AES_256_GCM = 1
_FIXED = struct.Struct(">4sBBII16s")
HEADER_BYTES = _FIXED.size + NONCE_BYTES
FIELD_AAD_LABEL = b"innosystem.field.v1"


@dataclass(frozen=True)
class FieldContext:
    """What a field's ciphertext is bound to."""

    customer_id: str
    project_id: str
    job_id: str
    path: str


@dataclass(frozen=True)
class Header:
    client_key_version: int
    project_key_version: int
    data_key_id: uuid.UUID
    nonce: bytes = b""
    format_version: int = FORMAT_VERSION
    algorithm: int = AES_256_GCM

    def pack(self) -> bytes:
        return _FIXED.pack(MAGIC, self.format_version, self.algorithm, self.client_key_version,
                           self.project_key_version, self.data_key_id.bytes) + self.nonce


def labelled(label: bytes, *parts: str) -> bytes:
    """Length-prefixed concatenation: no two different tuples give the same bytes."""
    out = bytearray(struct.pack(">H", len(label)) + label)
    for part in parts:
        raw = part.encode()
        out += struct.pack(">I", len(raw)) + raw
    return bytes(out)


def field_aad(header: bytes, ctx: FieldContext) -> bytes:
    return header + labelled(FIELD_AAD_LABEL, ctx.customer_id, ctx.project_id, ctx.job_id, ctx.path)


def encrypt_field(data_key: bytes, header: Header, ctx: FieldContext, plaintext: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)  # in the header, which is part of the associated data
    head = Header(header.client_key_version, header.project_key_version, header.data_key_id, nonce).pack()
    _, ct = seal(data_key, plaintext, field_aad(head, ctx), nonce)
    return PREFIX + base64.urlsafe_b64encode(head + ct).decode().rstrip("=")


def _decode(envelope: str) -> bytes:
    if not isinstance(envelope, str) or not envelope.startswith(PREFIX):
        raise IntegrityError("not a field envelope (prefix)")
    body = envelope[len(PREFIX):]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except ValueError:
        raise IntegrityError("not a field envelope (encoding)") from None
    if len(raw) < HEADER_BYTES + TAG_BYTES:
        raise IntegrityError("field envelope too short")
    return raw


def parse_header(envelope: str) -> Header:
    """The header of an envelope (not yet authenticated: decrypt_field checks it)."""
    raw = _decode(envelope)
    magic, fmt, alg, ckv, pkv, key_id = _FIXED.unpack_from(raw)
    if magic != MAGIC or fmt != FORMAT_VERSION or alg != AES_256_GCM:
        raise IntegrityError("unknown envelope magic, format version or algorithm")
    return Header(ckv, pkv, uuid.UUID(bytes=key_id), raw[_FIXED.size:HEADER_BYTES], fmt, alg)


def decrypt_field(data_key: bytes, envelope: str, ctx: FieldContext) -> bytes:
    """The plaintext; IntegrityError if anything was changed or the context differs."""
    header = parse_header(envelope)
    raw = _decode(envelope)
    head = raw[:HEADER_BYTES]
    return open_(data_key, header.nonce, raw[HEADER_BYTES:], field_aad(head, ctx))
