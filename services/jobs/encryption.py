"""Field encryption of a job's payload and result under its project's client key, done by the
keys service (`EncryptFields`): only ciphertext envelopes are stored, in place of the values.

Which fields: the type's `sensitive_fields` rooted at `payload.` (at submit) or `result.` (at
completion), each a dot path of object keys; none named for a root = every top-level field of it.
A path absent from the document is skipped. Keys being unavailable fails the operation: a job of
an encrypted project is never stored in the clear.

Calls in flight are bounded per customer, not per process: a customer's slow or hanging key
manager holds only that customer's slots (each call also ends at its timeout), so another
customer's submits and results are encrypted meanwhile. A customer's gate exists only while it
has calls in flight or waiting, so the table is as large as the customers being served at once.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import struct_pb2

from innosystem.keys.v1 import keys_pb2, keys_pb2_grpc
from innosystem.kit.errors import from_rpc_error

PER_CUSTOMER = 8  # one customer's EncryptFields calls in flight in this process


def paths_for(root: str, document: dict[str, Any], sensitive: Sequence[str]) -> list[str]:
    """The paths to encrypt under `root` ("payload" or "result") that exist in `document`."""
    named = [p for p in sensitive if p.startswith(root + ".")]
    if not any(p.startswith(("payload.", "result.")) for p in sensitive):
        named = [f"{root}.{key}" for key in document]
    return [p for p in named if _lookup(document, p) is not _MISSING]


_MISSING = object()


def _lookup(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for key in path.split(".")[1:]:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _replace(document: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")[1:]
    node = document
    for key in parents:
        node = node[key]
    node[last] = value


class _Gate:
    def __init__(self, slots: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.users = 0  # calls holding or waiting for a slot


class Encryptor:
    def __init__(self, keys: grpc.aio.Channel, call_timeout: float = 10.0, per_customer: int = PER_CUSTOMER) -> None:
        self._stub = keys_pb2_grpc.KeyManagementServiceStub(keys)
        self._timeout = call_timeout
        self._per_customer = per_customer
        self._gates: dict[str, _Gate] = {}

    @asynccontextmanager
    async def _slot(self, customer_id: str) -> AsyncIterator[None]:
        gate = self._gates.get(customer_id)
        if gate is None:
            gate = self._gates[customer_id] = _Gate(self._per_customer)
        gate.users += 1
        try:
            async with gate.slots:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:  # nobody holds or waits: forget the customer
                del self._gates[customer_id]

    def customers_in_flight(self) -> int:
        """How many customers have calls in flight or waiting (the size of the gate table)."""
        return len(self._gates)

    async def encrypt(self, key_id: str, customer_id: str, project_id: str, job_id: str, root: str,
                      document: dict[str, Any], sensitive: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """A copy of `document` with its sensitive fields replaced by envelopes, and their paths."""
        paths = paths_for(root, document, sensitive)
        if not paths:
            return document, []
        fields = []
        for path in paths:
            value = struct_pb2.Value()
            value.MergeFrom(_value(_lookup(document, path)))
            fields.append(keys_pb2.PlainField(path=path, value=value))
        request = keys_pb2.EncryptFieldsRequest(
            context=keys_pb2.EncryptionContext(customer_id=customer_id, project_id=project_id, job_id=job_id,
                                               key_id=key_id), fields=fields)
        async with self._slot(customer_id):
            try:
                reply = await self._stub.EncryptFields(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None
        out = copy.deepcopy(document)
        for field in reply.fields:
            _replace(out, field.path, field.ciphertext)
        return out, [f.path for f in reply.fields]


def _value(plain: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": plain})
    return holder.fields["v"]
