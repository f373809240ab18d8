"""Issue 14 item 4 (keys part): a customer's key registrations, key policy, secrets, rotation,
disable and project keys are the customer's alone. Its reseller sees them but cannot change them;
another customer does not see them; an admin can, as a break-glass that is logged and on the record."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.kit.errors import from_rpc_error
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from tests.keys.conftest import ADMIN, Harness, Tenant, signed

T = alpb.AccessRecordType


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    return caught.value


def policy_change(key_id: str) -> pb.UpdateClientKeyRequest:
    return pb.UpdateClientKeyRequest(key_id=key_id, client_key=pb.ClientKey(policy=pb.KeyPolicy(
        allowed_purposes=[1, 2])), update_mask=field_mask_pb2.FieldMask(paths=["policy"]))


async def test_a_reseller_sees_its_customers_keys_but_cannot_change_them(harness: Harness) -> None:
    h = harness
    tenant = Tenant()
    reseller_id = str(uuid.uuid4())
    h.tenancy.resellers[tenant.customer_id] = reseller_id
    key = await h.register(tenant)
    await h.submit(tenant, {"card": {"number": "4111"}}, ["payload.card.number"])  # makes the project key
    reseller = signed(Principal(kind=principals.RESELLER, reseller_id=reseller_id, key_id="ak_reseller"))

    seen = await h.stub.GetClientKey(pb.GetClientKeyRequest(key_id=key.id), metadata=reseller)
    assert seen.id == key.id  # visibility is unchanged: a reseller may look

    attempts = {
        "register": h.stub.CreateClientKey(pb.CreateClientKeyRequest(
            customer_id=tenant.customer_id, client_key=pb.ClientKey(
                endpoint_url=h.km.grpc_url, external_key_id="cmk-1", hmac_secrets=[h.km.secret])), metadata=reseller),
        "policy": h.stub.UpdateClientKey(policy_change(key.id), metadata=reseller),
        "secrets": h.stub.UpdateClientKey(pb.UpdateClientKeyRequest(
            key_id=key.id, client_key=pb.ClientKey(hmac_secrets=["r" * 40]),
            update_mask=field_mask_pb2.FieldMask(paths=["hmac_secrets"])), metadata=reseller),
        "rotate": h.stub.RotateClientKey(pb.RotateClientKeyRequest(
            key_id=key.id, endpoint_url=h.km.http_url, external_key_id="cmk-2"), metadata=reseller),
        "disable": h.stub.DisableClientKey(pb.DisableClientKeyRequest(
            key_id=key.id, acknowledge_data_loss=True), metadata=reseller),
        "project min version": h.stub.UpdateProjectKey(pb.UpdateProjectKeyRequest(
            project_id=tenant.project_id, project_key=pb.ProjectKey(min_decryption_version=1),
            update_mask=field_mask_pb2.FieldMask(paths=["min_decryption_version"])), metadata=reseller),
        "project rotate": h.stub.RotateProjectKey(pb.RotateProjectKeyRequest(project_id=tenant.project_id),
                                                  metadata=reseller),
    }
    for what, call in attempts.items():
        err = await refused(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, what
        assert from_rpc_error(err).reason == "CUSTOMER_ONLY", what

    after = await h.stub.GetClientKey(pb.GetClientKeyRequest(key_id=key.id), metadata=h.as_(tenant))
    assert after.state == pb.ClientKeyState.CLIENT_KEY_STATE_ACTIVE and after.current_version == 1
    assert list(after.hmac_secret_fingerprints) == list(key.hmac_secret_fingerprints)
    assert not after.policy.allowed_purposes
    assert [r.type for r in await h.records(tenant)] == [T.ACCESS_RECORD_TYPE_KEY_REGISTERED]

    # Another reseller, or another customer, does not even see the key.
    stranger = signed(Principal(kind=principals.RESELLER, reseller_id=str(uuid.uuid4()), key_id="ak_other"))
    other = Tenant()
    for caller in (stranger, h.as_(other)):
        err = await refused(h.stub.UpdateClientKey(policy_change(key.id), metadata=caller))
        assert err.code() == grpc.StatusCode.NOT_FOUND

    # The customer itself can.
    changed = await h.stub.UpdateClientKey(policy_change(key.id), metadata=h.as_(tenant))
    assert list(changed.policy.allowed_purposes) == [1, 2]


async def test_an_admin_change_is_a_logged_break_glass_on_the_customers_record(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h = harness
    tenant = Tenant()
    key = await h.register(tenant)
    with caplog.at_level(logging.WARNING, logger="services.keys.registry"):
        await h.stub.UpdateClientKey(policy_change(key.id), metadata=ADMIN)
    glass = [r for r in caplog.records if getattr(r, "event", "") == "break_glass"]
    assert len(glass) == 1 and glass[0].levelno == logging.WARNING
    assert glass[0].customer_id == tenant.customer_id and glass[0].admin_key_id == "ak_admin"  # type: ignore[attr-defined]
    assert glass[0].action == "change a key"  # type: ignore[attr-defined]
    last = (await h.records(tenant))[-1]
    assert last.type == T.ACCESS_RECORD_TYPE_KEY_UPDATED and "admin break-glass" in last.message
    assert last.processor_kind == principals.ADMIN
