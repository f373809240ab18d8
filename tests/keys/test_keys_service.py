"""The keys service through gRPC on real PostgreSQL and Valkey, with a real key manager process."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest
from google.protobuf import json_format

from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit.errors import from_rpc_error
from tests.keys.conftest import JOBS, RUNNERS, Harness, Tenant
from tests.keys.keymanager_process import start_keymanager

T = alpb.AccessRecordType
OUT = alpb.AccessOutcome
JOB, SUPPORT, LEGAL = 1, 2, 6
CARD = {"card": {"number": "4111-1111-1111-1111", "holder": "Ada"}, "amount": 42}


def reason(exc: grpc.aio.AioRpcError) -> str:
    return from_rpc_error(exc).reason


async def fail(coro: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro  # type: ignore[misc]
    return caught.value


async def sql(h: Harness, statement: str, *args: object) -> list[tuple[object, ...]]:
    def run() -> list[tuple[object, ...]]:
        with psycopg.connect(h.database_url, autocommit=True) as conn:
            cur = conn.execute(statement, args or None)
            return cur.fetchall() if cur.description else []
    return await asyncio.to_thread(run)


def km_calls(h: Harness, job_id: str, processor: str) -> int:
    """Key manager calls about this job on behalf of this processor (its own log)."""
    return h.km.log.count(f"job={job_id} processor={processor} ")


async def registered(h: Harness, policy: pb.KeyPolicy | None = None) -> Tenant:
    tenant = Tenant()
    await h.register(tenant, policy=policy)
    return tenant


async def test_registration_verifies_the_key_manager_and_keeps_no_plaintext_secret(harness: Harness) -> None:
    h = harness
    tenant = Tenant()
    key = await h.register(tenant)
    assert key.state == pb.ClientKeyState.CLIENT_KEY_STATE_ACTIVE and key.current_version == 1
    assert not key.hmac_secrets and len(key.hmac_secret_fingerprints) == 1
    rows = await sql(h, "SELECT sealed_secrets::text, secret_fingerprints::text FROM keys.client_keys WHERE id = %s",
                     uuid.UUID(key.id))
    assert h.km.secret not in str(rows) and h.km.secret.encode().hex() not in str(rows)
    records = await h.records(tenant)
    assert [r.type for r in records] == [T.ACCESS_RECORD_TYPE_KEY_REGISTERED]

    wrong = await fail(h.register(Tenant(), secret="x" * 40))
    assert wrong.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(wrong) == "KEY_VERIFICATION_FAILED"
    assert "signature" in (wrong.details() or "")
    unreachable = await fail(h.register(Tenant(), url="grpc://127.0.0.1:1"))
    assert reason(unreachable) == "KEY_VERIFICATION_FAILED"
    assert "KEY_MANAGER_UNREACHABLE" in (unreachable.details() or "")
    unknown = await fail(h.register(Tenant(), external_key_id="nope"))
    assert reason(unknown) == "KEY_VERIFICATION_FAILED"
    short = await fail(h.register(Tenant(), secret="short"))
    assert short.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(short) == "SECRET_TOO_SHORT"
    remote = await fail(h.register(Tenant(), url="grpc://10.1.2.3:443"))
    assert remote.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(remote) == "EGRESS_BLOCKED"


async def test_secure_access_returns_only_requested_fields_and_is_on_the_log(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number", "payload.card.holder"])
    stored = json_format.MessageToDict(lease.payload)
    assert stored["card"]["number"].startswith("isk1.") and "4111" not in str(stored)
    answer = await h.access(lease, ["payload.card.number"])
    assert [(f.path, f.value.string_value) for f in answer.fields] == [("payload.card.number", "4111-1111-1111-1111")]
    assert (answer.client_key_version, answer.project_key_version) == (1, 1)
    pending = (await h.records(tenant, job_id=lease.job_id))
    assert [(r.type, r.outcome) for r in pending] == [(T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED,
                                                      OUT.ACCESS_OUTCOME_PENDING)]
    assert pending[0].processor_id == "runner-1" and list(pending[0].requested_fields) == ["payload.card.number"]
    await h.stub.CompleteSecureAccess(pb.CompleteSecureAccessRequest(
        access_id=answer.access_id, runner_id="runner-1", succeeded=True, duration_ms=7, output_summary="ok"),
        metadata=RUNNERS)
    done = (await h.records(tenant, job_id=lease.job_id))[-1]
    assert (done.type, done.outcome, done.processing_succeeded) == (T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED,
                                                                   OUT.ACCESS_OUTCOME_GRANTED, True)
    assert list(done.returned_fields) == ["payload.card.number"] and done.access_id == answer.access_id
    assert done.purpose == JOB and done.client_key_version == 1 and done.duration_ms == 7
    assert pending[0].platform_request_id in h.km.log  # the key manager saw who and why
    verification = await h.verify(tenant)
    assert verification.ok and verification.records_checked == 3
    # the customer reads its own job's field; another customer cannot see the job
    mine = await h.stub.DecryptFields(pb.DecryptFieldsRequest(job_id=lease.job_id, fields=["payload.card.holder"]),
                                      metadata=h.as_(tenant))
    assert [f.value.string_value for f in mine.fields] == ["Ada"]
    other = await fail(h.stub.DecryptFields(
        pb.DecryptFieldsRequest(job_id=lease.job_id, fields=["payload.card.holder"]), metadata=h.as_(Tenant())))
    assert other.code() == grpc.StatusCode.NOT_FOUND
    stranger = Tenant()
    leak = await fail(h.logs.ListAccessLogs(alpb.ListAccessLogsRequest(customer_id=tenant.customer_id),
                                            metadata=h.as_(stranger)))
    assert leak.code() == grpc.StatusCode.NOT_FOUND


async def test_denials_are_recorded(harness: Harness) -> None:
    h = harness
    tenant = await registered(h, pb.KeyPolicy(allowed_purposes=[JOB, SUPPORT], allowed_fields=["payload.card."]))
    lease = await h.submit(tenant, CARD, ["payload.card.number", "payload.amount"])
    cases = [
        (h.access(lease, ["payload.card.number"], runner_id="intruder"), "NOT_LEASE_HOLDER"),
        (h.access(lease, ["payload.card.number"], purpose=LEGAL, client_reference="court-1"), "PURPOSE_NOT_ALLOWED"),
        (h.access(lease, ["payload.card.number"], purpose=SUPPORT), "CLIENT_REFERENCE_REQUIRED"),
        (h.access(lease, ["payload.amount"]), "FIELD_NOT_ALLOWED"),
    ]
    for call, why in cases:
        err = await fail(call)
        assert (err.code(), reason(err)) == (grpc.StatusCode.PERMISSION_DENIED, why)
    completed = await h.records(tenant, job_id=lease.job_id, type=T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED)
    assert [(r.outcome, r.reason) for r in completed] == [(OUT.ACCESS_OUTCOME_DENIED, why) for _, why in cases]
    assert completed[0].processor_id == "intruder" and not any(r.returned_fields for r in completed)
    requested = await h.records(tenant, job_id=lease.job_id, type=T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED)
    assert len(requested) == len(cases)
    # nothing denied here reached the key manager (the submit's encryption did, as "jobs")
    assert km_calls(h, lease.job_id, "intruder") == km_calls(h, lease.job_id, "runner-1") == 0
    h.km.allow("CUSTOMER_INITIATED_JOB", "CUSTOMER_INITIATED_SUPPORT", "PLATFORM_SYSTEM_OPERATION")
    try:
        ok = await h.access(lease, ["payload.card.number"], purpose=SUPPORT, client_reference="ticket-9")
    finally:
        h.km.allow("CUSTOMER_INITIATED_JOB", "PLATFORM_SYSTEM_OPERATION")
    assert len(ok.fields) == 1 and "client_reference': 'ticket-9'" not in h.km.log


async def test_key_manager_refusal_and_unreachability_are_recorded_and_nothing_else_breaks(
        harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    h.km.allow("PLATFORM_SYSTEM_OPERATION")
    try:
        refused = await fail(h.access(lease, ["payload.card.number"]))
    finally:
        h.km.allow("CUSTOMER_INITIATED_JOB", "PLATFORM_SYSTEM_OPERATION")
    assert (refused.code(), reason(refused)) == (grpc.StatusCode.PERMISSION_DENIED, "KEY_MANAGER_REFUSED")
    assert "PURPOSE_NOT_ALLOWED" in (refused.details() or "")
    assert len((await h.access(lease, ["payload.card.number"])).fields) == 1  # the policy allows again

    other_km = start_keymanager(tmp_path_factory.mktemp("km-gone"), "cmk-1")
    gone = Tenant()
    await h.register(gone, url=other_km.grpc_url, secret=other_km.secret)
    gone_lease = await h.submit(gone, CARD, ["payload.card.number"])
    other_km.stop()
    down = await fail(h.access(gone_lease, ["payload.card.number"]))
    assert (down.code(), reason(down)) == (grpc.StatusCode.UNAVAILABLE, "KEY_MANAGER_UNREACHABLE")
    check = await h.stub.VerifyClientKey(pb.VerifyClientKeyRequest(key_id=gone.key_id), metadata=h.as_(gone))
    assert not check.ok and not check.healthy and "KEY_MANAGER_UNREACHABLE" in check.error
    unhealthy = await h.stub.GetClientKey(pb.GetClientKeyRequest(key_id=gone.key_id), metadata=h.as_(gone))
    assert unhealthy.state == pb.ClientKeyState.CLIENT_KEY_STATE_UNHEALTHY and unhealthy.last_verify_error
    outcomes = [(r.outcome, r.reason) for r in await h.records(tenant, type=T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED)]
    assert (OUT.ACCESS_OUTCOME_DENIED, "KEY_MANAGER_REFUSED") in outcomes
    gone_outcomes = [(r.outcome, r.reason) for r in await h.records(gone, type=T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED)]
    assert gone_outcomes == [(OUT.ACCESS_OUTCOME_ERROR, "KEY_MANAGER_UNREACHABLE")]
    assert len((await h.access(lease, ["payload.card.number"])).fields) == 1  # other customers unaffected


@pytest.mark.parametrize("where", ["ciphertext", "header_version", "nonce", "moved", "wrapped_key"])
async def test_tampering_fails_decryption_and_the_record_says_so(harness: Harness, where: str) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number", "payload.card.holder"])
    doc = json_format.MessageToDict(lease.payload)
    envelope: str = doc["card"]["number"]
    if where == "wrapped_key":
        await sql(h, "UPDATE keys.data_keys SET wrapped = set_byte(wrapped, 20, get_byte(wrapped, 20) # 1) "
                     "WHERE job_id = %s", lease.job_id)
    else:
        if where == "moved":  # another field's ciphertext of the same job, under this path
            doc["card"]["number"] = doc["card"]["holder"]
        else:
            import base64
            body = envelope[5:]
            raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            raw[{"ciphertext": len(raw) - 20, "header_version": 9, "nonce": 30}[where]] ^= 0x04
            doc["card"]["number"] = "isk1." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
        json_format.ParseDict(doc, lease.payload)
    err = await fail(h.access(lease, ["payload.card.number"]))
    assert reason(err) == "INTEGRITY_CHECK_FAILED"
    last = (await h.records(tenant, job_id=lease.job_id))[-1]
    assert (last.outcome, last.reason) == (OUT.ACCESS_OUTCOME_ERROR, "INTEGRITY_CHECK_FAILED")
    assert not last.returned_fields


async def test_no_pre_access_record_no_decryption(harness: Harness) -> None:
    """Audit before access, proven by failing the audit write: the key manager is never asked."""
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    await sql(h, "CREATE OR REPLACE FUNCTION keys.fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ "
                 "BEGIN RAISE EXCEPTION 'audit store down (test)'; END $$; "
                 "CREATE TRIGGER fail_audit BEFORE INSERT ON keys.access_records "
                 "FOR EACH ROW EXECUTE FUNCTION keys.fail_audit()")
    try:
        err = await fail(h.access(lease, ["payload.card.number"]))
    finally:
        await sql(h, "DROP TRIGGER fail_audit ON keys.access_records; DROP FUNCTION keys.fail_audit()")
    assert (err.code(), reason(err)) == (grpc.StatusCode.PERMISSION_DENIED, "AUDIT_WRITE_FAILED")
    assert km_calls(h, lease.job_id, "runner-1") == 0  # no unwrap was attempted
    assert await h.records(tenant, job_id=lease.job_id) == []
    ok = await h.access(lease, ["payload.card.number"])  # once the log works, so does access
    assert len(ok.fields) == 1 and km_calls(h, lease.job_id, "runner-1") == 1


@pytest.mark.parametrize("tamper", ["edit", "edit_and_rehash", "delete", "reorder"])
async def test_chain_verification_finds_the_first_break(harness: Harness, tamper: str) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    for _ in range(3):
        await fail(h.access(lease, ["payload.card.number"], runner_id="intruder"))
    records = await h.records(tenant)
    assert (await h.verify(tenant)).ok and len(records) == 7
    victim = records[3]
    cid = uuid.UUID(tenant.customer_id)
    vid = uuid.UUID(victim.id)
    statements = {
        "edit": [("UPDATE keys.access_records SET processor_id = 'runner-1' WHERE id = %s", vid)],
        "edit_and_rehash": [("UPDATE keys.access_records SET processor_id = 'x', hash = md5(hash) || md5(hash) "
                             "WHERE id = %s", vid)],
        "delete": [("DELETE FROM keys.access_records WHERE id = %s", vid)],
        "reorder": [("UPDATE keys.access_records SET sequence = -sequence WHERE customer_id = %s "
                     "AND sequence IN (4, 5)", cid),
                    ("UPDATE keys.access_records SET sequence = CASE sequence WHEN -4 THEN 5 ELSE 4 END "
                     "WHERE customer_id = %s AND sequence IN (-4, -5)", cid)],
    }[tamper]
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        await sql(h, *statements[0])  # the database refuses; the test then plays an attacker who drops the trigger
    await sql(h, "ALTER TABLE keys.access_records DISABLE TRIGGER access_records_append_only")
    try:
        for statement, arg in statements:
            await sql(h, statement, arg)
    finally:
        await sql(h, "ALTER TABLE keys.access_records ENABLE TRIGGER access_records_append_only")
    result = await h.verify(tenant)
    assert not result.ok and result.first_break.sequence == 4
    expected = {"edit": alpb.ChainBreakKind.CHAIN_BREAK_KIND_HASH_MISMATCH,
                "edit_and_rehash": alpb.ChainBreakKind.CHAIN_BREAK_KIND_HASH_MISMATCH,
                "delete": alpb.ChainBreakKind.CHAIN_BREAK_KIND_SEQUENCE_GAP,
                "reorder": alpb.ChainBreakKind.CHAIN_BREAK_KIND_PREV_HASH_MISMATCH}[tamper]
    assert result.first_break.kind == expected



async def test_internal_methods_take_only_their_callers(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    as_jobs = await fail(h.stub.SecureAccess(pb.SecureAccessRequest(
        runner_id=lease.runner_id, job_id=lease.job_id, lease_id=lease.lease_id, purpose=JOB,
        fields=["payload.card.number"]), metadata=JOBS))
    as_customer = await fail(h.stub.EncryptFields(pb.EncryptFieldsRequest(context=pb.EncryptionContext(
        customer_id=tenant.customer_id, project_id=tenant.project_id, job_id="j", key_id=tenant.key_id)),
        metadata=h.as_(tenant)))
    assert {reason(as_jobs), reason(as_customer)} == {"CALLER_NOT_ALLOWED"}
    assert await h.records(tenant, job_id=lease.job_id) == []


async def test_a_slow_key_manager_times_out_with_a_clear_reason() -> None:
    """A key manager that accepts the connection and never answers, in both bindings."""
    from innosystem.keymanager.client import ERROR, KeyManagerClient, KeyManagerError
    from innosystem.keymanager.v1 import keymanager_pb2 as km
    from innosystem.kit import egress

    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
            client = KeyManagerClient(url, [b"s" * 32], timeout=0.5,
                                      policy=egress.Policy(allow_hosts=frozenset({f"127.0.0.1:{port}"})))
            try:
                with pytest.raises(KeyManagerError) as caught:
                    await client.health(km.HealthRequest(metadata=km.RequestMetadata(
                        platform_request_id="r", customer_id="c", purpose=3)))  # type: ignore[arg-type]
            finally:
                await client.close()
            assert caught.value.outcome == ERROR
            assert caught.value.reason in ("KEY_MANAGER_TIMEOUT", "KEY_MANAGER_UNREACHABLE"), url
            if url.startswith("http"):
                assert caught.value.reason == "KEY_MANAGER_TIMEOUT"
    finally:
        for w in held:
            w.close()
        server.close()


async def test_concurrent_appends_keep_one_unbroken_chain_per_customer(harness: Harness) -> None:
    h = harness
    tenant, other = await registered(h), await registered(h)
    lease, other_lease = (await h.submit(tenant, CARD, ["payload.card.number"]),
                          await h.submit(other, CARD, ["payload.card.number"]))
    calls = [h.access(lease, ["payload.card.number"], runner_id=f"r{i}") for i in range(12)]
    calls += [h.access(other_lease, ["payload.card.number"], runner_id=f"o{i}") for i in range(6)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, grpc.aio.AioRpcError) and reason(r) == "NOT_LEASE_HOLDER" for r in results)
    for t, n in ((tenant, 12), (other, 6)):
        records = await h.records(t)
        assert [r.sequence for r in records] == list(range(1, 2 * n + 2))
        check = await h.verify(t)
        assert check.ok and check.records_checked == 2 * n + 1 and check.head_hash == records[-1].hash


async def test_listing_pages_by_sequence_and_filters(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    for i in range(3):
        await fail(h.access(lease, ["payload.card.number"], runner_id=f"x{i}"))
    seen, token = [], ""
    while True:
        page = await h.logs.ListAccessLogs(alpb.ListAccessLogsRequest(
            customer_id=tenant.customer_id, page_size=2, page_token=token), metadata=h.as_(tenant))
        assert len(page.records) <= 2
        seen += [r.sequence for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]  # newest first, each once
    denied = await h.records(tenant, outcome=OUT.ACCESS_OUTCOME_DENIED, processor_id="x1")
    assert [(r.processor_id, r.reason) for r in denied] == [("x1", "NOT_LEASE_HOLDER")]
    later = await h.records(tenant, start_time=denied[0].create_time)
    assert [r.sequence for r in later] == list(range(denied[0].sequence, 8))
    bad = await fail(h.logs.ListAccessLogs(alpb.ListAccessLogsRequest(customer_id=tenant.customer_id,
                                                                       page_token="garbage"), metadata=h.as_(tenant)))
    assert reason(bad) == "INVALID_PAGE_TOKEN"


async def test_registration_is_idempotent_by_request_id(harness: Harness) -> None:
    h = harness
    tenant = Tenant()
    request = pb.CreateClientKeyRequest(customer_id=tenant.customer_id, request_id="reg-1", client_key=pb.ClientKey(
        endpoint_url=h.km.grpc_url, external_key_id="cmk-1", hmac_secrets=[h.km.secret]))
    first = await h.stub.CreateClientKey(request, metadata=h.as_(tenant))
    again = await h.stub.CreateClientKey(request, metadata=h.as_(tenant))
    assert first.id == again.id
    request.client_key.description = "changed"
    reused = await fail(h.stub.CreateClientKey(request, metadata=h.as_(tenant)))
    assert reason(reused) == "IDEMPOTENCY_KEY_REUSED"
    assert len(await h.records(tenant, type=T.ACCESS_RECORD_TYPE_KEY_REGISTERED)) == 1


async def test_a_key_manager_over_http_json_works_the_same(harness: Harness) -> None:
    h = harness
    tenant = Tenant()
    key = await h.register(tenant, url=h.km.http_url)
    assert key.endpoint_url.startswith("http://")
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    answer = await h.access(lease, ["payload.card.number"])
    assert answer.fields[0].value.string_value == "4111-1111-1111-1111"
    verification = await h.stub.VerifyClientKey(pb.VerifyClientKeyRequest(key_id=key.id), metadata=h.as_(tenant))
    assert verification.ok and verification.healthy and verification.round_trip_ok
