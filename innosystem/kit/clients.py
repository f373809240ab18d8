"""Channels from one service to another, and API-key authentication through tenancy.

Every internal call carries the calling service's principal signed for the method called (see
`principal`; which service may call which internal method is `callers`), unless the caller
already set one. Channels are long-lived, one per
target, with keepalive; tracing context travels through the OpenTelemetry client interceptors
(or, where no span is recorded, as the `traceparent` header the signer adds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import grpc
import redis.asyncio as aioredis
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from redis.exceptions import RedisError

from innosystem.kit import logs, principal, telemetry
from innosystem.kit.errors import DomainError, Unauthenticated, from_rpc_error
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    # A peer that restarts is back within seconds: reconnect within a second or two, not after
    # gRPC's default backoff (up to two minutes of calls failing fast against a peer long up).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class _Signer:
    """Adds this service's principal signed for the method called, and bounds the call by the
    deadline of the RPC being served, so a caller's deadline reaches every hop.

    A method's header is kept and signed anew once it is a quarter of its lifetime old: a call
    costs a dict lookup, and a header is at most 15 s old when attached, which leaves 45 s for a
    call waiting for a ready channel (`wait_for_ready`, timeouts up to 30 s here) to arrive valid."""

    def __init__(self, service: str, secret: bytes, trace: bool = False) -> None:
        self._body = principal.encode(principal.service_principal(service))
        self._secret = secret
        # Carry the trace context here where OpenTelemetry's client interceptors are left out.
        self._trace = trace
        # method path → (its signed entries, when to sign anew); one entry per method this service calls
        self._signed: dict[str, tuple[tuple[tuple[str, str], ...], float]] = {}

    def entries(self, method: str) -> tuple[tuple[str, str], ...]:
        now = time.monotonic()
        hit = self._signed.get(method)
        if hit is None or now >= hit[1]:
            hit = (principal.sign(self._body, self._secret, method), now + principal.LIFETIME_SECONDS / 4)
            self._signed[method] = hit
        return hit[0]

    def apply(self, method: str, timeout: float | None, metadata: Any) -> tuple[float | None, list[tuple[str, Any]]]:
        """A call's timeout and metadata, signed (unless it carries a principal) and traced."""
        entries = list(metadata or ())
        if not any(key == principal.PRINCIPAL_HEADER for key, _ in entries):
            entries.extend(self.entries(method))
        if self._trace:
            telemetry.inject_trace(entries)
        if (deadline := logs.deadline.get()) is not None:
            remaining = max(0.0, deadline - time.monotonic())
            timeout = remaining if timeout is None else min(timeout, remaining)
        return timeout, entries


class _Signed:
    """One method's multicallable whose calls go through `_Signer.apply` first."""

    def __init__(self, inner: Any, method: str, signer: _Signer) -> None:
        self._inner, self._method, self._signer = inner, method, signer

    def __call__(self, request: Any = None, *, timeout: float | None = None, metadata: Any = None,
                 **options: Any) -> Any:
        timeout, signed = self._signer.apply(self._method, timeout, metadata)
        return self._inner(request, timeout=timeout, metadata=signed, **options)


class _SignedChannel(grpc.aio.Channel):
    """Signs each call as it is made, in the multicallables this channel hands out, rather than in
    client interceptors: grpc.aio runs an intercepted call's interceptors in a task of their own,
    a good part of a small call's cost."""

    def __init__(self, inner: grpc.aio.Channel, signer: _Signer) -> None:
        self._inner, self._signer = inner, signer

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Signed(self._inner.unary_unary(method, *args, **kwargs), method, self._signer)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Signed(self._inner.unary_stream(method, *args, **kwargs), method, self._signer)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Signed(self._inner.stream_unary(method, *args, **kwargs), method, self._signer)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Signed(self._inner.stream_stream(method, *args, **kwargs), method, self._signer)

    async def __aenter__(self) -> _SignedChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self._inner.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()


def channel(target: str, *, service: str, secret: bytes) -> grpc.aio.Channel:
    """A channel whose calls are signed as `service` (unless the call carries a principal).

    For a service's own calls only. Never forward an outside caller's request over it: a call
    without a principal would run with this service's rights (the gateway forwards over plain
    channels for that reason).
    """
    # OpenTelemetry's interceptors (a CLIENT span per call) only where spans are recorded; without
    # them the signer adds the trace context, the one thing they would pass on.
    recorded = telemetry.spans_recorded()
    inner = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS,
                                      interceptors=aio_client_interceptors() if recorded else None)
    return _SignedChannel(inner, _Signer(service, secret, trace=not recorded))


# Tenancy publishes here, after the commit, whenever API keys stop being valid: a customer or
# reseller deactivated or deleted, a key rotated or deleted, a session ended, a user deactivated or its
# role changed. JSON with one of "customer_id", "reseller_id", "key_id" (a key's or session's id), "user_id",
# or "everyone": true (a platform-wide rule changed).
ACCESS_REVOKED_CHANNEL = "tenancy:access-revoked"
_FEED_RETRY_SECONDS = 1.0


