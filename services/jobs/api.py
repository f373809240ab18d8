"""JobService servicer: converts protobuf ↔ Python values and calls the service layer.

Only the job type methods exist so far; every other JobService method is the generated base
class's, which the server bootstrap answers with UNIMPLEMENTED (reason NOT_IMPLEMENTED_YET).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from innosystem.jobs.v1 import job_types_pb2 as types_pb
from innosystem.jobs.v1 import jobs_pb2 as pb
from innosystem.jobs.v1 import jobs_pb2_grpc
from innosystem.kit import principal as principals
from innosystem.kit.protos import changes, request_hash, timestamp
from services.jobs.models import JobType
from services.jobs.service import JobsService

_MESSAGES = ("default_retry_policy", "external_api")


def job_type_pb(row: JobType) -> types_pb.JobType:
    ext = row.external_api
    return types_pb.JobType(
        id=str(row.id), project_id=str(row.project_id), customer_id=str(row.customer_id), name=row.name,
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
        update_time=timestamp(row.update_time),
    )


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


class JobsApi(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, service: JobsService) -> None:
        self.service = service

    # job types

    async def CreateJobType(self, request: pb.CreateJobTypeRequest,
                            context: grpc.aio.ServicerContext) -> types_pb.JobType:
        fields = _fields(request.job_type, FieldMask(), creating=True)
        row = await self.service.create_job_type(principals.current(), request.project_id, fields,
                                                 request.request_id, request_hash(request))
        return job_type_pb(row)

    async def GetJobType(self, request: pb.GetJobTypeRequest, context: grpc.aio.ServicerContext) -> types_pb.JobType:
        return job_type_pb(await self.service.get_job_type(principals.current(), request.job_type_id))

    async def ListJobTypes(self, request: pb.ListJobTypesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListJobTypesResponse:
        page = await self.service.list_job_types(principals.current(), request.project_id, request.page_size,
                                                 request.page_token, enabled_only=request.enabled_only,
                                                 name=request.name, customer_id=request.customer_id)
        return pb.ListJobTypesResponse(job_types=[job_type_pb(r) for r in page.items],
                                       next_page_token=page.next_page_token)

    async def UpdateJobType(self, request: pb.UpdateJobTypeRequest,
                            context: grpc.aio.ServicerContext) -> types_pb.JobType:
        fields = _fields(request.job_type, request.update_mask, creating=False)
        return job_type_pb(await self.service.update_job_type(principals.current(), request.job_type_id, fields))

    async def DeleteJobType(self, request: pb.DeleteJobTypeRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.service.delete_job_type(principals.current(), request.job_type_id)
        return Empty()


def servicer(service: JobsService) -> jobs_pb2_grpc.JobServiceServicer:
    """The servicer to register. The typed stubs declare every RPC abstract; the ones not built yet
    are deliberately the generated base's (UNIMPLEMENTED, see above), hence the one ignore."""
    return JobsApi(service)  # type: ignore[abstract]
