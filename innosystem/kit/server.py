"""One bootstrap for every service: `run(config, [service])`.

A grpc.aio server with the standard health service and reflection, keepalive and a maximum
connection age (so long-lived client channels spread over new replicas), and four steps
around every RPC in a fixed order, outermost first:

    tracing → request context + logging → authentication → domain errors (+ required fields)

The last three (and tracing, when no span is recorded in this process: then the request
context step opens the RPC's unrecorded span itself, instead of OpenTelemetry's interceptor)
run in one interceptor whose wrapped handler is built once per method: grpc.aio asks each
interceptor on every call, and a layer per step was a good part of a small RPC's CPU.

Authentication verifies the signed principal for the very method called (`principal`), or
resolves a bearer API key where the service takes one, then holds internal methods to their
callers (`callers`) and public ones to the caller's role (`roles`), before any request field
is looked at.

On SIGTERM or SIGINT the health service turns NOT_SERVING, the server stops accepting calls,
in-flight calls get `grace_seconds` to finish, background loops are cancelled and the
service's shutdown hooks run (close pools), in that order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.trace import SpanKind

from innosystem.kit import audit, callers, collector, logs, principal, roles, sessions, switching, telemetry
from innosystem.kit.audit import AuditReporter
from innosystem.kit.config import CommonConfig
from innosystem.kit.errors import (
    DOMAIN_SUFFIX,
    DomainError,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
    from_rpc_error,
    internal_status,
    to_status,
)
from innosystem.kit.validation import check_required
from innosystem.tenancy.v1.tenancy_pb2 import Principal

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("innosystem.rpc")
_rpc_duration = metrics.get_meter("innosystem.rpc").create_histogram(
    "rpc.server.duration", unit="s", description="time to answer an RPC, by method and status code",
    explicit_bucket_boundaries_advisory=telemetry.SECONDS_BUCKETS)

Authenticate = Callable[[str], Awaitable[Principal]]
Around = Callable[[str, Message | None, grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_connection_age_ms", 5 * 60_000),
    ("grpc.max_connection_age_grace_ms", 60_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
SLOW_RPC_SECONDS = 1.0


@dataclass
class Service:
    """What a service contributes to the bootstrap."""

    name: str
    # Full proto service names served (for health and reflection).
    service_names: Sequence[str]
    # Adds the servicers to the server: `lambda s: add_XServiceServicer_to_server(impl, s)`.
    register: Callable[[grpc.aio.Server], None]
    # Resolves a bearer API key from direct gRPC callers; None: only signed principals.
    authenticate: Authenticate | None = None
    # Long-running loops (sweepers, consumers); restarted with backoff if they crash.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Reports this service's audited methods (`kit.audit.AUDITED`) to tenancy once they succeed.
    audit: AuditReporter | None = None


async def abort(context: grpc.aio.ServicerContext, err: DomainError, domain: str) -> None:
    """End the RPC with `err` as a google.rpc.Status (ErrorInfo, BadRequest) in the trailers."""
    status = to_status(err, domain)
    await context.abort(err.code, status.message,
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


class _Steps(grpc.aio.ServerInterceptor):
    """Runs every RPC of any cardinality inside `arounds` (outermost first), each called as
    `around(method, request, context)`.

    A method's wrapped handler is made on its first call and answered from then on without asking
    the interceptors after this one or the server's handler table again: servicers are registered
    before the server starts and never change, and every interceptor after this one
    (`_Audited`) wraps a method's handler the same way on every call."""

    def __init__(self, arounds: Sequence[Around]) -> None:
        self._arounds = tuple(arounds)
        self._wrapped: dict[str, Any] = {}  # method → its handler, wrapped; only methods that exist

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:  # no such method: UNIMPLEMENTED, and nothing kept for it
                return None
            wrapped = self._wrapped[method] = _wrap(handler, method, self._arounds)
        return wrapped