class ApiKeyAuthenticator:
    """Resolves API keys through `TenancyService.Authenticate`, with a short bounded cache.

    The cache is keyed by a SHA-256 of the key (the key itself is never kept), holds answers
    for `ttl` seconds and rejections for a shorter time, so a flood of bad keys does not reach
    tenancy on every request. Concurrent lookups of one key share a single call.

    A revoked key stops working within `ttl` by itself, and at once where `follow_revocations`
    runs: tenancy's revocations then drop the account's cached answers, and while that feed is
    down no cached acceptance is used (every request with a good key asks tenancy) so nothing
    missed meanwhile can linger; rejections are cached all the same.
    """

    def __init__(self, tenancy: grpc.aio.Channel, ttl: float = 5.0, negative_ttl: float = 1.0,
                 max_entries: int = 10_000) -> None:
        self._stub = tenancy_pb2_grpc.TenancyServiceStub(tenancy)
        self._ttl, self._negative_ttl, self._max = ttl, negative_ttl, max_entries
        self._cache: OrderedDict[bytes, tuple[float, tenancy_pb2.Principal | DomainError]] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[tenancy_pb2.Principal]] = {}
        # Bumped by every revocation: a lookup that started before one does not cache its answer.
        self._generation = 0
        self._trust_cache = True

    def revoke(self, *, customer_id: str = "", reseller_id: str = "", key_id: str = "", user_id: str = "",
               everyone: bool = False) -> None:
        """Forget the cached answers of a customer's keys and sessions, of a reseller's and its
        customers', of one key or session (`key_id`), of one user's sessions, or of everyone's."""
        self._generation += 1
        for digest, (_, answer) in list(self._cache.items()):
            if isinstance(answer, tenancy_pb2.Principal) and (
                    everyone or (customer_id and answer.customer_id == customer_id)
                    or (reseller_id and answer.reseller_id == reseller_id)
                    or (key_id and answer.key_id == key_id)
                    or (user_id and answer.user_id == user_id)):
                del self._cache[digest]

    def distrust_cache(self) -> None:
        """Revocations may be missed from now on (the feed is down): forget the accepted keys and
        accept none from the cache. Rejections stay cached: a revocation never makes a key valid."""
        self._generation += 1
        self._trust_cache = False
        for digest, (_, answer) in list(self._cache.items()):
            if isinstance(answer, tenancy_pb2.Principal):
                del self._cache[digest]

    def trust_cache(self) -> None:
        self._trust_cache = True

    def known(self, api_key: str, *, session: bool = False) -> tenancy_pb2.Principal | None:
        """The cached principal of a key (or session) that authenticated within the TTL; None
        otherwise. Asks no one: the gateway uses it to let known-good keys past its per-address limit."""
        hit = self._cache.get(_digest(api_key, session))
        if not self._trust_cache or hit is None or hit[0] <= time.monotonic() or isinstance(hit[1], DomainError):
            return None
        return hit[1]

    async def session(self, token: str) -> tenancy_pb2.Principal:
        """A session cookie's principal: cached and revoked exactly like a key's."""
        return await self(token, session=True)

    async def __call__(self, api_key: str, *, session: bool = False) -> tenancy_pb2.Principal:
        digest = _digest(api_key, session)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic() and (self._trust_cache or isinstance(hit[1], DomainError)):
            if isinstance(hit[1], DomainError):
                raise hit[1]
            return hit[1]
        pending = self._in_flight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tenancy_pb2.Principal] = asyncio.get_running_loop().create_future()
        self._in_flight[digest] = future
        try:
            principal = await self._lookup(api_key, digest, session)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unshared failure is not reported as unhandled
            raise
        else:
            future.set_result(principal)
            return principal
        finally:
            del self._in_flight[digest]

    async def _lookup(self, api_key: str, digest: bytes, session: bool) -> tenancy_pb2.Principal:
        now, generation = time.monotonic(), self._generation
        answer: tenancy_pb2.Principal | DomainError
        request = (tenancy_pb2.AuthenticateRequest(session_token=api_key) if session
                   else tenancy_pb2.AuthenticateRequest(api_key=api_key))
        try:
            answer = await self._stub.Authenticate(request, timeout=5)
            expires = now + self._ttl
        except grpc.aio.AioRpcError as exc:
            answer = from_rpc_error(exc)
            if not isinstance(answer, Unauthenticated):
                raise answer from None  # tenancy down: do not cache, let the caller see UNAVAILABLE
            expires = now + self._negative_ttl
        if isinstance(answer, DomainError) or (generation == self._generation and self._trust_cache):
            self._cache[digest] = (expires, answer)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        if isinstance(answer, DomainError):
            raise answer
        return answer


def _digest(credential: str, session: bool) -> bytes:
    """Cache key: a session token and an API key never share one."""
    return hashlib.sha256((b"session:" if session else b"") + credential.encode()).digest()


async def follow_revocations(authenticator: ApiKeyAuthenticator, redis: aioredis.Redis) -> None:
    """Background loop: tenancy's revocations (ACCESS_REVOKED_CHANNEL) reach `authenticator`'s
    cache at once. Until subscribed, and whenever the subscription is lost, the cache is not
    trusted (a revocation published meanwhile would be missed)."""
    authenticator.distrust_cache()
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(ACCESS_REVOKED_CHANNEL)
            authenticator.trust_cache()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is not None:
                    _revoke(authenticator, message.get("data"))
        except (RedisError, OSError) as exc:
            authenticator.distrust_cache()
            log.warning("API-key revocations not followed (every request asks tenancy): %s",
                        exc or type(exc).__name__)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
        await asyncio.sleep(_FEED_RETRY_SECONDS)


def _revoke(authenticator: ApiKeyAuthenticator, data: Any) -> None:
    try:
        event = json.loads(data)
        authenticator.revoke(customer_id=str(event.get("customer_id", "")),
                             reseller_id=str(event.get("reseller_id", "")), key_id=str(event.get("key_id", "")),
                             user_id=str(event.get("user_id", "")), everyone=event.get("everyone") is True)
    except (ValueError, TypeError, AttributeError):
        log.warning("malformed revocation ignored; forgetting every cached key")
        authenticator.distrust_cache()
        authenticator.trust_cache()
