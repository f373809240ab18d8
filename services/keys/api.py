"""KeyManagementService and AccessLoggingService servicers: protobuf ↔ domain, then the use cases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import grpc
from google.protobuf import empty_pb2

from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import access_logs_pb2_grpc, keys_pb2_grpc
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.kit.errors import InvalidArgument
from innosystem.kit.protos import changes, request_hash, timestamp
from innosystem.kit.validation import parse_uuid
from services.keys.access import Accesses
from services.keys.accesslog import AccessLog, LogFilter, record_pb
from services.keys.deps import Deps
from services.keys.hierarchy import DISABLED
from services.keys.models import DataKey
from services.keys.notify import Notifications, channel_pb
from services.keys.registry import KeyView, ProjectKeyView, Registry

VS = pb.KeyVersionState


def _version_state(version: int, current: int, minimum: int, destroyed: bool) -> int:
    if destroyed:
        return VS.KEY_VERSION_STATE_DESTROYED
    if version == current:
        return VS.KEY_VERSION_STATE_PRIMARY
    if version < minimum:
        return VS.KEY_VERSION_STATE_RETIRED
    return VS.KEY_VERSION_STATE_ENABLED


def client_key_pb(v: KeyView) -> pb.ClientKey:
    k = v.key
    current = next((x for x in v.versions if x.version == k.current_version), None)
    policy = k.policy or {}
    return pb.ClientKey(
        id=str(k.id), customer_id=str(k.customer_id), description=k.description,
        endpoint_url=current.endpoint_url if current else "",
        external_key_id=current.external_key_id if current else "",
        hmac_secret_fingerprints=k.secret_fingerprints,
        policy=pb.KeyPolicy(allowed_purposes=policy.get("allowed_purposes", []),
                            allowed_fields=policy.get("allowed_fields", [])),
        timeout_ms=k.timeout_ms, state=k.state,  # type: ignore[arg-type]
        current_version=k.current_version, min_decryption_version=k.min_decryption_version,
        versions=[pb.ClientKeyVersion(
            version=x.version, endpoint_url=x.endpoint_url, external_key_id=x.external_key_id,
            key_manager_key_version=x.key_manager_key_version,
            state=_version_state(x.version, k.current_version, k.min_decryption_version,  # type: ignore[arg-type]
                                 x.destroyed or k.state == DISABLED),
            wrapped_project_keys=v.wrapped_counts.get(x.version, 0), create_time=timestamp(x.create_time))
            for x in v.versions],
        last_verify_time=timestamp(k.last_verify_time), last_verify_error=k.last_verify_error,
        create_time=timestamp(k.create_time), update_time=timestamp(k.update_time),
        disable_time=timestamp(k.disable_time))


def project_key_pb(v: ProjectKeyView) -> pb.ProjectKey:
    k = v.key
    return pb.ProjectKey(
        project_id=k.project_id, customer_id=str(k.customer_id), key_id=str(k.key_id),
        current_version=k.current_version, min_decryption_version=k.min_decryption_version,
        versions=[pb.ProjectKeyVersion(version=x.version, client_key_version=x.client_key_version,
                                       state=_version_state(x.version, k.current_version,  # type: ignore[arg-type]
                                                            k.min_decryption_version, x.wrapped is None),
                                       create_time=timestamp(x.create_time)) for x in v.versions],
        data_keys_pending_rewrap=v.pending, create_time=timestamp(k.create_time),
        update_time=timestamp(k.update_time))


def data_key_pb(d: DataKey) -> pb.DataKey:
    return pb.DataKey(id=str(d.id), customer_id=str(d.customer_id), project_id=d.project_id, job_id=d.job_id,
                      key_id=str(d.key_id), project_key_version=d.project_key_version, wrapped_key=d.wrapped or b"",
                      create_time=timestamp(d.create_time), update_time=timestamp(d.update_time))


def _verification_pb(key_id: str, r: object, when: datetime) -> pb.KeyVerification:
    return pb.KeyVerification(key_id=key_id, ok=r.ok, healthy=r.healthy, key_state=r.key_state,  # type: ignore[attr-defined]
                              round_trip_ok=r.round_trip_ok, latency_ms=r.latency_ms,  # type: ignore[attr-defined]
                              error=r.error, verify_time=timestamp(when))  # type: ignore[attr-defined]


class KeysApi(keys_pb2_grpc.KeyManagementServiceServicer):
    def __init__(self, registry: Registry, accesses: Accesses) -> None:
        self.registry, self.accesses = registry, accesses

    async def CreateClientKey(self, request: pb.CreateClientKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.ClientKey:
        return client_key_pb(await self.registry.create(principals.current(), request.customer_id, request.client_key,
                                                        request.request_id, request_hash(request)))

    async def GetClientKey(self, request: pb.GetClientKeyRequest, context: grpc.aio.ServicerContext) -> pb.ClientKey:
        return client_key_pb(await self.registry.get(principals.current(), request.key_id))

    async def ListClientKeys(self, request: pb.ListClientKeysRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListClientKeysResponse:
        page = await self.registry.list(principals.current(), request.customer_id, request.page_size,
                                        request.page_token, request.show_disabled)
        return pb.ListClientKeysResponse(client_keys=[client_key_pb(v) for v in page.items],
                                         next_page_token=page.next_page_token)

    async def UpdateClientKey(self, request: pb.UpdateClientKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.ClientKey:
        fields = changes(request.client_key, request.update_mask, "client_key")
        if "policy" in fields:
            fields["policy"] = request.client_key.policy
        return client_key_pb(await self.registry.update(principals.current(), request.key_id, fields))

    async def VerifyClientKey(self, request: pb.VerifyClientKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.KeyVerification:
        key_id, result, when = await self.registry.verify(principals.current(), request.key_id)
        return _verification_pb(str(key_id), result, when)

    async def RotateClientKey(self, request: pb.RotateClientKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.ClientKey:
        return client_key_pb(await self.registry.rotate(principals.current(), request.key_id, request.external_key_id,
                                                        request.endpoint_url, request.request_id,
                                                        request_hash(request)))

    async def DisableClientKey(self, request: pb.DisableClientKeyRequest,
                               context: grpc.aio.ServicerContext) -> pb.ClientKey:
        return client_key_pb(await self.registry.disable(principals.current(), request.key_id,
                                                         request.acknowledge_data_loss, request.reason))

    async def GetProjectKey(self, request: pb.GetProjectKeyRequest,
                            context: grpc.aio.ServicerContext) -> pb.ProjectKey:
        return project_key_pb(await self.registry.get_project_key(principals.current(), request.project_id))

    async def UpdateProjectKey(self, request: pb.UpdateProjectKeyRequest,
                               context: grpc.aio.ServicerContext) -> pb.ProjectKey:
        fields = changes(request.project_key, request.update_mask, "project_key")
        unknown = set(fields) - {"min_decryption_version"}
        if unknown:
            raise InvalidArgument(f"project_key: only min_decryption_version can change, not {sorted(unknown)}",
                                  field="update_mask", reason="FIELD_NOT_UPDATABLE")
        return project_key_pb(await self.registry.update_project_key(
            principals.current(), request.project_id, int(fields.get("min_decryption_version", 0))))

    async def RotateProjectKey(self, request: pb.RotateProjectKeyRequest,
                               context: grpc.aio.ServicerContext) -> pb.ProjectKey:
        return project_key_pb(await self.registry.rotate_project_key(principals.current(), request.project_id,
                                                                     request.request_id, request_hash(request)))

    async def DecryptFields(self, request: pb.DecryptFieldsRequest,
                            context: grpc.aio.ServicerContext) -> pb.DecryptFieldsResponse:
        return await self.accesses.decrypt_fields(principals.current(), request)

    # internal, from here on: only the callers in innosystem/kit/callers.py get here

    async def EncryptFields(self, request: pb.EncryptFieldsRequest,
                            context: grpc.aio.ServicerContext) -> pb.EncryptFieldsResponse:
        return await self.accesses.encrypt(request.context, request.fields)

    async def GenerateDataKey(self, request: pb.GenerateDataKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.DataKey:
        return data_key_pb(await self.accesses.generate(request.context))

    async def RewrapDataKey(self, request: pb.RewrapDataKeyRequest, context: grpc.aio.ServicerContext) -> pb.DataKey:
        return data_key_pb(await self.accesses.rewrap(request.data_key_id, request.project_key_version))

    async def SecureAccess(self, request: pb.SecureAccessRequest,
                           context: grpc.aio.ServicerContext) -> pb.SecureAccessResponse:
        return await self.accesses.secure_access(request)

    async def CompleteSecureAccess(self, request: pb.CompleteSecureAccessRequest,
                                   context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self.accesses.complete(request)
        return empty_pb2.Empty()


class AccessLogsApi(access_logs_pb2_grpc.AccessLoggingServiceServicer):
    def __init__(self, deps: Deps, log: AccessLog, notifications: Notifications) -> None:
        self.deps, self.log, self.notifications = deps, log, notifications

    async def _customer(self, customer_id: str) -> uuid.UUID:
        cid = parse_uuid(customer_id, "customer_id")
        await self.deps.ensure_visible(principals.current(), cid, "customer")
        return cid

    async def ListAccessLogs(self, request: alpb.ListAccessLogsRequest,
                             context: grpc.aio.ServicerContext) -> alpb.ListAccessLogsResponse:
        rows, token = await self.log.page(await self._customer(request.customer_id), LogFilter.of(request),
                                          request.page_size, request.page_token, request.oldest_first)
        return alpb.ListAccessLogsResponse(records=[record_pb(r) for r in rows], next_page_token=token)

    async def VerifyAccessLogs(self, request: alpb.VerifyAccessLogsRequest,
                               context: grpc.aio.ServicerContext) -> alpb.AccessLogVerification:
        cid = await self._customer(request.customer_id)
        v = await self.log.verify(cid)
        out = alpb.AccessLogVerification(customer_id=str(cid), ok=v.first_break is None, records_checked=v.checked,
                                         head_sequence=v.head_sequence, head_hash=v.head_hash)
        out.verify_time.GetCurrentTime()
        if v.first_break is not None:
            out.first_break.CopyFrom(v.first_break)
        return out

    async def WatchAccessLogs(self, request: alpb.WatchAccessLogsRequest,
                              context: grpc.aio.ServicerContext) -> AsyncIterator[alpb.AccessRecord]:
        cid = await self._customer(request.customer_id)
        async for record in self.log.watch(cid, LogFilter.of(request), request.after_sequence):
            yield record

    async def CreateNotificationChannel(self, request: alpb.CreateNotificationChannelRequest,
                                        context: grpc.aio.ServicerContext) -> alpb.CreateNotificationChannelResponse:
        row, secret = await self.notifications.create(principals.current(), request.customer_id,
                                                      request.notification_channel, request.request_id,
                                                      request_hash(request))
        return alpb.CreateNotificationChannelResponse(notification_channel=channel_pb(row), signing_secret=secret)

    async def GetNotificationChannel(self, request: alpb.GetNotificationChannelRequest,
                                     context: grpc.aio.ServicerContext) -> alpb.NotificationChannel:
        return channel_pb(await self.notifications.get(principals.current(), request.notification_channel_id))

    async def ListNotificationChannels(self, request: alpb.ListNotificationChannelsRequest,
                                       context: grpc.aio.ServicerContext) -> alpb.ListNotificationChannelsResponse:
        page = await self.notifications.list(principals.current(), request.customer_id, request.page_size,
                                             request.page_token)
        return alpb.ListNotificationChannelsResponse(notification_channels=[channel_pb(r) for r in page.items],
                                                     next_page_token=page.next_page_token)

    async def DeleteNotificationChannel(self, request: alpb.DeleteNotificationChannelRequest,
                                        context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self.notifications.delete(principals.current(), request.notification_channel_id)
        return empty_pb2.Empty()