class _Audited(grpc.aio.ServerInterceptor):
    """Innermost: after an audited unary method answered without error, report it (`kit.audit`).
    Asked once per method (`_Steps` keeps what it answers)."""

    def __init__(self, reporter: AuditReporter) -> None:
        self._reporter = reporter

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not handler.unary_unary or details.method not in audit.AUDITED:
            return handler
        inner, method, reporter = handler.unary_unary, details.method, self._reporter

        async def unary_unary(request: Any, context: Any) -> Any:
            answer = await inner(request, context)
            await reporter.report(method, request, answer)
            return answer

        return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _wrap(handler: Any, method: str, arounds: Sequence[Around]) -> Any:
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:  # the hot path: plain nested calls, no exit stack
        unary = handler.unary_unary
        for around in reversed(arounds):
            unary = _inside(around, method, unary)
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            async with AsyncExitStack() as steps:
                for around in arounds:
                    await steps.enter_async_context(around(method, None, context))
                return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)

    streaming = handler.unary_stream or handler.stream_stream

    async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
        async with AsyncExitStack() as steps:  # one generator re-yields each item, not one per step
            for around in arounds:
                await steps.enter_async_context(around(method, request if handler.unary_stream else None, context))
            result = streaming(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a servicer that writes with context.write() and returns None
                await result

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streamed, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streamed, **kwargs)


def _inside(around: Around, method: str, inner: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Any]:
    async def unary_unary(request: Any, context: Any) -> Any:
        async with around(method, request, context):
            return await inner(request, context)

    return unary_unary


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, Any]]:
    return list(context.invocation_metadata() or ())


def _request_context(tracer: trace.Tracer | None) -> Around:
    """Request id, deadline, client address and method into the log context; the RPC's duration
    metric and its log line. With `tracer` (no OpenTelemetry interceptor in front), also the RPC's
    SERVER span, a child of the caller's trace context: unrecorded, but its ids reach the logs,
    the jobs submitted and every downstream call."""
    trace_headers = frozenset(propagate.get_global_textmap().fields) if tracer is not None else frozenset()

    @asynccontextmanager
    async def around(method: str, request: Message | None,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        rid = address = ""
        carrier: dict[str, str] = {}
        for key, value in _metadata(context):  # one pass: this runs on every RPC, hot paths included
            if key == "x-request-id":
                rid = str(value)
            elif key == sessions.CLIENT_ADDRESS_METADATA:
                address = str(value)[:64]
            elif key in trace_headers:
                carrier[key] = str(value)
        rid = rid or uuid.uuid4().hex
        remaining = context.time_remaining()
        tokens = (logs.rpc_method.set(method), logs.request_id.set(rid),
                  logs.deadline.set(time.monotonic() + remaining if remaining is not None else None),
                  logs.client_address.set(address))
        span = attached = None
        if tracer is not None:
            parent = propagate.extract(carrier) if carrier else otel_context.Context()
            span = tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
            attached = otel_context.attach(trace.set_span_in_context(span, parent))
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            code = context.code()
            code_name = code.name if isinstance(code, grpc.StatusCode) else str(code) if code else "OK"
            _rpc_duration.record(elapsed, {"rpc.method": method, "rpc.grpc.status_code": code_name})
            # a long poll (a request with `wait_ms`, e.g. LeaseJobs) is slow only past the wait it asked for
            slow = SLOW_RPC_SECONDS + getattr(request, "wait_ms", 0) / 1000
            level = logging.INFO if code_name != "OK" or elapsed > slow else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "rpc finished", extra={"code": code_name, "duration_ms": round(elapsed * 1000, 2)})
            if span is not None and attached is not None:
                span.end()
                otel_context.detach(attached)
            logs.rpc_method.reset(tokens[0])
            logs.request_id.reset(tokens[1])
            logs.deadline.reset(tokens[2])
            logs.client_address.reset(tokens[3])

    return around


