"""The platform's client for a customer's key manager: either binding, signed, with a timeout.

`grpc://` and `http://` are for loopback development only (`allow_insecure` lifts that for
tests and private networks); `grpcs://` and `https://` use TLS with the system's roots.
Failures come back as one `KeyManagerError` whose `outcome` is DENIED (the key manager said no)
or ERROR (it could not be reached, timed out, or answered nonsense) with a reason code.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from innosystem.keymanager import signing
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.kit.errors import from_rpc_error

SERVICE_PATH = "/innosystem.keymanager.v1.ExternalKeyManagerService/"
HTTP_METHODS = {"Wrap": "wrap", "Unwrap": "unwrap", "GetKeyMetadata": "getKeyMetadata", "Health": "health"}
DENIED, ERROR = "DENIED", "ERROR"
SCHEMES = ("grpc", "grpcs", "http", "https")
R = TypeVar("R", bound=Message)


class KeyManagerError(Exception):
    def __init__(self, outcome: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.outcome, self.reason, self.message = outcome, reason, message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def tls(self) -> bool:
        return self.scheme in ("grpcs", "https")


def parse_endpoint(url: str, allow_insecure: bool = False) -> Endpoint:
    """The endpoint, or ValueError saying what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"must be grpcs://host:port or https://host[:port][/path] (got {url!r})")
    if parts.query or parts.fragment or parts.username:
        raise ValueError("must not carry a query, fragment or credentials")
    default_port = 443 if parts.scheme in ("https", "grpcs") else 80
    if parts.scheme in ("grpc", "grpcs") and not parts.port:
        raise ValueError("a gRPC endpoint needs a port")
    endpoint = Endpoint(parts.scheme, parts.hostname, parts.port or default_port, parts.path.rstrip("/"))
    if not endpoint.tls and not allow_insecure and not _loopback(endpoint.host):
        raise ValueError("grpc:// and http:// are allowed only on loopback; use grpcs:// or https://")
    return endpoint


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KeyManagerClient:
    """One customer key manager endpoint; channels and HTTP sessions are reused across calls."""

    def __init__(self, url: str, secrets: Sequence[bytes], timeout: float, allow_insecure: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.endpoint = parse_endpoint(url, allow_insecure)
        self.secrets = list(secrets)
        self.timeout = timeout
        self.clock = clock  # the signature's timestamp (tests move it to prove replay bounds)
        self._channel: grpc.aio.Channel | None = None
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._http is not None:
            await self._http.close()

    async def wrap(self, request: km.WrapRequest) -> km.WrapResponse:
        return await self._call("Wrap", request, km.WrapResponse)

    async def unwrap(self, request: km.UnwrapRequest) -> km.UnwrapResponse:
        return await self._call("Unwrap", request, km.UnwrapResponse)

    async def metadata(self, request: km.GetKeyMetadataRequest) -> km.KeyMetadata:
        return await self._call("GetKeyMetadata", request, km.KeyMetadata)

    async def health(self, request: km.HealthRequest) -> km.HealthResponse:
        return await self._call("Health", request, km.HealthResponse)

    async def _call(self, method: str, request: Message, response: type[R]) -> R:
        if self.endpoint.scheme.startswith("grpc"):
            return await self._grpc(method, request, response)
        return await self._http_call(method, request, response)

    async def _grpc(self, method: str, request: Message, response: type[R]) -> R:
        if self._channel is None:
            target = f"{self.endpoint.host}:{self.endpoint.port}"
            self._channel = (grpc.aio.secure_channel(target, grpc.ssl_channel_credentials()) if self.endpoint.tls
                             else grpc.aio.insecure_channel(target))
        path = SERVICE_PATH + method
        body = request.SerializeToString()
        call = self._channel.unary_unary(path, request_serializer=lambda b: b,
                                         response_deserializer=response.FromString)
        try:
            signed = signing.sign(self.secrets, path, body, self.clock())
            answer: R = await call(body, timeout=self.timeout, metadata=signed)
            return answer
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            raise _classify(exc.code(), err.reason, err.message) from None

    async def _http_call(self, method: str, request: Message, response: type[R]) -> R:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        scheme = "https" if self.endpoint.tls else "http"
        path = f"{self.endpoint.base_path}/v1/{HTTP_METHODS[method]}"
        body = json_format.MessageToJson(request, indent=None).encode()
        headers = {"content-type": "application/json", **dict(signing.sign(self.secrets, path, body, self.clock()))}
        url = f"{scheme}://{self.endpoint.host}:{self.endpoint.port}{path}"
        try:
            async with self._http.post(url, data=body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    code, reason, message = _http_error(resp.status, text)
                    raise _classify(code, reason, message)
                return json_format.Parse(text, response(), ignore_unknown_fields=True)
        except TimeoutError:
            raise KeyManagerError(ERROR, "KEY_MANAGER_TIMEOUT", f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise KeyManagerError(ERROR, "KEY_MANAGER_UNREACHABLE", f"cannot reach the key manager: {exc}") from None
        except (json_format.ParseError, DecodeError, ValueError) as exc:
            raise KeyManagerError(ERROR, "KEY_MANAGER_BAD_ANSWER", f"unreadable answer: {exc}") from None


_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               409: grpc.StatusCode.ABORTED, 412: grpc.StatusCode.FAILED_PRECONDITION,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
               504: grpc.StatusCode.DEADLINE_EXCEEDED}


def _http_error(status: int, text: str) -> tuple[grpc.StatusCode, str, str]:
    code = _HTTP_CODES.get(status, grpc.StatusCode.UNKNOWN)
    reason, message = code.name, f"HTTP {status}"
    try:
        parsed: Any = json.loads(text)
        st = json_format.ParseDict(parsed, status_pb2.Status(), ignore_unknown_fields=True)
        message = st.message or message
        for detail in st.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason or reason
    except (ValueError, json_format.ParseError, TypeError):
        pass
    return code, reason, message


def _classify(code: grpc.StatusCode, reason: str, message: str) -> KeyManagerError:
    if code == grpc.StatusCode.PERMISSION_DENIED or code == grpc.StatusCode.FAILED_PRECONDITION:
        return KeyManagerError(DENIED, "KEY_MANAGER_REFUSED", f"the key manager refused ({reason}): {message}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return KeyManagerError(ERROR, "KEY_MANAGER_UNREACHABLE", f"cannot reach the key manager: {message}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return KeyManagerError(ERROR, "KEY_MANAGER_TIMEOUT", "the key manager did not answer in time")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return KeyManagerError(ERROR, "KEY_MANAGER_AUTH_FAILED",
                               f"the key manager rejected the request signature ({reason}): {message}")
    if code == grpc.StatusCode.INVALID_ARGUMENT and reason == "UNWRAP_FAILED":
        return KeyManagerError(ERROR, "INTEGRITY_CHECK_FAILED", f"the key manager could not unwrap: {message}")
    if code == grpc.StatusCode.NOT_FOUND:
        return KeyManagerError(ERROR, "KEY_MANAGER_KEY_NOT_FOUND", f"the key manager does not know the key: {message}")
    return KeyManagerError(ERROR, "KEY_MANAGER_ERROR", f"the key manager failed ({code.name} {reason}): {message}")

