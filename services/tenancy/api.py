"""TenancyService servicer: converts protobuf ↔ Python values and calls the service layer."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask

from innosystem.kit import principal as principals
from innosystem.kit.errors import InvalidArgument
from innosystem.kit.protos import changes, request_hash, timestamp
from innosystem.tenancy.v1 import tenancy_pb2 as pb
from innosystem.tenancy.v1 import tenancy_pb2_grpc
from services.tenancy.models import Customer, Project, Reseller
from services.tenancy.service import TenancyService


def reseller_pb(row: Reseller) -> pb.Reseller:
    return pb.Reseller(id=str(row.id), name=row.name, email=row.email, active=row.active,
                       commission_rate_bps=row.commission_rate_bps, create_time=timestamp(row.create_time),
                       update_time=timestamp(row.update_time))


def customer_pb(row: Customer) -> pb.Customer:
    return pb.Customer(id=str(row.id), reseller_id=str(row.reseller_id or ""), name=row.name, email=row.email,
                       active=row.active, create_time=timestamp(row.create_time),
                       update_time=timestamp(row.update_time))


def project_pb(row: Project) -> pb.Project:
    return pb.Project(id=str(row.id), customer_id=str(row.customer_id), name=row.name, description=row.description,
                      tags=list(row.tags or ()), active=row.active, encryption_key_id=row.encryption_key_id or "",
                      create_time=timestamp(row.create_time), update_time=timestamp(row.update_time))


class TenancyApi(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, service: TenancyService) -> None:
        self.service = service

    async def Authenticate(self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext) -> pb.Principal:
        # internal: only the callers in innosystem/kit/callers.py get here
        return await self.service.authenticate(request.api_key)

    async def GetMe(self, request: pb.GetMeRequest, context: grpc.aio.ServicerContext) -> pb.Me:
        caller = principals.current()
        return pb.Me(principal=caller, display_name=await self.service.me(caller))

    # resellers

    async def CreateReseller(self, request: pb.CreateResellerRequest,
                             context: grpc.aio.ServicerContext) -> pb.CreateResellerResponse:
        fields = _create_fields(request.reseller, "reseller")
        created = await self.service.create_reseller(principals.current(), fields, request.request_id,
                                                     request_hash(request))
        return pb.CreateResellerResponse(reseller=reseller_pb(created.row), api_key=created.api_key)

    async def GetReseller(self, request: pb.GetResellerRequest, context: grpc.aio.ServicerContext) -> pb.Reseller:
        return reseller_pb(await self.service.get_reseller(principals.current(), request.reseller_id))

    async def ListResellers(self, request: pb.ListResellersRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListResellersResponse:
        page = await self.service.list_resellers(principals.current(), request.page_size, request.page_token)
        return pb.ListResellersResponse(resellers=[reseller_pb(r) for r in page.items],
                                        next_page_token=page.next_page_token)

    async def UpdateReseller(self, request: pb.UpdateResellerRequest,
                             context: grpc.aio.ServicerContext) -> pb.Reseller:
        fields = changes(request.reseller, request.update_mask, "reseller")
        row = await self.service.update_reseller(principals.current(), request.reseller_id, fields)
        return reseller_pb(row)

    async def DeleteReseller(self, request: pb.DeleteResellerRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.service.delete_reseller(principals.current(), request.reseller_id)
        return Empty()

    async def RotateResellerApiKey(self, request: pb.RotateResellerApiKeyRequest,
                                   context: grpc.aio.ServicerContext) -> pb.RotateApiKeyResponse:
        key = await self.service.rotate_reseller_key(principals.current(), request.reseller_id)
        return pb.RotateApiKeyResponse(api_key=key)

    # customers

    async def CreateCustomer(self, request: pb.CreateCustomerRequest,
                             context: grpc.aio.ServicerContext) -> pb.CreateCustomerResponse:
        fields = _create_fields(request.customer, "customer")
        if "reseller_id" in fields:
            fields["reseller_id"] = _parse_uuid(fields["reseller_id"], "customer.reseller_id")
        created = await self.service.create_customer(principals.current(), fields, request.request_id,
                                                     request_hash(request))
        return pb.CreateCustomerResponse(customer=customer_pb(created.row), api_key=created.api_key)

    async def GetCustomer(self, request: pb.GetCustomerRequest, context: grpc.aio.ServicerContext) -> pb.Customer:
        return customer_pb(await self.service.get_customer(principals.current(), request.customer_id))

    async def ListCustomers(self, request: pb.ListCustomersRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListCustomersResponse:
        page = await self.service.list_customers(principals.current(), request.page_size, request.page_token,
                                                 request.reseller_id)
        return pb.ListCustomersResponse(customers=[customer_pb(c) for c in page.items],
                                        next_page_token=page.next_page_token)

    async def UpdateCustomer(self, request: pb.UpdateCustomerRequest,
                             context: grpc.aio.ServicerContext) -> pb.Customer:
        fields = changes(request.customer, request.update_mask, "customer")
        return customer_pb(await self.service.update_customer(principals.current(), request.customer_id, fields))

    async def DeleteCustomer(self, request: pb.DeleteCustomerRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.service.delete_customer(principals.current(), request.customer_id, request.force)
        return Empty()

    async def RotateCustomerApiKey(self, request: pb.RotateCustomerApiKeyRequest,
                                   context: grpc.aio.ServicerContext) -> pb.RotateApiKeyResponse:
        key = await self.service.rotate_customer_key(principals.current(), request.customer_id)
        return pb.RotateApiKeyResponse(api_key=key)

    # projects

    async def CreateProject(self, request: pb.CreateProjectRequest, context: grpc.aio.ServicerContext) -> pb.Project:
        fields = _create_fields(request.project, "project")
        if not fields.get("encryption_key_id"):
            fields.pop("encryption_key_id", None)
        row = await self.service.create_project(principals.current(), request.customer_id, fields,
                                                request.request_id, request_hash(request))
        return project_pb(row)

    async def GetProject(self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext) -> pb.Project:
        return project_pb(await self.service.get_project(principals.current(), request.project_id))

    async def ListProjects(self, request: pb.ListProjectsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListProjectsResponse:
        page = await self.service.list_projects(principals.current(), request.customer_id, request.page_size,
                                                request.page_token)
        return pb.ListProjectsResponse(projects=[project_pb(p) for p in page.items],
                                       next_page_token=page.next_page_token)

    async def UpdateProject(self, request: pb.UpdateProjectRequest, context: grpc.aio.ServicerContext) -> pb.Project:
        fields = changes(request.project, request.update_mask, "project")
        if "encryption_key_id" in fields:
            fields["encryption_key_id"] = fields["encryption_key_id"] or None
        return project_pb(await self.service.update_project(principals.current(), request.project_id, fields))

    async def DeleteProject(self, request: pb.DeleteProjectRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.service.delete_project(principals.current(), request.project_id)
        return Empty()


def _create_fields(resource: Any, prefix: str) -> dict[str, Any]:
    """A new resource's fields; `active` (an optional field) defaults to true when unset."""
    fields = changes(resource, FieldMask(), prefix, creating=True)
    fields.setdefault("active", True)
    return fields


def _parse_uuid(value: str, field: str) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID", field=field, reason="INVALID_ID") from None
