"""Issue 14, item 11: per-customer caps on client keys and notification channels (the keys service
on a real gRPC server, real PostgreSQL, a real reference key manager). A create past the cap is
RESOURCE_EXHAUSTED / QUOTA_EXCEEDED naming its setting, and changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit.errors import from_rpc_error
from tests.keys.conftest import Harness, Tenant

MAX_KEYS, MAX_CHANNELS = 2, 3


@pytest.fixture(scope="module", autouse=True)
def low_caps(harness: Harness) -> None:
    deps = harness.keys.deps
    deps.config = dataclasses.replace(deps.config, max_keys_per_customer=MAX_KEYS,
                                      max_channels_per_customer=MAX_CHANNELS)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


def assert_quota(err: grpc.aio.AioRpcError, setting: str, limit: int) -> None:
    domain = from_rpc_error(err)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert domain.reason == "QUOTA_EXCEEDED"
    assert setting in domain.message and str(limit) in domain.message
    assert domain.metadata["setting"] == setting and domain.metadata["limit"] == str(limit)


async def list_keys(h: Harness, tenant: Tenant, show_disabled: bool = True) -> list[pb.ClientKey]:
    answer = await h.stub.ListClientKeys(pb.ListClientKeysRequest(customer_id=tenant.customer_id, page_size=100,
                                                                  show_disabled=show_disabled),
                                         metadata=h.as_(tenant))
    return list(answer.client_keys)


async def test_client_keys_are_capped_per_customer_and_a_disabled_key_frees_its_place(harness: Harness) -> None:
    h = harness
    tenant, other = Tenant(), Tenant()
    first = await h.register(tenant)
    await h.register(tenant, external_key_id="cmk-2")
    records_before = len(await h.records(tenant))
    err = await refused(h.register(tenant))
    assert_quota(err, "INNOSYSTEM_KEYS_MAX_KEYS_PER_CUSTOMER", MAX_KEYS)
    assert len(await list_keys(h, tenant)) == MAX_KEYS  # nothing registered
    assert len(await h.records(tenant)) == records_before  # nothing on the access log either
    await h.register(other)  # another customer's keys are its own count
    await h.stub.DisableClientKey(pb.DisableClientKeyRequest(key_id=first.id, acknowledge_data_loss=True,
                                                             reason="retired"), metadata=h.as_(tenant))
    await h.register(tenant)
    assert len(await list_keys(h, tenant)) == MAX_KEYS + 1  # two live keys and the disabled one


async def test_concurrent_registrations_cannot_pass_the_cap_together(harness: Harness) -> None:
    h = harness
    tenant = Tenant()
    results = await asyncio.gather(*(h.register(Tenant(customer_id=tenant.customer_id)) for _ in range(5)),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == MAX_KEYS and len(await list_keys(h, tenant)) == MAX_KEYS
    assert all(isinstance(e, grpc.aio.AioRpcError) and from_rpc_error(e).reason == "QUOTA_EXCEEDED" for e in failed)


async def create_channel(h: Harness, tenant: Tenant) -> alpb.CreateNotificationChannelResponse:
    return await h.logs.CreateNotificationChannel(alpb.CreateNotificationChannelRequest(
        customer_id=tenant.customer_id, notification_channel=alpb.NotificationChannel(
            webhook_url="http://127.0.0.1:9/hook",
            triggers=[alpb.NotificationTrigger.NOTIFICATION_TRIGGER_ACCESS_DENIED])), metadata=h.as_(tenant))


async def test_notification_channels_are_capped_per_customer(harness: Harness) -> None:
    h = harness
    tenant, other = Tenant(), Tenant()
    made = [await create_channel(h, tenant) for _ in range(MAX_CHANNELS)]
    err = await refused(create_channel(h, tenant))
    assert_quota(err, "INNOSYSTEM_KEYS_MAX_CHANNELS_PER_CUSTOMER", MAX_CHANNELS)
    listed = await h.logs.ListNotificationChannels(alpb.ListNotificationChannelsRequest(
        customer_id=tenant.customer_id, page_size=100), metadata=h.as_(tenant))
    assert len(listed.notification_channels) == MAX_CHANNELS
    await create_channel(h, other)
    await h.logs.DeleteNotificationChannel(alpb.DeleteNotificationChannelRequest(
        notification_channel_id=made[0].notification_channel.id), metadata=h.as_(tenant))
    await create_channel(h, tenant)
