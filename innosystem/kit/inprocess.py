"""Services sharing a process answer each other's hottest exchange directly, not through gRPC.

`innosystem serve billing jobs runners` runs the three services in one process, each still on its
own port with its own database and clients. There a service may offer a handler under a name,
and another finds it and calls it with the protobuf message it would have sent, and gets the
reply it would have received: no serialization, no socket, no wake-up of grpc's poller thread
and of another process. Only the hottest exchanges that are already plain request → reply messages are offered
(the relay of leases and results, services/jobs/relay.py; billing's hold batches,
services/billing/holds.py); every other call goes through gRPC as before, and a service in a
process of its own finds nothing here and uses its stub.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[Any], Awaitable[Any]]

# The jobs service's relay: a RelayRequest → its RelayReply (services/jobs/relay.py `answer`).
JOBS_RELAY = "jobs.relay"
# Billing's hold batches: a Batch{Reserve,Capture,Release,Extend}Request → its BatchHoldResponse,
# or the google.rpc.Status the call would have ended with (services/billing/holds.py `answer`).
BILLING_HOLDS = "billing.holds"
# Billing's reserves written into the jobs service's own transaction, where both use one database
# (services/billing/joined.py `Joined`: not a request → reply handler, an object).
BILLING_JOINED = "billing.joined"

_offered: dict[str, Any] = {}


def offer(name: str, handler: Any) -> None:
    _offered[name] = handler


def withdraw(name: str, handler: Any) -> None:
    """Stops offering `handler` (a stopping service); another one offered since stays."""
    if _offered.get(name) is handler:
        del _offered[name]


def find(name: str) -> Any:
    return _offered.get(name)


_SHARE_SECONDS = 0.5
_STALE_SECONDS = 5.0
_measured: tuple[float, float, float] | None = None  # (when, CPU seconds then, the share before that)


def cpu_share() -> float:
    """This process's CPU use, in cores, over its last half second or so (measured when asked: a
    clock read per call, the process's CPU time twice a second at most). A caller may offer work
    to another process instead while this one is busy: a process runs on one core at a time.
    The first ask, or one after a long while without any, starts a window and is taken as idle
    (so start-up's CPU does not count)."""
    global _measured
    now = time.monotonic()
    if _measured is None or now - _measured[0] >= _STALE_SECONDS:
        _measured = (now, time.process_time(), 0.0)
        return 0.0
    at, cpu, share = _measured
    if now - at >= _SHARE_SECONDS:
        used = time.process_time()
        share = (used - cpu) / (now - at)
        _measured = (now, used, share)
    return share
