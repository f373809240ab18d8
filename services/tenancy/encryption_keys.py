"""Checks a project's encryption key with the keys service before tenancy records it.

A project names the client key its new jobs are encrypted under; the name is only useful if
the key exists, belongs to the project's customer and is not disabled, so tenancy asks keys'
public `GetClientKey` (as the tenancy service) when the key is set or changed. If keys cannot
answer, the change is refused with UNAVAILABLE rather than recorded unchecked.
"""

from __future__ import annotations

import uuid

import grpc

from innosystem.keys.v1 import keys_pb2, keys_pb2_grpc
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, from_rpc_error

FIELD = "project.encryption_key_id"


class EncryptionKeys:
    def __init__(self, keys: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._stub = keys_pb2_grpc.KeyManagementServiceStub(keys)
        self._timeout = timeout

    async def check(self, key_id: str, customer_id: uuid.UUID) -> None:
        """Returns when `key_id` is a usable key of `customer_id`; raises naming the field otherwise."""
        not_found = InvalidArgument(f"encryption key {key_id!r} is not one of this customer's keys", field=FIELD,
                                    reason="ENCRYPTION_KEY_NOT_FOUND")
        try:
            key = await self._stub.GetClientKey(keys_pb2.GetClientKeyRequest(key_id=key_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found from None
            raise from_rpc_error(exc) from None
        if key.customer_id != str(customer_id):  # another customer's key: the same answer, nothing leaks
            raise not_found
        if key.state == keys_pb2.CLIENT_KEY_STATE_DISABLED:
            raise FailedPrecondition(f"encryption key {key_id} is disabled", field=FIELD,
                                     reason="ENCRYPTION_KEY_DISABLED")
