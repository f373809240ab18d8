"""The hold batches of a jobs service in the same process, answered without gRPC (kit.inprocess).

Every submit reserves its holds and every ending settles them: two billing calls per job, each
a unary gRPC exchange that wakes three threads on either side (docs/performance.md). Where the
two services share a process (`innosystem serve billing jobs runners`), billing offers `answer`
and the jobs service's billing client calls it with the request it would have sent. The reply is
the same, an error the same google.rpc.Status (the client raises it as the same `AioRpcError`).
The caller is the jobs service, the only caller billing admits to these methods
(kit/callers.py), so the principal the handlers see is the jobs service's, as on the wire.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from google.rpc import status_pb2

from innosystem.billing.v1 import billing_pb2 as pb
from innosystem.kit import principal
from innosystem.kit.server import error_status
from innosystem.kit.validation import check_required
from services.billing.api import DOMAIN, BillingApi

_SERVICE = "/innosystem.billing.v1.BillingService/"
# The request types offered, by the method that takes them.
METHODS = {pb.BatchReserveRequest: "BatchReserve", pb.BatchCaptureRequest: "BatchCapture",
           pb.BatchReleaseRequest: "BatchRelease", pb.BatchExtendRequest: "BatchExtend"}
_JOBS = principal.service_principal("jobs")


async def answer(api: BillingApi, request: Message) -> pb.BatchHoldResponse | status_pb2.Status:
    """A hold batch's reply, or the Status the unary call would have ended with."""
    method = METHODS.get(type(request))
    if method is None:
        raise TypeError(f"billing answers no {type(request).__name__} in process")
    token = principal.bind(_JOBS)
    try:
        check_required(request)
        handler: Any = getattr(api, method)
        reply: pb.BatchHoldResponse = await handler(request, None)
        return reply
    except Exception as exc:  # answered as the unary call would have been
        return error_status(exc, _SERVICE + method, DOMAIN)
    finally:
        principal.reset(token)
