"""The one handler behind every route: match, authenticate, transcode, forward, render.

Everything per route (the template, the fields it fills, the generic stub) is prepared at
start; a request costs a trie walk, the JSON parse, and the gRPC call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import redis.asyncio as aioredis
from aiohttp import web
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from gateway.auth import Auth
from gateway.config import GatewayConfig
from gateway.cookies import check_csrf, is_secure, set_cookie
from gateway.descriptors import message_class
from gateway.errors import GatewayError, from_domain_error, from_rpc_error
from gateway.ratelimit import Limit, RateLimiter, client_address
from gateway.routes import MethodNotAllowed, Route, RouteNotFound, RouteTable
from gateway.sse import stream_events
from gateway.submits import BATCH, SUBMIT, Submit, Submits
from gateway.telemetry import ROUTE
from gateway.transcode import build_request, render, render_csv
from gateway.upstreams import Upstreams
from innosystem.kit import roles, sessions, telemetry
from innosystem.kit.audit import AUDITED
from innosystem.kit.clients import ApiKeyAuthenticator, follow_revocations
from innosystem.kit.clients import channel as signed_channel
from innosystem.kit.errors import DomainError
from innosystem.kit.redis import connect as redis_connect
from innosystem.tenancy.v1.tenancy_pb2 import Principal

REQUEST_ID_METADATA = "x-request-id"
# Tenancy answers these with the session token (or "" to sign out) in response metadata.
_SETS_SESSION = frozenset({"/innosystem.tenancy.v1.TenancyService/CreateSession",
                           "/innosystem.tenancy.v1.TenancyService/DeleteCurrentSession"})
_CHUNK = 64 * 1024


def _wants_csv(accept: str) -> bool:
    """`Accept: text/csv` (first among the types named): a list response as CSV."""
    first = accept.split(",")[0].split(";")[0].strip().lower()
    return first == "text/csv"


def _too_large(limit: int) -> GatewayError:
    return GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "BODY_TOO_LARGE",
                        f"the request body exceeds the limit of {limit} bytes", http_status=413,
                        metadata={"limit_bytes": str(limit)})


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _limiter(config: GatewayConfig, client: aioredis.Redis | None) -> RateLimiter | None:
    accounts = addresses = None
    if config.rate_limit_per_second > 0:
        accounts = Limit(config.rate_limit_per_second,
                         config.rate_limit_burst or max(1, round(2 * config.rate_limit_per_second)))
    if config.unauthenticated_rate_limit_per_second > 0:
        addresses = Limit(config.unauthenticated_rate_limit_per_second,
                          config.unauthenticated_rate_limit_burst
                          or max(1, round(2 * config.unauthenticated_rate_limit_per_second)))
    if client is None or (accounts is None and addresses is None):
        return None
    return RateLimiter(client, accounts, addresses)


class Gateway:
    def __init__(self, config: GatewayConfig, table: RouteTable, pool: descriptor_pool.DescriptorPool) -> None:
        self.config = config
        self.table = table
        self.pool = pool
        self.stopping = asyncio.Event()
        self._upstreams: Upstreams | None = None
        self._auth_channel: grpc.aio.Channel | None = None
        self._auth: Auth | None = None
        self._limiter: RateLimiter | None = None
        self._redis: aioredis.Redis | None = None
        self._revocations: asyncio.Task[None] | None = None
        self._stubs: dict[str, Any] = {}
        self._submits: Submits | None = None  # concurrent single submits as batches (gateway/submits.py)
        # Literal beginnings of the public routes' paths: most requests are told apart by these alone.
        self._public_prefixes = tuple(sorted({
            r.template.text.split("{", 1)[0].split(":", 1)[0] for r in table.routes
            if r.rpc.grpc_path in roles.PUBLIC_METHODS}))

    @property
    def upstreams(self) -> Upstreams:
        if self._upstreams is None:
            raise RuntimeError("gateway not started")
        return self._upstreams

    async def start(self) -> None:
        """Open the channels (inside the event loop that will use them) and build the stubs."""
        config = self.config
        self._upstreams = Upstreams(config.addresses, [*(r.rpc.upstream for r in self.table.routes), "tenancy"])
        # Authenticate is the gateway's own call, signed as the "gateway" service.
        self._auth_channel = signed_channel(config.addresses.of("tenancy"), service="gateway",
                                            secret=config.internal_secret)
        authenticator = ApiKeyAuthenticator(self._auth_channel, ttl=config.auth_cache_ttl_seconds,
                                            negative_ttl=config.auth_cache_negative_ttl_seconds,
                                            max_entries=config.auth_cache_max_entries)
        if config.redis_url:
            timeout = config.redis_timeout_seconds
            self._redis = redis_connect(config.redis_url, connect_timeout=timeout, timeout=timeout,
                                        pool_timeout=timeout)
            # A deactivated customer's (or rotated) key stops working at once, not after the cache's TTL.
            self._revocations = asyncio.create_task(follow_revocations(authenticator, self._redis),
                                                    name="gateway-revocations")
        self._limiter = _limiter(config, self._redis)
        self._auth = Auth(authenticator, config.internal_secret, self._limiter)
        for route in self.table.routes:
            rpc = route.rpc
            if rpc.grpc_path in self._stubs:
                continue
            channel = self._upstreams.channel(rpc.upstream)
            make = channel.unary_stream if rpc.server_streaming else channel.unary_unary
            self._stubs[rpc.grpc_path] = make(rpc.grpc_path, request_serializer=_serialize,
                                              response_deserializer=route.response_class.FromString)
        self._submits = self._coalesced_submits()

    def _coalesced_submits(self) -> Submits | None:
        """The batcher of single submits, where SubmitJob has a route and the jobs service has
        BatchSubmitJobs (unless INNOSYSTEM_GATEWAY_COALESCE_SUBMITS=0)."""
        if not self.config.coalesce_submits or SUBMIT not in self._stubs:
            return None
        try:
            method = self.pool.FindMethodByName(BATCH.strip("/").replace("/", "."))
        except KeyError:
            return None
        channel = self.upstreams.channel("jobs")
        response = message_class(method.output_type)
        batch = channel.unary_unary(BATCH, request_serializer=_serialize, response_deserializer=response.FromString)
        return Submits(self._stubs[SUBMIT], batch, message_class(method.input_type), self.config.deadline_seconds)

    async def close(self) -> None:
        if self._upstreams is not None:
            await self._upstreams.close()
        if self._auth_channel is not None:
            await self._auth_channel.close()
        if self._revocations is not None:
            self._revocations.cancel()
            await asyncio.gather(self._revocations, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    async def _caller(self, request: web.Request, address: str) -> Principal | None:
        """The authenticated caller; None only on a public route (sign-in, invitations, resets),
        which runs without credentials whatever the request carries."""
        assert self._auth is not None, "gateway not started"
        path = request.rel_url.raw_path
        if request.method == "POST" and path.startswith(self._public_prefixes):
            try:
                if self.table.match("POST", path).route.rpc.grpc_path in roles.PUBLIC_METHODS:
                    return None
            except (MethodNotAllowed, RouteNotFound):
                pass
        header = request.headers.get("Authorization")
        cookie = request.cookies.get(sessions.COOKIE) if header is None else None
        if cookie:
            caller = await self._auth.resolve_session(cookie, address, is_secure(request))
            check_csrf(request, self.config.internal_secret, caller.key_id)
            return caller
        return await self._auth.resolve(header, address)

    async def handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        assert self._auth is not None, "gateway not started"
        # Authentication comes first: a request without valid credentials learns nothing from
        # route matching or input validation, and reaches no upstream.
        address = client_address(request, self.config.trusted_proxy_hops)
        caller = await self._caller(request, address)
        route, path_values = self._match(request)
        request[ROUTE] = route.template.text
        headers = {"X-Request-Id": request_id}
        metadata = [(REQUEST_ID_METADATA, request_id)]
        if caller is None:  # a public route: its failures count against the address
            if self._limiter is not None:
                await self._limiter.check_address(address)
        else:
            try:  # the services check it too; here it comes before the input is looked at
                roles.check(route.rpc.grpc_path, caller)
            except DomainError as err:
                raise from_domain_error(err, route.rpc.upstream) from None
            if self._limiter is not None:
                remaining = await self._limiter.admit(caller)
                if remaining is not None:
                    headers["RateLimit-Remaining"] = str(remaining)
            metadata.extend(self._auth.sign(caller, route.rpc.grpc_path))
        if route.rpc.upstream == "tenancy" or route.rpc.grpc_path in AUDITED:  # sessions, lockout, the audit log
            metadata.append((sessions.CLIENT_ADDRESS_METADATA, address))
        coalesced = self._submits is not None and caller is not None and route.rpc.grpc_path == SUBMIT
        trace = telemetry.trace_carrier() if coalesced or not self.upstreams.traced else {}
        if not self.upstreams.traced:
            metadata.extend(trace.items())  # the channels have no tracing interceptor to do it
        body = await self._read_body(request)
        message = build_request(route, path_values, request.rel_url.query.items(), body, self.pool)
        stub = self._stubs[route.rpc.grpc_path]
        if route.rpc.server_streaming:
            call = stub(message, timeout=self.config.stream_deadline_seconds, metadata=metadata)
            return await stream_events(request, call, upstream=route.rpc.upstream,
                                       render=lambda m: render(m, route),
                                       keepalive=self.config.sse_keepalive_seconds, stopping=self.stopping,
                                       headers=headers)
        call = None
        try:
            if coalesced:
                assert self._submits is not None and caller is not None
                auth, traced = self._auth, self.upstreams.traced
                answer = await self._submits.submit(caller.SerializeToString(deterministic=True), Submit(
                    message, metadata, trace,
                    # signed only if it goes in a batch (and then for the batch's first submit only)
                    lambda: [(REQUEST_ID_METADATA, request_id), *auth.sign(caller, BATCH),
                             *(() if traced else trace.items())]))
            else:
                call = stub(message, timeout=self.config.deadline_seconds, metadata=metadata)
                answer = await call
        except grpc.aio.AioRpcError as exc:
            failure = from_rpc_error(exc, route.rpc.upstream)
            if caller is None and failure.http_status in (401, 404) and self._limiter is not None:
                await self._limiter.charge_address(address)  # a wrong password or token
            raise failure from None
        if call is not None and route.rpc.grpc_path in _SETS_SESSION:
            token = next((str(v) for k, v in (await call.initial_metadata() or ()) if k == sessions.SESSION_METADATA),
                         None)
            if token is not None:
                headers["Set-Cookie"] = set_cookie(token, is_secure(request))
                headers["Cache-Control"] = "no-store"
        if route.response_field is None and _wants_csv(request.headers.get("Accept", "")):
            table = render_csv(answer)
            if table is not None:
                return web.Response(body=table, content_type="text/csv", charset="utf-8", headers=headers)
        return web.Response(body=render(answer, route), content_type="application/json",
                            headers=headers)

    def _match(self, request: web.Request) -> tuple[Route, list[str]]:
        path = request.rel_url.raw_path
        try:
            found = self.table.match(request.method, path)
        except MethodNotAllowed as exc:
            allowed = ", ".join(exc.allowed)
            raise GatewayError(grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_ALLOWED",
                               f"{request.method} is not allowed on {path}; allowed: {allowed}",
                               http_status=405, headers={"Allow": allowed}) from None
        except RouteNotFound:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND",
                               f"no API method at {request.method} {path}") from None
        return found.route, found.path_values

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed the limit.

        Content-Type is not checked: JSON is the only body this API takes, and `curl -d` labels
        JSON as a form. The limit applies after aiohttp has undone any Content-Encoding.
        """
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)
