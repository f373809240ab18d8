"""TenancyService servicer: converts protobuf ↔ Python values and calls the service layer."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask

from innosystem.kit import principal as principals
from innosystem.kit import sessions
from innosystem.kit.db import Database
from innosystem.kit.errors import InvalidArgument, Unauthenticated
from innosystem.kit.protos import changes, request_hash, timestamp, to_datetime
from innosystem.tenancy.v1 import tenancy_pb2 as pb
from innosystem.tenancy.v1 import tenancy_pb2_grpc
from services.tenancy import audit
from services.tenancy.api_keys import ApiKeys, key_account
from services.tenancy.models import ApiKey, AuditEvent, Customer, Project, Reseller, SignInSession, User
from services.tenancy.service import TenancyService
from services.tenancy.sign_in import SignIn
from services.tenancy.totp import SecondFactor
from services.tenancy.users import Users


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
                      billing_currency_code=row.billing_currency_code,
                      create_time=timestamp(row.create_time), update_time=timestamp(row.update_time))


def user_pb(row: User) -> pb.User:
    return pb.User(name=f"users/{row.id}", user_id=str(row.id), email=row.email, display_name=row.display_name,
                   role=row.role, account_kind=row.account_kind,  # type: ignore[arg-type]
                   customer_id=str(row.customer_id or ""), reseller_id=str(row.reseller_id or ""),
                   totp_enabled=row.totp_secret is not None, locale=row.locale, time_zone=row.time_zone,
                   active=row.active, invitation_pending=row.password_hash is None,
                   create_time=timestamp(row.create_time), update_time=timestamp(row.update_time))


def api_key_pb(row: ApiKey) -> pb.ApiKey:
    account = key_account(row)
    return pb.ApiKey(api_key_id=str(row.id), display_name=row.display_name or row.label, role=row.role or pb.ROLE_OWNER,  # type: ignore[arg-type]
                     prefix=row.prefix, account_kind=row.kind,  # type: ignore[arg-type]
                     customer_id=str(account.customer_id or ""), reseller_id=str(account.reseller_id or ""),
                     create_time=timestamp(row.create_time), expire_time=timestamp(row.expire_time),
                     last_use_time=timestamp(row.last_use_time))


def session_pb(row: SignInSession, current: str) -> pb.Session:
    return pb.Session(session_id=str(row.id), user_id=str(row.user_id), client_address=row.client_address,
                      create_time=timestamp(row.create_time), last_use_time=timestamp(row.last_use_time),
                      expire_time=timestamp(row.expire_time), current=str(row.id) == current)


def audit_event_pb(row: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(audit_event_id=str(row.id), create_time=timestamp(row.create_time), action=row.action,
                         actor_kind=row.actor_kind, actor_user_id=row.actor_user_id,  # type: ignore[arg-type]
                         actor_key_id=row.actor_key_id, customer_id=str(row.customer_id or ""),
                         reseller_id=str(row.reseller_id or ""), target=row.target, detail=row.detail,
                         client_address=row.client_address, request_id=row.request_id)


class TenancyApi(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, service: TenancyService, users: Users, sign_in: SignIn, api_keys: ApiKeys,
                 second_factor: SecondFactor, db: Database) -> None:
        self.service = service
        self.second_factor = second_factor
        self.users = users
        self.sign_in = sign_in
        self.api_keys = api_keys
        self.db = db

    async def Authenticate(self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext) -> pb.Principal:
        # internal: only the callers in innosystem/kit/callers.py get here
        if request.session_token:
            return await self.sign_in.authenticate(request.session_token)
        if not request.api_key:
            raise Unauthenticated("an API key or a session token is needed", reason="NO_CREDENTIALS")
        return await self.service.authenticate(request.api_key)

    async def RecordAuditEvent(self, request: pb.RecordAuditEventRequest,
                               context: grpc.aio.ServicerContext) -> Empty:
        # internal: billing, jobs and keys (innosystem/kit/audit.py)
        await audit.record_reported(self.db, request)
        return Empty()

    async def GetMe(self, request: pb.GetMeRequest, context: grpc.aio.ServicerContext) -> pb.Me:
        caller = principals.current()
        me = pb.Me(principal=caller, display_name=await self.service.me(caller))
        if caller.user_id:
            me.user.CopyFrom(user_pb(await self.sign_in.current(caller)))
        return me

    # users

    async def CreateUser(self, request: pb.CreateUserRequest,
                         context: grpc.aio.ServicerContext) -> pb.CreateUserResponse:
        invited = await self.users.invite(principals.current(), request.customer_id, request.reseller_id,
                                          request.email, request.display_name, request.role)
        return pb.CreateUserResponse(user=user_pb(invited.user), invitation_token=invited.token)

    async def ListUsers(self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext) -> pb.ListUsersResponse:
        page = await self.users.list(principals.current(), request.customer_id, request.reseller_id,
                                     request.page_size, request.page_token)
        return pb.ListUsersResponse(users=[user_pb(u) for u in page.items], next_page_token=page.next_page_token)

    async def GetUser(self, request: pb.GetUserRequest, context: grpc.aio.ServicerContext) -> pb.User:
        return user_pb(await self.users.get(principals.current(), request.user_id))

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: grpc.aio.ServicerContext) -> pb.User:
        fields = changes(request.user, request.update_mask, "user")
        return user_pb(await self.users.update(principals.current(), request.user_id, fields))

    async def DeactivateUser(self, request: pb.DeactivateUserRequest, context: grpc.aio.ServicerContext) -> pb.User:
        return user_pb(await self.users.deactivate(principals.current(), request.user_id))

    async def AcceptInvitation(self, request: pb.AcceptInvitationRequest,
                               context: grpc.aio.ServicerContext) -> pb.User:
        return user_pb(await self.users.accept(request.token, request.password))

    async def CreatePasswordReset(self, request: pb.CreatePasswordResetRequest,
                                  context: grpc.aio.ServicerContext) -> Empty:
        await self.users.request_reset(request.email)
        return Empty()

    async def CompletePasswordReset(self, request: pb.CompletePasswordResetRequest,
                                    context: grpc.aio.ServicerContext) -> Empty:
        await self.users.complete_reset(request.token, request.password)
        return Empty()

    # second factor

    async def EnrollTotp(self, request: pb.EnrollTotpRequest,
                         context: grpc.aio.ServicerContext) -> pb.EnrollTotpResponse:
        secret, uri = await self.second_factor.enroll(principals.current(), request.user_id)
        return pb.EnrollTotpResponse(secret=secret, otpauth_uri=uri)

    async def ConfirmTotp(self, request: pb.ConfirmTotpRequest,
                          context: grpc.aio.ServicerContext) -> pb.ConfirmTotpResponse:
        user, codes = await self.second_factor.confirm(principals.current(), request.user_id, request.secret,
                                                       request.code)
        return pb.ConfirmTotpResponse(user=user_pb(user), recovery_codes=codes)

    async def DisableTotp(self, request: pb.DisableTotpRequest, context: grpc.aio.ServicerContext) -> pb.User:
        return user_pb(await self.second_factor.disable(principals.current(), request.user_id))

    async def SetTotpRequirement(self, request: pb.SetTotpRequirementRequest,
                                 context: grpc.aio.ServicerContext) -> pb.TotpRequirement:
        required = await self.second_factor.set_requirement(principals.current(), request.customer_id,
                                                            request.reseller_id, request.required)
        return pb.TotpRequirement(required=required)

    # sessions

    async def CreateSession(self, request: pb.CreateSessionRequest,
                            context: grpc.aio.ServicerContext) -> pb.SessionResponse:
        signed_in = await self.sign_in.create(request.email, request.password, request.totp_code)
        # The token travels to the gateway in metadata, which sets the cookie; never in the body.
        await context.send_initial_metadata(((sessions.SESSION_METADATA, signed_in.token),))
        return pb.SessionResponse(user=user_pb(signed_in.user), csrf_token=self.sign_in.csrf(signed_in.session_id))

    async def GetCurrentSession(self, request: pb.GetCurrentSessionRequest,
                                context: grpc.aio.ServicerContext) -> pb.SessionResponse:
        caller = principals.current()
        user = await self.sign_in.current(caller)
        return pb.SessionResponse(user=user_pb(user), csrf_token=self.sign_in.csrf(caller.key_id))

    async def DeleteCurrentSession(self, request: pb.DeleteCurrentSessionRequest,
                                   context: grpc.aio.ServicerContext) -> Empty:
        await self.sign_in.delete_current(principals.current())
        await context.send_initial_metadata(((sessions.SESSION_METADATA, ""),))  # the gateway clears the cookie
        return Empty()

    async def ListSessions(self, request: pb.ListSessionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListSessionsResponse:
        caller = principals.current()
        rows = await self.sign_in.list(caller, request.user_id)
        return pb.ListSessionsResponse(sessions=[session_pb(r, caller.key_id) for r in rows])

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.sign_in.delete(principals.current(), request.session_id)
        return Empty()

    # API keys

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateApiKeyResponse:
        expire = to_datetime(request.expire_time) if request.HasField("expire_time") else None
        issued = await self.api_keys.create(principals.current(), request.customer_id, request.reseller_id,
                                            request.display_name, request.role, expire)
        return pb.CreateApiKeyResponse(api_key=api_key_pb(issued.key), secret=issued.secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListApiKeysResponse:
        page = await self.api_keys.list(principals.current(), request.customer_id, request.reseller_id,
                                        request.page_size, request.page_token)
        return pb.ListApiKeysResponse(api_keys=[api_key_pb(k) for k in page.items],
                                      next_page_token=page.next_page_token)

    async def DeleteApiKey(self, request: pb.DeleteApiKeyRequest, context: grpc.aio.ServicerContext) -> Empty:
        await self.api_keys.delete(principals.current(), request.api_key_id)
        return Empty()

    # audit

    async def ListAuditEvents(self, request: pb.ListAuditEventsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListAuditEventsResponse:
        page = await audit.list_events(self.db, principals.current(), request.customer_id, request.reseller_id,
                                       request.page_size, request.page_token, request.action, request.actor_user_id)
        return pb.ListAuditEventsResponse(audit_events=[audit_event_pb(e) for e in page.items],
                                          next_page_token=page.next_page_token)

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
