"""The access log's hash chain: a record's canonical form, its hash, and the check of a chain.

hash = lowercase hex SHA-256 of the record's proto3 JSON without `hash`, with sorted keys and no
whitespace (RFC 8785 for the values proto3 JSON produces: strings, integers, booleans), UTF-8.
It covers `prev_hash`, the previous record's hash, which makes the chain; the first record's
prev_hash is 64 zeros. A customer can recompute all of it from ListAccessLogs alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import json_format

from innosystem.keys.v1 import access_logs_pb2 as pb

GENESIS = "0" * 64
HASH_MISMATCH = pb.ChainBreakKind.CHAIN_BREAK_KIND_HASH_MISMATCH
PREV_HASH_MISMATCH = pb.ChainBreakKind.CHAIN_BREAK_KIND_PREV_HASH_MISMATCH
SEQUENCE_GAP = pb.ChainBreakKind.CHAIN_BREAK_KIND_SEQUENCE_GAP


def canonical(record: pb.AccessRecord) -> bytes:
    body = pb.AccessRecord()
    body.CopyFrom(record)
    body.ClearField("hash")
    doc = json_format.MessageToDict(body)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: pb.AccessRecord) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


@dataclass
class Verification:
    checked: int = 0
    head_sequence: int = 0
    head_hash: str = GENESIS
    first_break: pb.ChainBreak | None = None


class Verifier:
    """The chain check one record at a time, so a caller can feed it a page at a time and stop
    reading at the first break (a customer's log grows without bound; it is never held whole)."""

    def __init__(self) -> None:
        self.result = Verification()
        self._prev, self._seq = GENESIS, 1

    @property
    def broken(self) -> bool:
        return self.result.first_break is not None

    def add(self, r: pb.AccessRecord) -> bool:
        """Check the next record in stored sequence order; False once the chain is broken."""
        out = self.result
        if out.first_break is not None:
            return False
        out.checked += 1
        if r.sequence != self._seq:
            out.first_break = pb.ChainBreak(
                kind=SEQUENCE_GAP, sequence=self._seq, record_id=r.id,
                message=f"expected sequence {self._seq}, found {r.sequence} (a record deleted or inserted)")
            return False
        if r.prev_hash != self._prev:
            out.first_break = pb.ChainBreak(
                kind=PREV_HASH_MISMATCH, sequence=r.sequence, record_id=r.id, expected_hash=self._prev,
                actual_hash=r.prev_hash,
                message="prev_hash is not the previous record's hash (a record deleted, inserted or reordered)")
            return False
        actual = record_hash(r)
        if actual != r.hash:
            out.first_break = pb.ChainBreak(
                kind=HASH_MISMATCH, sequence=r.sequence, record_id=r.id, expected_hash=actual, actual_hash=r.hash,
                message="the record's content does not match its hash (edited)")
            return False
        self._prev, self._seq = r.hash, self._seq + 1
        out.head_sequence, out.head_hash = r.sequence, r.hash
        return True


def verify(records: Iterable[pb.AccessRecord]) -> Verification:
    """Walk records in stored sequence order; stop at the first break."""
    v = Verifier()
    for r in records:
        if not v.add(r):
            break
    return v.result
