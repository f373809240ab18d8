"""Row ids (`kit.db.new_id`): UUIDv7s, so new rows' keys land at the right edge of their indexes."""

from __future__ import annotations

import time
import uuid

from innosystem.kit.db import new_id


def test_an_id_is_a_version_7_uuid_minted_now() -> None:
    before = time.time_ns() // 1_000_000
    u = new_id()
    after = time.time_ns() // 1_000_000
    assert (u.version, u.variant) == (7, uuid.RFC_4122)
    assert before <= u.int >> 80 <= after  # its first 48 bits: the milliseconds since the epoch


def test_later_ids_sort_after_earlier_ones_and_none_repeats() -> None:
    early = [new_id() for _ in range(2_000)]
    time.sleep(0.002)
    late = [new_id() for _ in range(2_000)]
    assert max(early) < min(late)
    assert max(str(u) for u in early) < min(str(u) for u in late)  # as text too (a hold's id)
    assert len(set(early + late)) == 4_000
    randoms = {u.int & ((1 << 62) - 1) for u in early}  # the low 62 random bits differ within a millisecond
    assert len(randoms) == len(early)
