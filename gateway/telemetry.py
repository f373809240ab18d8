"""The gateway's server span and request metrics.

One SERVER span per HTTP request, child of the caller's `traceparent` when it sends one; the
upstream call carries this span's context to the services (the gRPC client interceptor where
spans are recorded, else the proxy's own `traceparent` metadata), so a client's trace continues
through the gateway into every service it reaches.
Metrics are labelled by route template (never the raw path: ids would explode cardinality).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from innosystem.kit.telemetry import SECONDS_BUCKETS

# The matched route's template (`/v1/jobs/{job_id}`), set by the proxy once it has matched.
ROUTE = web.RequestKey("route", str)
UNMATCHED = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_tracer = trace.get_tracer("innosystem.gateway")
_meter = metrics.get_meter("innosystem.gateway")
_duration = _meter.create_histogram(
    "http.server.request.duration", unit="s", description="Gateway requests by route, method and status",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
_requests = _meter.create_counter(
    "innosystem.gateway.requests", unit="{request}", description="Gateway requests by route, method and status")


def _route_of(request: web.Request) -> str:
    if ROUTE in request:
        return request[ROUTE]
    info = request.match_info.route.resource
    # Fixed paths (/healthz, /openapi.json) are their own template; the catch-all is not a route.
    return info.canonical if info is not None and "{path" not in info.canonical else UNMATCHED


@web.middleware
async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    parent = propagate.extract(request.headers)
    status = 500
    with _tracer.start_as_current_span(request.method, context=parent, kind=SpanKind.SERVER) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route_of(request)
            span.update_name(f"{request.method} {route}")
            span.set_attributes({"http.request.method": request.method, "http.route": route,
                                 "http.response.status_code": status})
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            labels: dict[str, str | int] = {"http.route": route, "http.request.method": request.method,
                                            "http.response.status_code": status}
            _duration.record(time.perf_counter() - started, labels)
            _requests.add(1, labels)
