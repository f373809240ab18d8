"""RunnerService servicer: converts protobuf ↔ Python values and calls the registry or the hub."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask

from innosystem.jobs.v1 import job_types_pb2, jobs_pb2, jobs_pb2_grpc
from innosystem.kit import principal as principals
from innosystem.kit.errors import PermissionDenied
from innosystem.kit.protos import changes, request_hash
from innosystem.runners.v1 import runners_pb2 as pb
from innosystem.runners.v1 import runners_pb2_grpc
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.runners.hub import Hub
from services.runners.registry import Registry
from services.runners.views import runner_pb


class RunnerApi(runners_pb2_grpc.RunnerServiceServicer):
    def __init__(self, registry: Registry, hub: Hub, jobs: jobs_pb2_grpc.JobServiceStub) -> None:
        self.registry, self.hub, self.jobs = registry, hub, jobs

    async def CreateRunner(self, request: pb.CreateRunnerRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateRunnerResponse:
        fields = changes(request.runner, FieldMask(), "runner", creating=True)
        for name in ("scope", "customer_id"):  # immutable, but chosen at create
            if (value := getattr(request.runner, name)):
                fields[name] = value
        created = await self.registry.create(principals.current(), fields, request.request_id,
                                             request_hash(request))
        return pb.CreateRunnerResponse(runner=runner_pb(created.row, None), token=created.token)

    async def GetRunner(self, request: pb.GetRunnerRequest, context: grpc.aio.ServicerContext) -> pb.Runner:
        found = await self.registry.get(principals.current(), request.runner_id)
        return runner_pb(found.row, found.live)

    async def ListRunners(self, request: pb.ListRunnersRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListRunnersResponse:
        caller = principals.current()
        page, live = await self.registry.list(caller, request.page_size, request.page_token, status=request.status,
                                              scope=request.scope, customer_id=request.customer_id)
        out = pb.ListRunnersResponse(runners=[runner_pb(r, live.get(str(r.id))) for r in page.items],
                                     next_page_token=page.next_page_token)
        if caller.kind == principals.CUSTOMER and not request.page_token:
            out.shared_runners.extend(await self._shared_summary())
        return out

    async def _shared_summary(self) -> list[pb.SharedRunnerSummary]:
        """For each catalog job type (the only ones shared runners serve): compatible shared runners
        online now and their free slots."""
        types: list[job_types_pb2.JobType] = []
        token = ""
        while True:
            page = await self.jobs.ListCatalogJobTypes(jobs_pb2.ListCatalogJobTypesRequest(
                page_size=500, page_token=token), timeout=10, wait_for_ready=True)
            types += page.job_types
            token = page.next_page_token
            if not token or len(types) >= 2000:
                break
        rows, live = await self.registry.online_shared()
        out = []
        for job_type in types:
            needed = set(job_type.required_tags)
            compatible = [r for r in rows if str(r.id) in live and job_type.name in (r.processors or ())
                          and needed <= set(r.tags or ())]
            out.append(pb.SharedRunnerSummary(
                project_id=job_type.project_id, job_type_id=job_type.id, job_type_name=job_type.name,
                online_runners=len(compatible), free_slots=sum(live[str(r.id)].free_slots for r in compatible)))
        return out

    async def UpdateRunner(self, request: pb.UpdateRunnerRequest, context: grpc.aio.ServicerContext) -> pb.Runner:
        found = await self.registry.update(principals.current(), request.runner_id,
                                           changes(request.runner, request.update_mask, "runner"))
        return runner_pb(found.row, found.live)

    async def DeleteRunner(self, request: pb.DeleteRunnerRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.registry.delete(principals.current(), request.runner_id)
        return Empty()

    async def RotateRunnerToken(self, request: pb.RotateRunnerTokenRequest,
                                context: grpc.aio.ServicerContext) -> pb.RotateRunnerTokenResponse:
        return pb.RotateRunnerTokenResponse(token=await self.registry.rotate_token(principals.current(),
                                                                                   request.runner_id))

    async def AuthenticateRunner(self, request: pb.AuthenticateRunnerRequest,
                                 context: grpc.aio.ServicerContext) -> Principal:
        # internal: only the callers in innosystem/kit/callers.py get here
        return await self.registry.authenticate(request.token)

    # A coroutine writing with context.write (the hub bounds each write in time), not the async
    # generator the generated base class declares: kit.server wraps either.
    async def Connect(self, request_iterator: AsyncIterator[pb.ConnectRequest],  # type: ignore[override]
                      context: grpc.aio.ServicerContext) -> None:
        caller = principals.current()
        if caller.kind != principals.RUNNER:
            raise PermissionDenied("Connect takes a runner token (authorization: Bearer isr_…), not an API key",
                                   reason="RUNNER_TOKEN_REQUIRED")
        await self.hub.serve(caller, request_iterator, context)
