"""The platform's client for a customer's key manager: either binding, signed, with a timeout.

A key manager endpoint is a URL the customer gave us, so every call goes through the egress
guard (`innosystem.kit.egress`): `grpcs://` and `https://` (TLS, the system's roots) unless the
operator allow-lists the host, the resolved address checked when the connection is made, no
redirects, answers capped in size. Failures come back as one `KeyManagerError` whose `outcome`
is DENIED (the key manager said no) or ERROR (it could not be reached, timed out, was refused by
the guard, or answered nonsense) with a reason code. Messages say what failed from our side; the
key manager's own words (an error body, a status message) are never repeated, only a reason code
it gave in an `ErrorInfo`, if that looks like one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from innosystem.keymanager import signing
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.kit import egress
from innosystem.kit.errors import from_rpc_error

SERVICE_PATH = "/innosystem.keymanager.v1.ExternalKeyManagerService/"
HTTP_METHODS = {"Wrap": "wrap", "Unwrap": "unwrap", "GetKeyMetadata": "getKeyMetadata", "Health": "health"}
DENIED, ERROR = "DENIED", "ERROR"
SCHEMES = ("grpc", "grpcs", "http", "https")
R = TypeVar("R", bound=Message)
# A reason code the key manager gives is passed on only if it looks like one (it is shown to the
# customer and written to the access log; free text from the target is not).
REASON_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Key manager answers are a few hundred bytes; anything near this is not one.
MAX_ANSWER_BYTES = 64 * 1024


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


def parse_endpoint(url: str, policy: egress.Policy | None = None) -> Endpoint:
    """The endpoint, or ValueError saying what is wrong with its form, or egress.EgressError
    (EGRESS_BLOCKED) if the guard refuses it without resolving it (plain scheme not allow-listed,
    an internal address literal)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"must be grpcs://host:port or https://host[:port][/path] (got {url!r})")
    if parts.query or parts.fragment or parts.username:
        raise ValueError("must not carry a query, fragment or credentials")
    if parts.scheme in ("grpc", "grpcs") and not parts.port:
        raise ValueError("a gRPC endpoint needs a port")
    target = egress.check_url(url, policy or egress.Policy(), SCHEMES)
    return Endpoint(parts.scheme, target.host, target.port, parts.path.rstrip("/"))


class KeyManagerClient:
    """One customer key manager endpoint; channels and HTTP sessions are reused across calls."""

    def __init__(self, url: str, secrets: Sequence[bytes], timeout: float, policy: egress.Policy | None = None,
                 clock: Callable[[], float] = time.time, http: egress.Client | None = None) -> None:
        """`policy`: the egress guard's. The keys service always passes the operator's (its
        clients call URLs customers supplied: `services/keys/keymanagers.Clients`). Without one,
        the caller is an operator's own tool naming its own endpoint (the compose/k8s health
        probe, the conformance test), and exactly that host:port is allowed; nothing else is."""
        self.policy = policy or egress.Policy.trusting(url)
        self.url = url
        self.endpoint = parse_endpoint(url, self.policy)
        self.secrets = list(secrets)
        self.timeout = timeout
        self.clock = clock  # the signature's timestamp (tests move it to prove replay bounds)
        self._channel: grpc.aio.Channel | None = None
        # Opening a channel awaits the name's resolution: concurrent first calls must share one.
        self._opening = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._own_http = http is None
        self._http = http or egress.Client(self.policy)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._own_http:
            await self._http.close()

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Stop using `channel` (the next call resolves and checks the name again); calls still
        in flight on it get their own time to finish before it closes."""
        if self._channel is not channel:
            return  # another call retired it already, and may have opened the next one
        self._channel = None
        task = asyncio.ensure_future(cast(grpc.aio.Channel, channel).close(grace=self.timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

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

    async def _open_channel(self) -> grpc.aio.Channel:
        """The channel, dialling the guard-checked address of the endpoint (resolved again each
        time a channel is opened: after a failure, see `_grpc`)."""
        async with self._opening:
            if self._channel is None:
                target = egress.check_url(self.url, self.policy, SCHEMES)
                dial, options = await egress.grpc_target(target, self.policy)
                self._channel = (grpc.aio.secure_channel(dial, grpc.ssl_channel_credentials(), options=options)
                                 if self.endpoint.tls else grpc.aio.insecure_channel(dial, options=options))
            return self._channel

    async def _grpc(self, method: str, request: Message, response: type[R]) -> R:
        try:
            channel = await asyncio.wait_for(self._open_channel(), self.timeout)
        except egress.EgressError as exc:
            raise _egress_error(exc) from None
        except TimeoutError:
            raise KeyManagerError(ERROR, "KEY_MANAGER_TIMEOUT", f"key manager unreachable: cannot resolve the "
                                                               f"host within {self.timeout:g} s") from None
        path = SERVICE_PATH + method
        body = request.SerializeToString()
        call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=response.FromString)
        try:
            signed = signing.sign(self.secrets, path, body, self.clock())
            answer: R = await call(body, timeout=self.timeout, metadata=signed)
            return answer
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._retire(channel)
            err = from_rpc_error(exc)
            raise _classify(exc.code(), err.reason, _grpc_transport(exc)) from None

    async def _http_call(self, method: str, request: Message, response: type[R]) -> R:
        scheme = "https" if self.endpoint.tls else "http"
        path = f"{self.endpoint.base_path}/v1/{HTTP_METHODS[method]}"
        body = json_format.MessageToJson(request, indent=None).encode()
        headers = {"content-type": "application/json", **dict(signing.sign(self.secrets, path, body, self.clock()))}
        host = f"[{self.endpoint.host}]" if ":" in self.endpoint.host else self.endpoint.host
        url = f"{scheme}://{host}:{self.endpoint.port}{path}"
        try:
            answer = await self._http.request("POST", url, data=body, headers=headers, time_limit=self.timeout,
                                              max_response_bytes=MAX_ANSWER_BYTES)
        except egress.EgressError as exc:
            raise _egress_error(exc) from None
        if answer.status != 200:
            code, reason = _http_error(answer.status, answer.body)
            raise _classify(code, reason, f"HTTP {answer.status}")
        try:
            return json_format.Parse(answer.body, response(), ignore_unknown_fields=True)
        except (json_format.ParseError, DecodeError, ValueError):
            # The parser's message quotes the body: say only that it was not an answer.
            raise KeyManagerError(ERROR, "KEY_MANAGER_BAD_ANSWER", "the key manager's answer is not a "
                                                                    f"{response.DESCRIPTOR.name}") from None


def _egress_error(exc: egress.EgressError) -> KeyManagerError:
    if exc.reason == egress.TIMEOUT:
        return KeyManagerError(ERROR, "KEY_MANAGER_TIMEOUT", f"the key manager did not answer: {exc.message}")
    if exc.reason == egress.UNREACHABLE:
        return KeyManagerError(ERROR, "KEY_MANAGER_UNREACHABLE", f"key manager unreachable: {exc.message}")
    if exc.reason == egress.BLOCKED:
        return KeyManagerError(ERROR, egress.BLOCKED, f"key manager call refused by the egress guard: {exc.message}")
    return KeyManagerError(ERROR, exc.reason, f"key manager answer refused: {exc.message}")  # redirect, size


def _grpc_transport(exc: grpc.aio.AioRpcError) -> str:
    """What to say about a gRPC failure: the status code, and for an unreachable endpoint the
    transport's cause when it is one we recognise; never the status message the target sent."""
    details = (exc.details() or "").lower()
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        for needle, phrase in (("connection refused", "connection refused"), ("handshake", "TLS handshake failed"),
                               ("certificate", "TLS certificate not accepted"), ("timed out", "connect timed out"),
                               ("dns", "cannot resolve the host")):
            if needle in details:
                return phrase
        return "unavailable"
    return exc.code().name


