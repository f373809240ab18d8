"""The aiohttp application: the transcoding proxy on every path, plus health, OpenAPI and the console.

Run it with `handler_cancellation=True` (as `gateway.main` does) so that a client leaving
cancels its in-flight gRPC call, streaming or not.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import grpc
from aiohttp import web
from google.rpc import status_pb2

from gateway import console, locales
from gateway.auth import CHALLENGE
from gateway.config import GatewayConfig
from gateway.descriptors import build_pool, parse_descriptor_set
from gateway.errors import GatewayError, UpstreamError, status_json
from gateway.openapi import render_openapi
from gateway.proxy import Gateway
from gateway.routes import RouteTable, load_routes
from gateway.telemetry import traced
from innosystem.kit import logs

log = logging.getLogger(__name__)

GATEWAY = web.AppKey("gateway", Gateway)
OPENAPI = web.AppKey("openapi", bytes)
REQUEST_ID = web.RequestKey("request_id", str)
HEALTH_TIMEOUT_SECONDS = 2.0

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: GatewayConfig) -> web.Application:
    data = config.descriptor_set()
    files = parse_descriptor_set(data)
    pool = build_pool(files)
    gateway = Gateway(config, RouteTable(load_routes(files, pool)), pool)

    app = web.Application(middlewares=[traced, _errors_and_request_id])
    app[GATEWAY] = gateway
    app[OPENAPI] = render_openapi(data).encode()
    app.cleanup_ctx.append(_channels)
    app.on_shutdown.append(_stop_streams)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/openapi.json", _openapi)
    console.add_routes(app)
    app.router.add_route("*", r"/{path:[\s\S]*}", _proxy)  # any path, even one with an encoded newline
    log.info("gateway serves %d routes", len(gateway.table.routes))
    return app


async def _channels(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.start()
    yield
    await gateway.close()


async def _stop_streams(app: web.Application) -> None:
    app[GATEWAY].stopping.set()


def request_id_of(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def _errors_and_request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    token = logs.request_id.set(request_id)
    try:
        try:
            response = await handler(request)
        except (GatewayError, UpstreamError) as err:
            response = _error(request, err.http_status, err.status, err.headers)
            if err.http_status == 401:
                response.headers.update(CHALLENGE)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.rel_url.raw_path)
            internal = GatewayError(grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error (request id {request_id})")
            response = _error(request, 500, internal.status, {})
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        logs.request_id.reset(token)


def _error(request: web.Request, http_status: int, status: status_pb2.Status,
           headers: Mapping[str, str]) -> web.Response:
    """The Status as JSON, with a LocalizedMessage in the language the caller accepts."""
    locale = locales.negotiate(request.headers.get("Accept-Language"))
    response = web.Response(status=http_status, body=status_json(locales.localize(status, locale)),
                            content_type="application/json", headers=headers)
    response.headers["Content-Language"] = locale
    return response


async def _proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request, request[REQUEST_ID])


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


async def _readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    upstreams = await gateway.upstreams.health(HEALTH_TIMEOUT_SECONDS)
    ready = not gateway.stopping.is_set() and all(s == "SERVING" for s in upstreams.values())
    return web.json_response({"status": "SERVING" if ready else "NOT_SERVING", "upstreams": upstreams},
                             status=200 if ready else 503)


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
