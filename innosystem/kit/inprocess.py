"""Services sharing a process answer each other's hottest exchange directly, not through gRPC.

`innosystem serve jobs runners` runs both services in one process, each still on its own port
with its own database and clients. There a service may offer a handler under a name, and another
finds it and calls it with the protobuf message it would have sent, and gets the reply it would
have received: no serialization, no socket, no wake-up of grpc's poller thread and of another
process. Only exchanges that are already plain request → reply messages are offered (the relay of
leases and results, services/jobs/relay.py); every other call goes through gRPC as before, and a
service in a process of its own finds nothing here and uses its stub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[Any], Awaitable[Any]]

# The jobs service's relay: a RelayRequest → its RelayReply (services/jobs/relay.py `answer`).
JOBS_RELAY = "jobs.relay"

_offered: dict[str, Handler] = {}


def offer(name: str, handler: Handler) -> None:
    _offered[name] = handler


def withdraw(name: str, handler: Handler) -> None:
    """Stops offering `handler` (a stopping service); another one offered since stays."""
    if _offered.get(name) is handler:
        del _offered[name]


def find(name: str) -> Handler | None:
    return _offered.get(name)
