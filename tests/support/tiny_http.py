"""A tiny local HTTP server (aiohttp) for tests of outbound calls: handlers per path, and a count
of the requests it received, so a test can prove a call was *not* made."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Served:
    port: int
    hits: list[str] = field(default_factory=list)

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[Served]:
    """Listen on 127.0.0.1 (a free port); every path in `routes` answers any method."""
    served = Served(0)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        served.hits.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield served
    finally:
        await runner.cleanup()
