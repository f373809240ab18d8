"""Checking a customer's access log locally, from the records alone (docs/keys.md, section 4).

Each record's `hash` is the hex SHA-256 of its proto3 JSON without `hash` (default values left
out, keys sorted, no whitespace, UTF-8), and it names the previous record's hash in `prevHash`
(64 zeros first), with sequences 1, 2, 3, … So trusting the platform's own `:verify` is not
needed: an edited, deleted, inserted or reordered record shows here as the first break.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items()
            if k != "hash" and v not in ("", 0, "0", False, [], {}, None) and not str(v).endswith("_UNSPECIFIED")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()


@dataclass
class ChainCheck:
    """`ok` until the first break; then `break_kind` (HASH_MISMATCH: edited, PREV_HASH_MISMATCH:
    deleted, inserted or reordered, SEQUENCE_GAP), where and why. Keep `head_sequence` and
    `head_hash` to notice a truncation next time."""

    checked: int = 0
    head_sequence: int = 0
    head_hash: str = GENESIS
    break_kind: str = ""
    break_sequence: int = 0
    break_record_id: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.break_kind

    def add(self, record: dict[str, Any]) -> bool:
        """Check the next record (oldest first); False once the chain is broken."""
        if not self.ok:
            return False
        self.checked += 1
        sequence, expected = int(record.get("sequence", 0) or 0), self.head_sequence + 1
        if sequence != expected:
            return self._broken("SEQUENCE_GAP", expected, record, f"expected sequence {expected}, found {sequence}")
        if record.get("prevHash", "") != self.head_hash:
            return self._broken("PREV_HASH_MISMATCH", sequence, record,
                                "prevHash is not the previous record's hash (deleted, inserted or reordered)")
        if record_hash(record) != record.get("hash"):
            return self._broken("HASH_MISMATCH", sequence, record, "the record does not match its hash (edited)")
        self.head_sequence, self.head_hash = sequence, record["hash"]
        return True

    def _broken(self, kind: str, sequence: int, record: dict[str, Any], message: str) -> bool:
        self.break_kind, self.break_sequence, self.message = kind, sequence, message
        self.break_record_id = record.get("id", "")
        return False


def verify(records: Iterable[dict[str, Any]]) -> ChainCheck:
    check = ChainCheck()
    for record in records:
        if not check.add(record):
            break
    return check