def _authentication(secret: bytes, authenticate: Authenticate | None, domain: str) -> Around:
    @asynccontextmanager
    async def around(method: str, request: Message | None,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        metadata = _metadata(context)
        try:
            caller = principal.verify(metadata, secret, method)
            bearer = next((str(v) for k, v in metadata if k == "authorization"), "") if caller is None else ""
            if bearer and method in callers.INTERNAL_CALLERS:
                # Only services call internal methods, and no API key is a service's: refuse
                # without asking tenancy about the key.
                raise PermissionDenied(f"an API key may not call {method}", reason="CALLER_NOT_ALLOWED")
            if bearer and authenticate is not None:
                scheme, _, key = bearer.partition(" ")
                if scheme.lower() != "bearer" or not key.strip():
                    raise Unauthenticated("authorization must be 'Bearer <key>'", reason="MALFORMED_AUTHORIZATION")
                caller = await authenticate(key.strip())
            callers.check(method, caller)
            roles.check(method, caller)
        except DomainError as err:
            await abort(context, err, domain)
            raise  # unreachable: abort raises
        token = principal.bind(caller)
        tenant = logs.tenant.set(_tenant_of(caller))
        try:
            yield
        finally:
            principal.reset(token)
            logs.tenant.reset(tenant)

    return around


def _tenant_of(caller: Principal | None) -> str:
    if caller is None:
        return ""
    return caller.customer_id or caller.reseller_id or caller.runner_id or caller.service or "admin"


def _domain_errors(domain: str) -> Around:
    @asynccontextmanager
    async def around(method: str, request: Message | None,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            if request is not None:
                check_required(request)
            yield
        except DomainError as err:
            await abort(context, err, domain)
        except grpc.aio.AioRpcError as exc:  # a downstream service's error passes through with its reason
            downstream = from_rpc_error(exc)
            if downstream.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("downstream call failed: %s", exc.details())
            await abort(context, downstream, domain)
        except NotImplementedError:  # an RPC the servicer does not override (generated base class)
            await abort(context, Unimplemented(f"{method} is not implemented yet", reason="NOT_IMPLEMENTED_YET"),
                        domain)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            status = internal_status(logs.current_trace_id())
            await context.abort(grpc.StatusCode.INTERNAL, status.message)

    return around


def error_status(exc: Exception, method: str, domain: str) -> status_pb2.Status:
    """The status a unary call ending with `exc` gets from `_domain_errors`, for an answer that
    travels inside a stream's message instead (the jobs service's Relay)."""
    if isinstance(exc, DomainError):
        return to_status(exc, domain)
    if isinstance(exc, grpc.aio.AioRpcError):
        downstream = from_rpc_error(exc)
        if downstream.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.error("downstream call failed: %s", exc.details())
        return to_status(downstream, domain)
    log.error("unhandled error in %s", method, exc_info=exc)
    return internal_status(logs.current_trace_id())


def build_server(config: CommonConfig, service: Service) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    domain = f"{service.name}{DOMAIN_SUFFIX}"
    # OpenTelemetry's interceptor only where spans are recorded; elsewhere the request context
    # step opens the (unrecorded) span, for a fraction of the interceptor's cost per call.
    recorded = telemetry.spans_recorded()
    steps = _Steps([_request_context(None if recorded else _tracer),
                    _authentication(config.internal_secret, service.authenticate, domain),
                    _domain_errors(domain)])
    server = grpc.aio.server(
        interceptors=[
            *([aio_server_interceptor()] if recorded else []),
            steps,
            *([_Audited(service.audit)] if service.audit is not None else []),
        ],
        options=SERVER_OPTIONS,
    )
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return server, health_servicer


async def _supervise(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Keep a background loop alive: log a crash and restart it with capped backoff."""
    delay = 0.5
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s crashed; restarting in %.1fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _background(service: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    """A service's background loop, supervised, in a task named after it (as debuggers and
    `probe_dispatch.py --loop-profile` show it)."""
    name = f"{service}.{getattr(loop, '__name__', 'loop')}"
    return asyncio.create_task(_supervise(name, loop), name=name)


async def run(config: CommonConfig, services: Sequence[Service], listen: dict[str, str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain. `listen` overrides the address per service name."""
    servers: list[tuple[Service, grpc.aio.Server, health.aio.HealthServicer]] = []
    for service in services:
        server, health_servicer = build_server(config, service)
        address = (listen or {}).get(service.name, config.listen)
        if (port := server.add_insecure_port(address)) == 0:
            raise OSError(f"{service.name}: cannot listen on {address}")
        address = f"{address.rsplit(':', 1)[0]}:{port}"  # the port bound, where any free one was asked for
        await server.start()
        for name in service.service_names:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servers.append((service, server, health_servicer))
        log.info("%s listening on %s", service.name, address)

    tasks = {s.name: [_background(s.name, b) for b in s.background] for s in services}
    collector.settle()
    switching.settle()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("draining (grace %.0fs)", config.grace_seconds)
        for _, _, health_servicer in servers:
            await health_servicer.enter_graceful_shutdown()
        # One service after another, each before those it calls (`serve jobs runners`: the runners
        # service's own streams into the jobs service end before the jobs service drains them).
        for service, server, _ in reversed(servers):
            await server.stop(config.grace_seconds)
            for task in tasks[service.name]:
                task.cancel()
            await asyncio.gather(*tasks[service.name], return_exceptions=True)
            for hook in service.on_shutdown:
                await hook()
        telemetry.shutdown()
        log.info("stopped")
