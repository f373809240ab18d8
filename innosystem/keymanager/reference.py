"""The reference key manager (`innosystem keymanager`): ExternalKeyManagerService over gRPC and
the same over HTTP JSON, backed by a local key file and a purpose policy.

For the embedded default, the tests, the demo and as a starting point for a customer's own. It
checks every request's signature (any of its secrets) and timestamp before anything else,
refuses purposes its policy does not allow with PERMISSION_DENIED PURPOSE_NOT_ALLOWED, and logs
each decision (key id, purpose, platform request id; never key material).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from innosystem.keymanager import signing
from innosystem.keymanager.aead import IntegrityError, VersionRefused
from innosystem.keymanager.client import HTTP_METHODS, SERVICE_PATH
from innosystem.keymanager.keystore import KeyStore, Policy, purpose_name
from innosystem.keymanager.v1 import keymanager_pb2 as km

log = logging.getLogger("innosystem.keymanager")
VERSION = "innosystem-keymanager 0.1.0"
KEY_AAD_LABEL = b"innosystem.keymanager.v1|"
PLATFORM_SYSTEM_OPERATION = km.PurposeCode.PURPOSE_CODE_PLATFORM_SYSTEM_OPERATION


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> status_pb2.Status:
        st = status_pb2.Status(code=self.code.value[0], message=self.message)
        st.details.add().Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain="keymanager.innosystem"))
        return st


_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
                grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.FAILED_PRECONDITION: 412}


@dataclass
class KeyManager:
    """The decisions, independent of the binding."""

    store: KeyStore
    policy: Policy
    secrets: Sequence[bytes]

    def authenticate(self, timestamp: str | None, sig: str | None, path: str, body: bytes) -> None:
        try:
            signing.verify(self.secrets, timestamp, sig, path, body)
        except signing.SignatureError as exc:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, exc.reason, str(exc)) from None

    def _key(self, key_id: str, using: bool = True) -> Any:
        stored = self.store.keys.get(key_id)
        if stored is None:
            raise Refusal(grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND", f"no key {key_id!r}")
        if using and stored.state != "ENABLED":
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "KEY_DISABLED", f"key {key_id!r} is {stored.state}")
        return stored

    def _decide(self, method: str, key_id: str, meta: km.RequestMetadata) -> None:
        if not meta.platform_request_id or not meta.customer_id:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "METADATA_MISSING",
                          "metadata.platform_request_id and metadata.customer_id are required")
        allowed = self.policy.allowed()
        ok = meta.purpose in allowed
        log.info("%s %s key=%s purpose=%s customer=%s project=%s job=%s processor=%s fields=%s request=%s",
                 "allow" if ok else "REFUSE", method, key_id, purpose_name(meta.purpose), meta.customer_id,
                 meta.project_id, meta.job_id, meta.processor_id, list(meta.requested_fields),
                 meta.platform_request_id)
        if not ok:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "PURPOSE_NOT_ALLOWED",
                          f"purpose {purpose_name(meta.purpose)} is not allowed by the key manager's policy")

    def wrap(self, r: km.WrapRequest) -> km.WrapResponse:
        stored = self._key(r.key_id)
        self._decide("wrap", r.key_id, r.metadata)
        if not r.plaintext or len(r.plaintext) > 1024:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "PLAINTEXT_INVALID", "plaintext must be 1 to 1024 bytes")
        blob = stored.ring.wrap(r.plaintext, KEY_AAD_LABEL + r.key_id.encode() + b"|" + r.additional_authenticated_data)
        return km.WrapResponse(ciphertext=blob, key_version=str(stored.ring.primary))

    def unwrap(self, r: km.UnwrapRequest) -> km.UnwrapResponse:
        stored = self._key(r.key_id)
        self._decide("unwrap", r.key_id, r.metadata)
        try:
            plain = stored.ring.unwrap(r.ciphertext,
                                       KEY_AAD_LABEL + r.key_id.encode() + b"|" + r.additional_authenticated_data)
        except (IntegrityError, VersionRefused) as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "UNWRAP_FAILED", f"cannot unwrap: {exc}") from None
        return km.UnwrapResponse(plaintext=plain)

    def metadata(self, r: km.GetKeyMetadataRequest) -> km.KeyMetadata:
        stored = self._key(r.key_id, using=False)
        created = Timestamp()
        created.FromDatetime(stored.create_time)
        state = {"ENABLED": km.KeyState.KEY_STATE_ENABLED, "DISABLED": km.KeyState.KEY_STATE_DISABLED,
                 "DESTROYED": km.KeyState.KEY_STATE_DESTROYED}.get(stored.state, km.KeyState.KEY_STATE_UNSPECIFIED)
        return km.KeyMetadata(key_id=r.key_id, state=state, algorithm="AES_256_GCM",
                              key_version=str(stored.ring.primary), create_time=created,
                              allowed_purposes=sorted(self.policy.allowed()))  # type: ignore[arg-type]

    def health(self, r: km.HealthRequest) -> km.HealthResponse:
        now = Timestamp()
        now.GetCurrentTime()
        return km.HealthResponse(status=km.ServingStatus.SERVING_STATUS_SERVING, contract_version="v1",
                                 server_version=VERSION, time=now)

    def methods(self) -> dict[str, tuple[type[Message], Callable[[Any], Message]]]:
        return {"Wrap": (km.WrapRequest, self.wrap), "Unwrap": (km.UnwrapRequest, self.unwrap),
                "GetKeyMetadata": (km.GetKeyMetadataRequest, self.metadata),
                "Health": (km.HealthRequest, self.health)}


def grpc_handler(manager: KeyManager) -> grpc.GenericRpcHandler:
    """Handlers that receive the raw request bytes: the signature covers the bytes as sent."""

    def make(name: str, request_type: type[Message],
             fn: Callable[[Any], Message]) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        path = SERVICE_PATH + name

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            try:
                manager.authenticate(md.get(signing.TIMESTAMP_HEADER), md.get(signing.SIGNATURE_HEADER), path, body)
                try:
                    request = request_type.FromString(body)
                except DecodeError:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", "unparsable request") from None
                return fn(request).SerializeToString()
            except Refusal as exc:
                await context.abort(exc.code, exc.message, trailing_metadata=(
                    ("grpc-status-details-bin", exc.status().SerializeToString()),))
                raise  # unreachable

        return handle

    handlers = {name: grpc.unary_unary_rpc_method_handler(make(name, t, f), request_deserializer=None,
                                                          response_serializer=None)
                for name, (t, f) in manager.methods().items()}
    return grpc.method_handlers_generic_handler("innosystem.keymanager.v1.ExternalKeyManagerService", handlers)


def http_app(manager: KeyManager, base_path: str = "") -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    for name, (request_type, fn) in manager.methods().items():
        path = f"{base_path}/v1/{HTTP_METHODS[name]}"

        async def handle(req: web.Request, path: str = path, request_type: type[Message] = request_type,
                         fn: Callable[[Any], Message] = fn) -> web.Response:
            body = await req.read()
            try:
                manager.authenticate(req.headers.get(signing.TIMESTAMP_HEADER),
                                     req.headers.get(signing.SIGNATURE_HEADER), req.path, body)
                try:
                    request = json_format.Parse(body.decode() or "{}", request_type(), ignore_unknown_fields=True)
                except (json_format.ParseError, UnicodeDecodeError):
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST",
                                  "the body is not the request in proto3 JSON") from None
                return web.Response(text=json_format.MessageToJson(fn(request), indent=None),
                                    content_type="application/json")
            except Refusal as exc:
                return web.Response(status=_HTTP_STATUS.get(exc.code, 500), content_type="application/json",
                                    text=json_format.MessageToJson(exc.status(), indent=None))

        app.router.add_post(path, handle)
    return app


async def serve(manager: KeyManager, host: str, port: int, http_port: int | None,
                ready: Callable[[int, int | None], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT. `ready(grpc_port, http_port)` is called once listening."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc_handler(manager),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"keymanager: cannot listen on {host}:{port}")
    await server.start()
    runner: web.AppRunner | None = None
    http_bound = None
    if http_port is not None:
        runner = web.AppRunner(http_app(manager), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, http_port)
        await site.start()
        http_bound = http_port
        for address in runner.addresses:  # the port actually bound (0 asks for any)
            http_bound = int(address[1])
    log.info("keymanager listening: grpc %s:%d%s", host, bound, f", http {host}:{http_bound}" if http_bound else "")
    if ready is not None:
        ready(bound, http_bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2)
    if runner is not None:
        await runner.cleanup()