_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               409: grpc.StatusCode.ABORTED, 412: grpc.StatusCode.FAILED_PRECONDITION,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
               504: grpc.StatusCode.DEADLINE_EXCEEDED}


def _http_error(status: int, body: bytes) -> tuple[grpc.StatusCode, str]:
    """The gRPC code for an HTTP status, and the ErrorInfo reason of a google.rpc.Status body."""
    code = _HTTP_CODES.get(status, grpc.StatusCode.UNKNOWN)
    reason = code.name
    try:
        parsed: Any = json.loads(body)
        st = json_format.ParseDict(parsed, status_pb2.Status(), ignore_unknown_fields=True)
        for detail in st.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason or reason
    except (ValueError, json_format.ParseError, TypeError):
        pass
    return code, reason


def _classify(code: grpc.StatusCode, reason: str, what: str) -> KeyManagerError:
    """`reason` is the key manager's ErrorInfo reason (kept only if it is a code); `what` is our
    own description of the failure (a status code, a transport cause), never the target's text."""
    reason = reason if REASON_CODE.fullmatch(reason or "") else code.name
    if code == grpc.StatusCode.PERMISSION_DENIED or code == grpc.StatusCode.FAILED_PRECONDITION:
        return KeyManagerError(DENIED, "KEY_MANAGER_REFUSED", f"the key manager refused ({reason})")
    if code == grpc.StatusCode.UNAVAILABLE:
        return KeyManagerError(ERROR, "KEY_MANAGER_UNREACHABLE", f"key manager unreachable: {what}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return KeyManagerError(ERROR, "KEY_MANAGER_TIMEOUT", "the key manager did not answer in time")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return KeyManagerError(ERROR, "KEY_MANAGER_AUTH_FAILED",
                               f"the key manager rejected the request signature ({reason})")
    if code == grpc.StatusCode.INVALID_ARGUMENT and reason == "UNWRAP_FAILED":
        return KeyManagerError(ERROR, "INTEGRITY_CHECK_FAILED", "the key manager could not unwrap (UNWRAP_FAILED)")
    if code == grpc.StatusCode.NOT_FOUND:
        return KeyManagerError(ERROR, "KEY_MANAGER_KEY_NOT_FOUND", f"the key manager does not know the key ({reason})")
    return KeyManagerError(ERROR, "KEY_MANAGER_ERROR", f"the key manager failed ({code.name} {reason}, {what})")
