"""Rotation with background rewrap, minimum decryption versions, disabling (crypto-shredding),
the abandon sweeper, webhook notifications and the live feed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import field_mask_pb2

from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit.errors import from_rpc_error
from tests.keys.conftest import RUNNERS, Harness
from tests.keys.test_keys_service import CARD, fail, registered, sql

T = alpb.AccessRecordType
OUT = alpb.AccessOutcome


async def test_rotation_adds_versions_rewraps_keys_in_the_background_and_never_touches_payloads(
        harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    before = bytes(lease.payload.SerializeToString())
    rotated = await h.stub.RotateClientKey(pb.RotateClientKeyRequest(key_id=tenant.key_id, external_key_id="cmk-2",
                                                                     request_id="rot-1"), metadata=h.as_(tenant))
    assert rotated.current_version == 2 and rotated.external_key_id == "cmk-2"
    again = await h.stub.RotateClientKey(pb.RotateClientKeyRequest(key_id=tenant.key_id, external_key_id="cmk-2",
                                                                   request_id="rot-1"), metadata=h.as_(tenant))
    assert again.current_version == 2  # an idempotent repeat adds no version
    assert {v.version: v.wrapped_project_keys for v in rotated.versions} == {2: 0, 1: 1}
    project = await h.stub.RotateProjectKey(pb.RotateProjectKeyRequest(project_id=tenant.project_id),
                                            metadata=h.as_(tenant))
    assert project.current_version == 2 and project.data_keys_pending_rewrap == 1
    await h.keys.registry.h.rewrap_once()
    await h.keys.registry.h.rewrap_once()
    key = await h.stub.GetClientKey(pb.GetClientKeyRequest(key_id=tenant.key_id), metadata=h.as_(tenant))
    assert {v.version: v.wrapped_project_keys for v in key.versions} == {2: 2, 1: 0}
    project = await h.stub.GetProjectKey(pb.GetProjectKeyRequest(project_id=tenant.project_id), metadata=h.as_(tenant))
    assert project.data_keys_pending_rewrap == 0
    # old versions can now be retired; the job's data still reads, its payload bytes unchanged
    await h.stub.UpdateClientKey(pb.UpdateClientKeyRequest(
        key_id=tenant.key_id, client_key=pb.ClientKey(min_decryption_version=2),
        update_mask=field_mask_pb2.FieldMask(paths=["min_decryption_version"])), metadata=h.as_(tenant))
    await h.stub.UpdateProjectKey(pb.UpdateProjectKeyRequest(
        project_id=tenant.project_id, project_key=pb.ProjectKey(min_decryption_version=2)), metadata=h.as_(tenant))
    answer = await h.access(lease, ["payload.card.number"])
    assert answer.fields[0].value.string_value == "4111-1111-1111-1111"
    assert (answer.client_key_version, answer.project_key_version) == (2, 2)
    assert lease.payload.SerializeToString() == before
    lower = await fail(h.stub.UpdateProjectKey(pb.UpdateProjectKeyRequest(
        project_id=tenant.project_id, project_key=pb.ProjectKey(min_decryption_version=1)), metadata=h.as_(tenant)))
    assert from_rpc_error(lower).reason == "INVALID_MIN_VERSION"
    types = [r.type for r in await h.records(tenant)]
    assert types.count(T.ACCESS_RECORD_TYPE_KEY_ROTATED) == 1 and types.count(T.ACCESS_RECORD_TYPE_KEY_UPDATED) == 1
    assert types.count(T.ACCESS_RECORD_TYPE_PROJECT_KEY_CHANGED) == 2


async def test_a_retired_project_key_version_refuses_data_keys_not_yet_rewrapped(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    await h.stub.RotateProjectKey(pb.RotateProjectKeyRequest(project_id=tenant.project_id), metadata=h.as_(tenant))
    await h.stub.UpdateProjectKey(pb.UpdateProjectKeyRequest(
        project_id=tenant.project_id, project_key=pb.ProjectKey(min_decryption_version=2)), metadata=h.as_(tenant))
    err = await fail(h.access(lease, ["payload.card.number"]))
    assert from_rpc_error(err).reason == "KEY_VERSION_RETIRED"
    last = (await h.records(tenant, job_id=lease.job_id))[-1]
    assert (last.outcome, last.reason) == (OUT.ACCESS_OUTCOME_DENIED, "KEY_VERSION_RETIRED")


async def test_disabling_a_key_shreds_its_data_and_says_so(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    refused = await fail(h.stub.DisableClientKey(pb.DisableClientKeyRequest(key_id=tenant.key_id),
                                                 metadata=h.as_(tenant)))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    key = await h.stub.DisableClientKey(pb.DisableClientKeyRequest(key_id=tenant.key_id, acknowledge_data_loss=True,
                                                                   reason="offboarding"), metadata=h.as_(tenant))
    assert key.state == pb.ClientKeyState.CLIENT_KEY_STATE_DISABLED
    assert {v.state for v in key.versions} == {pb.KeyVersionState.KEY_VERSION_STATE_DESTROYED}
    rows = await sql(h, "SELECT count(*) FROM keys.project_key_versions WHERE key_id::text = %s "
                        "AND wrapped IS NOT NULL", tenant.key_id)
    assert rows == [(0,)]
    err = await fail(h.access(lease, ["payload.card.number"]))
    assert (err.code(), from_rpc_error(err).reason) == (grpc.StatusCode.PERMISSION_DENIED, "KEY_DISABLED")
    new_job = await fail(h.submit(tenant, CARD, ["payload.card.number"]))
    assert from_rpc_error(new_job).reason == "KEY_DISABLED"
    disabled = [r for r in await h.records(tenant) if r.type == T.ACCESS_RECORD_TYPE_KEY_DISABLED]
    assert len(disabled) == 1 and "crypto-shredded" in disabled[0].message and "offboarding" in disabled[0].message
    listed = await h.stub.ListClientKeys(pb.ListClientKeysRequest(customer_id=tenant.customer_id),
                                         metadata=h.as_(tenant))
    assert listed.client_keys == []
    assert (await h.verify(tenant)).ok


async def test_an_access_never_completed_is_marked_abandoned(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    answer = await h.access(lease, ["payload.card.number"])
    await sql(h, "UPDATE keys.accesses SET create_time = create_time - interval '1 day' WHERE id::text = %s",
              answer.access_id)
    assert await h.keys.accesses.sweep_abandoned() >= 1
    last = (await h.records(tenant, job_id=lease.job_id))[-1]
    assert (last.type, last.outcome) == (T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED, OUT.ACCESS_OUTCOME_ABANDONED)
    assert last.access_id == answer.access_id and "never completed" in last.message
    assert list(last.returned_fields) == ["payload.card.number"]
    # a late completion changes nothing
    await h.stub.CompleteSecureAccess(pb.CompleteSecureAccessRequest(access_id=answer.access_id, runner_id="runner-1",
                                                                     succeeded=True), metadata=RUNNERS)
    assert (await h.records(tenant, job_id=lease.job_id))[-1].id == last.id


async def test_webhooks_receive_signed_matching_records(harness: Harness) -> None:
    h = harness
    received: list[tuple[dict[str, Any], str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((json.loads(body), request.headers["x-innosystem-signature"], body))
        return web.Response(status=200 if len(received) > 1 else 500)  # the first attempt fails: retried

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        tenant = await registered(h)
        created = await h.logs.CreateNotificationChannel(alpb.CreateNotificationChannelRequest(
            customer_id=tenant.customer_id, notification_channel=alpb.NotificationChannel(
                webhook_url=f"http://127.0.0.1:{port}/hook",
                triggers=[alpb.NotificationTrigger.NOTIFICATION_TRIGGER_ACCESS_DENIED])), metadata=h.as_(tenant))
        secret = created.signing_secret
        assert secret and created.notification_channel.signing_secret_fingerprint
        lease = await h.submit(tenant, CARD, ["payload.card.number"])
        await h.access(lease, ["payload.card.number"])  # granted: no notification
        await fail(h.access(lease, ["payload.card.number"], runner_id="intruder"))
        await h.keys.notifications.deliver_once()
        await sql(h, "UPDATE keys.deliveries SET next_attempt_time = now() WHERE done = false")
        await h.keys.notifications.deliver_once()
        assert len(received) == 2
        event, signature, body = received[-1]
        assert event["record"]["reason"] == "NOT_LEASE_HOLDER"
        assert event["trigger"] == "NOTIFICATION_TRIGGER_ACCESS_DENIED"
        t, v1 = (part.split("=", 1)[1] for part in signature.split(","))
        assert v1 == hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
        channel = await h.logs.GetNotificationChannel(alpb.GetNotificationChannelRequest(
            notification_channel_id=created.notification_channel.id), metadata=h.as_(tenant))
        assert channel.HasField("last_delivery_time") and channel.last_delivery_error == ""
        rows = await sql(h, "SELECT sealed_secret FROM keys.notification_channels")
        assert all(secret.encode() not in bytes(r[0]) for r in rows)  # type: ignore[arg-type]
    finally:
        await runner.cleanup()


async def test_watch_streams_new_records(harness: Harness) -> None:
    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    stream = h.logs.WatchAccessLogs(alpb.WatchAccessLogsRequest(customer_id=tenant.customer_id, job_id=lease.job_id),
                                    metadata=h.as_(tenant))
    try:
        await asyncio.sleep(0.3)  # let the watch subscribe before the access
        await fail(h.access(lease, ["payload.card.number"], runner_id="intruder"))
        first = await asyncio.wait_for(stream.read(), 20)
        second = await asyncio.wait_for(stream.read(), 20)
        assert [first.type, second.type] == [T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED,
                                             T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED]
        assert second.prev_hash == first.hash and second.outcome == OUT.ACCESS_OUTCOME_DENIED
    finally:
        stream.cancel()



async def test_a_pre_access_record_left_unresolved_is_abandoned_too(harness: Harness) -> None:
    """The keys process stopped between the pre-access record and any outcome: still closed, visibly."""
    from services.keys.access import JobData
    from services.keys.accesslog import Entry

    h = harness
    tenant = await registered(h)
    lease = await h.submit(tenant, CARD, ["payload.card.number"])
    access_id = str(uuid.uuid4())
    await h.keys.accesses._open(JobData.of(lease), Entry(
        type=T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED, access_id=access_id, job_id=lease.job_id, processor_id="runner-1",
        purpose=1, requested_fields=["payload.card.number"], outcome=OUT.ACCESS_OUTCOME_PENDING))
    await sql(h, "UPDATE keys.accesses SET create_time = create_time - interval '1 day' WHERE id::text = %s",
              access_id)
    await h.keys.accesses.sweep_abandoned()
    last = (await h.records(tenant, job_id=lease.job_id))[-1]
    assert (last.type, last.access_id) == (T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED, access_id)
    assert "never resolved" in last.message and list(last.requested_fields) == ["payload.card.number"]
