"""Talking to customers' key managers: sealed secrets, request metadata, verification, clients."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from innosystem.keymanager.aead import NONCE_BYTES, IntegrityError, open_, seal
from innosystem.keymanager.client import ERROR, KeyManagerClient, KeyManagerError
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.kit import egress

SYSTEM = km.PurposeCode.PURPOSE_CODE_PLATFORM_SYSTEM_OPERATION
T = TypeVar("T")


class Sealer:
    """AES-256-GCM under the platform master key, bound to what the secret belongs to."""

    def __init__(self, master_key: bytes) -> None:
        self._key = master_key

    def seal(self, owner: str, values: list[str]) -> bytes:
        nonce, ct = seal(self._key, json.dumps(values).encode(), b"innosystem.keys.sealed|" + owner.encode())
        return nonce + ct

    def open(self, owner: str, sealed: bytes) -> list[str]:
        try:
            raw = open_(self._key, sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                        b"innosystem.keys.sealed|" + owner.encode())
        except IntegrityError:
            raise IntegrityError("a sealed secret does not open (wrong INNOSYSTEM_KEYS_MASTER_KEY?)") from None
        return list(json.loads(raw))


def metadata(customer_id: str, purpose: int, *, project_id: str = "", job_id: str = "", processor_id: str = "",
             fields: list[str] | None = None, client_reference: str = "",
             request_id: str = "") -> km.RequestMetadata:
    return km.RequestMetadata(platform_request_id=request_id or uuid.uuid4().hex, customer_id=customer_id,
                              project_id=project_id, job_id=job_id, processor_id=processor_id,
                              purpose=purpose, requested_fields=fields or [],  # type: ignore[arg-type]
                              client_reference=client_reference)


@dataclass
class VerifyResult:
    ok: bool = False
    healthy: bool = False
    key_state: int = 0
    round_trip_ok: bool = False
    latency_ms: int = 0
    error: str = ""
    key_version: str = ""


async def verify(client: KeyManagerClient, external_key_id: str, customer_id: str) -> VerifyResult:
    """Health, metadata, then wrap and unwrap a random key: each step must pass before the next."""
    out = VerifyResult()
    slowest = 0.0

    async def timed(coro: Awaitable[T]) -> T:
        nonlocal slowest
        started = time.perf_counter()
        try:
            return await coro
        finally:
            slowest = max(slowest, time.perf_counter() - started)

    try:
        health = await timed(client.health(km.HealthRequest(metadata=metadata(customer_id, SYSTEM))))
        out.healthy = health.status == km.ServingStatus.SERVING_STATUS_SERVING
        if not out.healthy:
            out.error = "health: the key manager is not serving"
            return out
        meta = await timed(client.metadata(km.GetKeyMetadataRequest(key_id=external_key_id,
                                                                    metadata=metadata(customer_id, SYSTEM))))
        out.key_state, out.key_version = int(meta.state), meta.key_version
        if meta.state != km.KeyState.KEY_STATE_ENABLED:
            out.error = f"metadata: key {external_key_id!r} is {km.KeyState.Name(meta.state)}"
            return out
        probe, aad = os.urandom(32), b"innosystem.keys.verify|" + customer_id.encode()
        wrapped = await timed(client.wrap(km.WrapRequest(key_id=external_key_id, plaintext=probe,
                                                         additional_authenticated_data=aad,
                                                         metadata=metadata(customer_id, SYSTEM))))
        back = await timed(client.unwrap(km.UnwrapRequest(key_id=external_key_id, ciphertext=wrapped.ciphertext,
                                                          additional_authenticated_data=aad,
                                                          metadata=metadata(customer_id, SYSTEM))))
        out.round_trip_ok = back.plaintext == probe
        out.key_version = wrapped.key_version or out.key_version
        if not out.round_trip_ok:
            out.error = "round trip: unwrap did not return the wrapped bytes"
            return out
        out.ok = True
        return out
    except KeyManagerError as exc:
        out.error = str(exc)
        return out
    finally:
        out.latency_ms = int(slowest * 1000)


class Clients:
    """One client per (endpoint, secrets, timeout), reused; closed on shutdown. Every one calls
    through the egress guard with the operator's policy, over one shared HTTP pool."""

    def __init__(self, policy: egress.Policy) -> None:
        self.policy = policy
        self.http = egress.Client(policy)
        self._clients: dict[tuple[str, tuple[str, ...], int], KeyManagerClient] = {}

    def get(self, url: str, secrets: list[str], timeout_ms: int) -> KeyManagerClient:
        """The client, or KeyManagerError if the endpoint is not one the guard lets us call (an
        endpoint stored before the guard, or before the operator narrowed the allow-list)."""
        k = (url, tuple(secrets), timeout_ms)
        client = self._clients.get(k)
        if client is None:
            try:
                client = KeyManagerClient(url, [s.encode() for s in secrets], timeout_ms / 1000,
                                          policy=self.policy, http=self.http)
            except egress.EgressError as exc:
                raise KeyManagerError(ERROR, exc.reason,
                                      f"key manager call refused by the egress guard: {exc.message}") from None
            except ValueError as exc:
                raise KeyManagerError(ERROR, "INVALID_ENDPOINT",
                                      f"the key manager endpoint is invalid: {exc}") from None
            self._clients[k] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        await self.http.close()
