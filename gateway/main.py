"""`innosystem serve gateway`: run the gateway until SIGTERM or SIGINT, then drain.

Draining: stop accepting connections, end the SSE streams (clients reconnect elsewhere), give
in-flight requests `grace_seconds` to finish, then close the upstream channels.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.app import create_app
from gateway.config import GatewayConfig
from innosystem.kit import collector

log = logging.getLogger(__name__)


async def serve(config: GatewayConfig | None = None) -> None:
    config = config or GatewayConfig.from_env()
    runner = web.AppRunner(create_app(config), handler_cancellation=True, handle_signals=False,
                           shutdown_timeout=config.grace_seconds)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("gateway listening on http://%s:%d", config.host, config.port)
        collector.settle()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("gateway stopping: draining for up to %.0f s", config.grace_seconds)
    finally:
        await runner.cleanup()
    log.info("gateway stopped")
