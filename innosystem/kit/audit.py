"""Administrative actions of billing, jobs and keys, reported to tenancy's audit log.

Which methods are audited, and what of their request and answer is recorded, is the table below;
the bootstrap (`kit.server`) reports a call of one of them after it succeeded, so no servicer
carries audit code. The action has committed in its own service's database by then: a report
that cannot reach tenancy is logged with everything it held (WARNING, `audit_unreported`),
never dropped silently, and never fails the action the caller was told succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from innosystem.kit import logs, principal
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

log = logging.getLogger(__name__)
REPORT_TIMEOUT_SECONDS = 2.0

Extract = Callable[[Message, Message], str]


@dataclass(frozen=True)
class Audited:
    action: str
    target: Extract
    detail: Extract = lambda request, answer: ""
    when: Callable[[Message], bool] = lambda request: True  # e.g. not for a dry run


def _batch(request: Message, answer: Message) -> str:
    """A batch action's filter and counts."""
    what = text_format.MessageToString(request.filter, as_one_line=True)  # type: ignore[attr-defined]
    return f"filter {{{what}}}: {_get(answer, 'changed_count')} of {_get(answer, 'matched_count')} changed"


def _get(message: Message, name: str) -> str:
    return str(getattr(message, name)) if name in message.DESCRIPTOR.fields_by_name else ""


AUDITED: dict[str, Audited] = {
    "/innosystem.billing.v1.BillingService/TopUpWallet": Audited(
        "TopUpWallet", lambda q, a: f"transactions/{a.transaction.id}",  # type: ignore[attr-defined]
        lambda q, a: f"{q.amount_cents} {a.wallet.currency_code}"),  # type: ignore[attr-defined]
    "/innosystem.billing.v1.BillingService/UpdateWallet": Audited(
        "UpdateWallet", lambda q, a: f"customers/{_get(q, 'customer_id')}/wallet",
        lambda q, a: f"credit_limit_cents={_get(a, 'credit_limit_cents')}"),
    "/innosystem.jobs.v1.JobService/CreateJobType": Audited(
        "CreateJobType", lambda q, a: f"jobTypes/{_get(a, 'id')}", lambda q, a: _get(a, "name")),
    "/innosystem.jobs.v1.JobService/UpdateJobType": Audited(
        "UpdateJobType", lambda q, a: f"jobTypes/{_get(a, 'id')}", lambda q, a: _get(a, "name")),
    "/innosystem.jobs.v1.JobService/BatchCancelJobs": Audited(
        "BatchCancelJobs", lambda q, a: f"projects/{_get(q, 'project_id')}/jobs", lambda q, a: _batch(q, a),
        when=lambda q: not getattr(q, "validate_only", False)),
    "/innosystem.jobs.v1.JobService/BatchRetryJobs": Audited(
        "BatchRetryJobs", lambda q, a: f"projects/{_get(q, 'project_id')}/jobs", lambda q, a: _batch(q, a),
        when=lambda q: not getattr(q, "validate_only", False)),
    "/innosystem.keys.v1.KeyManagementService/CreateClientKey": Audited(
        "CreateClientKey", lambda q, a: f"keys/{_get(a, 'id')}", lambda q, a: _get(a, "endpoint_url")),
    "/innosystem.keys.v1.KeyManagementService/UpdateClientKey": Audited(
        "UpdateClientKey", lambda q, a: f"keys/{_get(a, 'id')}"),
    "/innosystem.keys.v1.KeyManagementService/RotateClientKey": Audited(
        "RotateClientKey", lambda q, a: f"keys/{_get(a, 'id')}", lambda q, a: _get(a, "external_key_id")),
    "/innosystem.keys.v1.KeyManagementService/DisableClientKey": Audited(
        "DisableClientKey", lambda q, a: f"keys/{_get(a, 'id')}", lambda q, a: _get(q, "reason")),
}


class AuditReporter:
    def __init__(self, tenancy: grpc.aio.Channel) -> None:
        self._stub = tenancy_pb2_grpc.TenancyServiceStub(tenancy)

    async def report(self, method: str, request: Message, answer: Message) -> None:
        audited = AUDITED.get(method)
        caller = principal.current_or_none()
        if audited is None or caller is None or not audited.when(request):
            return
        event = tenancy_pb2.RecordAuditEventRequest(
            actor=caller, action=audited.action,
            customer_id=_get(request, "customer_id") or _get(answer, "customer_id"),
            target=audited.target(request, answer)[:200], detail=audited.detail(request, answer),
            client_address=logs.client_address.get(), request_id=logs.request_id.get())
        try:
            await self._stub.RecordAuditEvent(event, timeout=REPORT_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            log.warning("audit event not recorded (tenancy: %s): %s %s", exc.code().name, event.action, event.target,
                        extra={"audit_unreported": True, "action": event.action, "target": event.target,
                               "customer_id": event.customer_id, "actor_key_id": caller.key_id,
                               "actor_user_id": caller.user_id, "detail": event.detail})
