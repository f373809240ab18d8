"""JobService servicer: converts protobuf ↔ Python values and calls the use cases.

Job types go to `JobsService`; jobs to `Submission`, `Queries`, `Control`, `Batches` and `Live`; webhooks to
`Webhooks`; the internal lease API (runners and keys services only) to `Leases`.

Every client request that carries text beyond ids is first checked for text PostgreSQL cannot
store (`check_storable`: a NUL anywhere), so such a value is a 400 naming its field rather than a
failed statement (a 500). Requests of ids only need no check (a malformed id is not found),
submits check their own requests (`Submission`), and the lease API is the runners path's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1 import jobs_pb2_grpc
from innosystem.jobs.v1 import webhooks_pb2 as hooks_pb
from innosystem.kit import principal as principals
from innosystem.kit.protos import changes, request_hash, timestamp, to_datetime
from innosystem.kit.validation import check_storable
from services.jobs import relay
from services.jobs.batches import Batches
from services.jobs.control import Control
from services.jobs.convert import add_jobs, job_pb
from services.jobs.leases import Leases
from services.jobs.live import Live
from services.jobs.markups import Markups
from services.jobs.models import JobType, JobTypePrice, PriceMarkup, Webhook, WebhookDelivery
from services.jobs.queries import Queries
from services.jobs.service import JobsService
from services.jobs.submission import Submission
from services.jobs.webhooks import Webhooks

_MESSAGES = ("default_retry_policy", "external_api")


def job_type_pb(row: JobType) -> types_pb.JobType:
    ext = row.external_api
    return types_pb.JobType(
        id=str(row.id), project_id=str(row.project_id or ""), customer_id=str(row.customer_id or ""), name=row.name,
        description=row.description, default_priority=row.default_priority,  # type: ignore[arg-type]
        default_retry_policy=types_pb.RetryPolicy(
            max_attempts=row.retry_max_attempts, initial_interval_seconds=row.retry_initial_interval_seconds,
            backoff_multiplier=row.retry_backoff_multiplier, max_interval_seconds=row.retry_max_interval_seconds,
            non_retryable_error_types=list(row.non_retryable_error_types or ())),
        default_persistence_policy=row.default_persistence_policy,  # type: ignore[arg-type]
        base_cost_cents=row.base_cost_cents, currency_code=row.currency_code,
        processor_type=row.processor_type,  # type: ignore[arg-type]
        enabled=row.enabled, version=row.version, required_tags=list(row.required_tags or ()),
        timeout_seconds=row.timeout_seconds, sensitive_fields=list(row.sensitive_fields or ()),
        max_cost_cents=row.max_cost_cents, over_capture_policy=row.over_capture_policy,  # type: ignore[arg-type]
        charge_on_failure=row.charge_on_failure,
        external_api=types_pb.ExternalApiConfig(**ext) if ext is not None else None,
        max_batch_size=row.max_batch_size, create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time), catalog=row.catalog,
    )


def price_pb(row: JobTypePrice) -> types_pb.JobTypePrice:
    return types_pb.JobTypePrice(
        id=str(row.id), job_type_id=str(row.job_type_id), currency_code=row.currency_code,
        model=row.model, unit_price_cents=row.unit_price_cents, cap_cents=row.cap_cents,  # type: ignore[arg-type]
        effective_time=timestamp(row.effective_time), create_time=timestamp(row.create_time))


def markup_pb(row: PriceMarkup) -> pb.PriceMarkup:
    return pb.PriceMarkup(customer_id=str(row.customer_id), markup_bps=row.markup_bps,
                          update_time=timestamp(row.update_time))


def _fields(resource: Message, mask: FieldMask, *, creating: bool) -> dict[str, Any]:
    """The fields to set, as plain values: nested messages become dicts, or None when unset
    (an update mask naming an unset message resets it to its default)."""
    fields = changes(resource, mask, "job_type", creating=creating)
    for name in _MESSAGES:
        if name in fields:
            fields[name] = _plain(fields[name]) if resource.HasField(name) else None
    return fields


def _plain(message: Message) -> dict[str, Any]:
    return {f.name: (list(v) if f.is_repeated else v)
            for f in message.DESCRIPTOR.fields for v in (getattr(message, f.name),)}


@dataclass
class UseCases:
    submission: Submission
    queries: Queries
    control: Control
    leases: Leases
    webhooks: Webhooks
    markups: Markups
    batches: Batches
    live: Live


def webhook_pb(row: Webhook) -> hooks_pb.Webhook:
    return hooks_pb.Webhook(id=str(row.id), project_id=str(row.project_id), customer_id=str(row.customer_id),
                            url=row.url, events=list(row.events), description=row.description,
                            signing_secret_fingerprint=row.secret_fingerprint, create_time=timestamp(row.create_time))


def delivery_pb(row: WebhookDelivery) -> hooks_pb.WebhookDelivery:
    return hooks_pb.WebhookDelivery(
        id=str(row.id), webhook_id=str(row.webhook_id), event_type=row.event_type, job_id=str(row.job_id or ""),
        state=row.state, attempts=row.attempts, last_status_code=row.last_status_code,  # type: ignore[arg-type]
        last_error=row.last_error, next_attempt_time=timestamp(row.next_attempt_time),
        last_attempt_time=timestamp(row.last_attempt_time), create_time=timestamp(row.create_time),
        payload=row.payload)


class JobsApi(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, types: JobsService, jobs: UseCases | None) -> None:
        self.service = types
        self._cases = jobs

    @property
    def cases(self) -> UseCases:
        if self._cases is None:  # job-type-only wiring (tests)
            raise NotImplementedError
        return self._cases

    # job types

    async def CreateJobType(self, request: pb.CreateJobTypeRequest,
                            context: grpc.aio.ServicerContext) -> types_pb.JobType:
        check_storable(request)
        fields = _fields(request.job_type, FieldMask(), creating=True)
        row = await self.service.create_job_type(principals.current(), request.project_id, fields,
                                                 request.request_id, request_hash(request))
        return job_type_pb(row)

    async def GetJobType(self, request: pb.GetJobTypeRequest, context: grpc.aio.ServicerContext) -> types_pb.JobType:
        return job_type_pb(await self.service.get_job_type(principals.current(), request.job_type_id))

    async def ListJobTypes(self, request: pb.ListJobTypesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListJobTypesResponse:
        check_storable(request)
        page = await self.service.list_job_types(principals.current(), request.project_id, request.page_size,
                                                 request.page_token, enabled_only=request.enabled_only,
                                                 name=request.name, customer_id=request.customer_id)
        return pb.ListJobTypesResponse(job_types=[job_type_pb(r) for r in page.items],
                                       next_page_token=page.next_page_token)

    async def UpdateJobType(self, request: pb.UpdateJobTypeRequest,
                            context: grpc.aio.ServicerContext) -> types_pb.JobType:
        check_storable(request)
        fields = _fields(request.job_type, request.update_mask, creating=False)
        return job_type_pb(await self.service.update_job_type(principals.current(), request.job_type_id, fields))

    async def DeleteJobType(self, request: pb.DeleteJobTypeRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.service.delete_job_type(principals.current(), request.job_type_id)
        return Empty()

    # the catalog

    async def CreateCatalogJobType(self, request: pb.CreateCatalogJobTypeRequest,
                                   context: grpc.aio.ServicerContext) -> types_pb.JobType:
        check_storable(request)
        fields = _fields(request.job_type, FieldMask(), creating=True)
        return job_type_pb(await self.service.create_catalog_job_type(principals.current(), fields,
                                                                      request.request_id, request_hash(request)))

    async def ListCatalogJobTypes(self, request: pb.ListCatalogJobTypesRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ListJobTypesResponse:
        check_storable(request)
        page = await self.service.list_catalog_job_types(request.page_size, request.page_token,
                                                         enabled_only=request.enabled_only, name=request.name)
        return pb.ListJobTypesResponse(job_types=[job_type_pb(r) for r in page.items],
                                       next_page_token=page.next_page_token)

    async def AddJobTypePrice(self, request: pb.AddJobTypePriceRequest,
                              context: grpc.aio.ServicerContext) -> types_pb.JobTypePrice:
        check_storable(request)
        p = request.price
        fields: dict[str, Any] = {"currency_code": p.currency_code, "model": p.model,
                                  "unit_price_cents": p.unit_price_cents, "cap_cents": p.cap_cents,
                                  "effective_time": to_datetime(p.effective_time) if p.HasField("effective_time")
                                  else None}
        return price_pb(await self.service.add_price(principals.current(), request.job_type_id, fields))

    async def ListJobTypePrices(self, request: pb.ListJobTypePricesRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListJobTypePricesResponse:
        check_storable(request)
        rows = await self.service.list_prices(principals.current(), request.job_type_id, request.currency_code)
        return pb.ListJobTypePricesResponse(prices=[price_pb(r) for r in rows])


    async def GetPriceMarkup(self, request: pb.GetPriceMarkupRequest,
                             context: grpc.aio.ServicerContext) -> pb.PriceMarkup:
        return markup_pb(await self.cases.markups.get(principals.current(), request.customer_id))

    async def UpdatePriceMarkup(self, request: pb.UpdatePriceMarkupRequest,
                                context: grpc.aio.ServicerContext) -> pb.PriceMarkup:
        return markup_pb(await self.cases.markups.update(principals.current(), request.customer_id,
                                                         request.price_markup.markup_bps))

    # jobs

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_pb(await self.cases.submission.submit(principals.current(), request))

    async def BatchSubmitJobs(self, request: pb.BatchSubmitJobsRequest,
                              context: grpc.aio.ServicerContext) -> pb.BatchSubmitJobsResponse:
        jobs = await self.cases.submission.batch_submit(principals.current(), request)
        answer = pb.BatchSubmitJobsResponse()
        add_jobs(answer.jobs, jobs)
        return answer

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return await self.cases.queries.get(principals.current(), request.job_id, request.view)

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        check_storable(request)
        jobs, token = await self.cases.queries.list_jobs(principals.current(), request)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        check_storable(request)
        return job_pb(await self.cases.control.cancel(principals.current(), request.job_id, request.reason))

    async def RetryJob(self, request: pb.RetryJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        check_storable(request)
        return job_pb(await self.cases.control.retry(principals.current(), request.job_id, request.request_id,
                                                     request_hash(request)))

    async def BatchCancelJobs(self, request: pb.BatchCancelJobsRequest,
                              context: grpc.aio.ServicerContext) -> pb.BatchJobsResponse:
        check_storable(request)
        return await self.cases.batches.cancel(principals.current(), request)

    async def BatchRetryJobs(self, request: pb.BatchRetryJobsRequest,
                             context: grpc.aio.ServicerContext) -> pb.BatchJobsResponse:
        check_storable(request)
        return await self.cases.batches.retry(principals.current(), request)

    async def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.cases.control.delete(principals.current(), request.job_id)
        return Empty()

    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JobEvent]:
        async for event in self.cases.control.watch(principals.current(), request.job_id):
            yield event

    async def WatchJobs(self, request: pb.WatchJobsRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JobEvent]:
        check_storable(request)
        async for event in self.cases.live.jobs(principals.current(), request):
            yield event

    async def WatchQueueStats(self, request: pb.GetQueueStatsRequest,
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.QueueStats]:
        check_storable(request)
        async for stats in self.cases.live.queue_stats(principals.current(), request):
            yield stats

    async def ListDeadLetterJobs(self, request: pb.ListDeadLetterJobsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListDeadLetterJobsResponse:
        check_storable(request)
        jobs, token = await self.cases.queries.dead_letters(principals.current(), request)
        return pb.ListDeadLetterJobsResponse(jobs=jobs, next_page_token=token)

    async def GetQueueStats(self, request: pb.GetQueueStatsRequest,
                            context: grpc.aio.ServicerContext) -> pb.QueueStats:
        check_storable(request)
        return await self.cases.queries.stats(principals.current(), request)

    # webhooks

    async def CreateWebhook(self, request: hooks_pb.CreateWebhookRequest,
                            context: grpc.aio.ServicerContext) -> hooks_pb.CreateWebhookResponse:
        check_storable(request)
        row, secret = await self.cases.webhooks.create(principals.current(), request.project_id, request.webhook,
                                                       request.request_id, request_hash(request))
        return hooks_pb.CreateWebhookResponse(webhook=webhook_pb(row), signing_secret=secret)

    async def GetWebhook(self, request: hooks_pb.GetWebhookRequest,
                         context: grpc.aio.ServicerContext) -> hooks_pb.Webhook:
        return webhook_pb(await self.cases.webhooks.get(principals.current(), request.webhook_id))

    async def ListWebhooks(self, request: hooks_pb.ListWebhooksRequest,
                           context: grpc.aio.ServicerContext) -> hooks_pb.ListWebhooksResponse:
        check_storable(request)
        page = await self.cases.webhooks.list(principals.current(), request.project_id, request.page_size,
                                              request.page_token)
        return hooks_pb.ListWebhooksResponse(webhooks=[webhook_pb(r) for r in page.items],
                                             next_page_token=page.next_page_token)

    async def DeleteWebhook(self, request: hooks_pb.DeleteWebhookRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.cases.webhooks.delete(principals.current(), request.webhook_id)
        return Empty()

    async def ListWebhookDeliveries(self, request: hooks_pb.ListWebhookDeliveriesRequest,
                                    context: grpc.aio.ServicerContext) -> hooks_pb.ListWebhookDeliveriesResponse:
        check_storable(request)
        page = await self.cases.webhooks.deliveries(principals.current(), request.webhook_id, request.page_size,
                                                    request.page_token)
        return hooks_pb.ListWebhookDeliveriesResponse(deliveries=[delivery_pb(r) for r in page.items],
                                                      next_page_token=page.next_page_token)

    async def RedeliverWebhookDelivery(self, request: hooks_pb.RedeliverWebhookDeliveryRequest,
                                       context: grpc.aio.ServicerContext) -> hooks_pb.WebhookDelivery:
        return delivery_pb(await self.cases.webhooks.redeliver(principals.current(), request.webhook_id,
                                                               request.delivery_id))

    # internal: the runners service (and the keys service's GetLease); the bootstrap admits only
    # those callers (innosystem/kit/callers.py)

    async def LeaseJobs(self, request: pb.LeaseJobsRequest,
                        context: grpc.aio.ServicerContext) -> pb.LeaseJobsResponse:
        return pb.LeaseJobsResponse(leases=await self.cases.leases.lease(request))

    async def CompleteJobs(self, request: pb.CompleteJobsRequest,
                           context: grpc.aio.ServicerContext) -> pb.CompleteJobsResponse:
        return pb.CompleteJobsResponse(results=await self.cases.leases.complete(list(request.completions)))

    # A coroutine writing with context.write (answers go out in the order they are ready), not the
    # async generator the generated base class declares: kit.server wraps either.
    async def Relay(self, requests: AsyncIterator[pb.RelayRequest],  # type: ignore[override]
                    context: grpc.aio.ServicerContext) -> None:
        await relay.serve(self.cases.leases, requests, context)

    async def ExtendLeases(self, request: pb.ExtendLeasesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ExtendLeasesResponse:
        return pb.ExtendLeasesResponse(results=await self.cases.leases.extend(request))

    async def ReleaseLeases(self, request: pb.ReleaseLeasesRequest,
                            context: grpc.aio.ServicerContext) -> pb.ReleaseLeasesResponse:
        return pb.ReleaseLeasesResponse(results=await self.cases.leases.release(request))

    async def GetLease(self, request: pb.GetLeaseRequest, context: grpc.aio.ServicerContext) -> pb.JobLease:
        return await self.cases.leases.get(request)

    async def WatchCancellations(self, request: pb.WatchCancellationsRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CancellationNotice]:
        async for notice in self.cases.leases.cancellations():
            yield notice


def servicer(types: JobsService, jobs: UseCases | None = None) -> jobs_pb2_grpc.JobServiceServicer:
    return JobsApi(types, jobs)
