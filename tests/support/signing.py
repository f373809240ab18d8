"""Tests that call a service directly as some principal, signed the way the platform signs.

A principal header is valid on the one method it was signed for and for a minute
(innosystem/kit/principal.py), so a test cannot sign once and reuse the header on every call.
`as_(principal)` marks a call's metadata with whom to act as; a channel from `channel()` swaps
the mark for the header signed for the method being called, at call time. The mark itself never
leaves the test process (a call with the mark on a plain channel arrives with no principal and
fails as unauthenticated, so a forgotten channel shows).
"""

from __future__ import annotations

from typing import Any

import grpc

from innosystem.kit import principal
from innosystem.tenancy.v1.tenancy_pb2 import Principal

Metadata = tuple[tuple[str, str], ...]
_MARK = "x-test-sign-as"


def as_(p: Principal) -> Metadata:
    """Metadata that makes a call from `channel()` carry `p`, signed for that call's method."""
    return ((_MARK, principal.encode(p)),)


def _signed(details: Any, secret: bytes) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    marks = metadata.get_all(_MARK)
    if marks:
        metadata.delete_all(_MARK)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        for key, value in principal.sign(str(marks[-1]), secret, method):
            metadata.add(key, value)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


# grpc.aio files an interceptor under the first call kind it implements: one class per kind.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_signed(details, self._secret), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_signed(details, self._secret), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_signed(details, self._secret), requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_signed(details, self._secret), requests)


def channel(target: str, secret: bytes) -> grpc.aio.Channel:
    """A plain channel (no principal of its own) that signs each `as_(…)` call for its method."""
    interceptors: list[Any] = [_UnaryUnary(secret), _UnaryStream(secret), _StreamUnary(secret),
                               _StreamStream(secret)]
    return grpc.aio.insecure_channel(target, interceptors=interceptors)
