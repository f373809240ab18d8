"""Issue 14 item 11 (keys part): verifying a customer's access log reads it in keyset pages and
stops at the first break; it never holds the whole log in memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from innosystem.keys.v1 import access_logs_pb2 as alpb
from services.keys import accesslog
from services.keys.accesslog import Entry
from tests.keys.conftest import Harness, Tenant

CHUNK = 10


async def fill(h: Harness, tenant: Tenant, n: int) -> None:
    """n records on the tenant's log, appended the way every use case appends them."""
    log = h.keys.deps.log
    cid = uuid.UUID(tenant.customer_id)
    for i in range(n):
        async with h.keys.deps.db.session() as s:
            await log.append(s, cid, Entry(type=alpb.AccessRecordType.ACCESS_RECORD_TYPE_KEY_UPDATED,
                                           message=f"change {i}"))


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many stored records the verification turned into messages (what it held)."""
    seen = [0]
    real: Callable[[Any], alpb.AccessRecord] = accesslog.record_pb

    def counted(row: Any) -> alpb.AccessRecord:
        seen[0] += 1
        return real(row)
    monkeypatch.setattr(accesslog, "record_pb", counted)
    return seen


@pytest.fixture
def small_pages(harness: Harness) -> Any:
    log = harness.keys.deps.log
    before = getattr(log, "verify_chunk", None)
    log.verify_chunk = CHUNK
    yield
    log.verify_chunk = before


async def test_a_long_log_verifies_across_page_boundaries(harness: Harness, small_pages: None) -> None:
    h = harness
    tenant = Tenant()
    await fill(h, tenant, 3 * CHUNK + 5)
    result = await h.verify(tenant)
    assert result.ok and result.records_checked == 3 * CHUNK + 5 and result.head_sequence == 3 * CHUNK + 5
    tenant_exact = Tenant()  # a log that ends exactly on a page boundary
    await fill(h, tenant_exact, 2 * CHUNK)
    assert (await h.verify(tenant_exact)).records_checked == 2 * CHUNK


async def test_verification_stops_reading_at_the_first_break(harness: Harness, small_pages: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness
    tenant = Tenant()
    await fill(h, tenant, 5 * CHUNK)

    def edit() -> None:
        with psycopg.connect(h.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE keys.access_records DISABLE TRIGGER access_records_append_only")
            try:
                conn.execute("UPDATE keys.access_records SET message = 'edited' WHERE customer_id = %s "
                             "AND sequence = 4", (uuid.UUID(tenant.customer_id),))
            finally:
                conn.execute("ALTER TABLE keys.access_records ENABLE TRIGGER access_records_append_only")
    await asyncio.to_thread(edit)

    seen = counting(monkeypatch)
    result = await h.verify(tenant)
    assert not result.ok and result.first_break.sequence == 4
    assert result.first_break.kind == alpb.ChainBreakKind.CHAIN_BREAK_KIND_HASH_MISMATCH
    assert seen[0] <= CHUNK, f"{seen[0]} records of {5 * CHUNK} read for a break at sequence 4"
