"""Test doubles of the gateway's upstreams: a real grpc.aio server with small servicers.

`SAMPLE_FILE` is a proto file built here in code (there is no build step for test protos): a
`GatewayTestService` whose methods exercise every field kind, custom verbs, additional
bindings, `**`, `response_body` and server streaming. It lives in package
`innosystem.tenancy.v1` only so that the gateway's package → upstream rule sends it to the
same test server as the tenancy double.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import (
    descriptor_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc

from gateway.descriptors import build_pool, message_class, parse_descriptor_set
from innosystem.kit import principal, sessions
from innosystem.kit.errors import FailedPrecondition, NotFound, Unauthenticated
from innosystem.kit.server import abort
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

SECRET = b"test-internal-secret"
ADMIN_KEY = "isk_admin_test_key"
CUSTOMER_KEY = "isk_customer_test_key"
# A person's session: what the double answers for its cookie, and the password that signs in.
SESSION_TOKEN = "iss_session_token_of_the_test_user"
SESSION_PRINCIPAL = tenancy_pb2.Principal(kind=principal.CUSTOMER, customer_id="c-1", key_id="s-1", user_id="u-1",
                                          role=tenancy_pb2.ROLE_DEVELOPER)
PASSWORD = "the test user's password"
PRINCIPALS = {
    ADMIN_KEY: tenancy_pb2.Principal(kind=principal.ADMIN, key_id="k-admin"),
    CUSTOMER_KEY: tenancy_pb2.Principal(kind=principal.CUSTOMER, customer_id="c-1", key_id="k-cust"),
}
PACKAGE = "innosystem.tenancy.v1"
SAMPLE_SERVICE = f"{PACKAGE}.GatewayTestService"
TENANCY_SERVICE = tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name
DOMAIN = "tenancy.innosystem"

FD = descriptor_pb2.FieldDescriptorProto
_WELL_KNOWN_FILES = (timestamp_pb2, field_mask_pb2, duration_pb2, struct_pb2, wrappers_pb2, empty_pb2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _field(name: str, number: int, kind: int, *, type_name: str = "", repeated: bool = False,
           behavior: tuple[int, ...] = (), oneof: int | None = None) -> FD:
    f = FD(name=name, number=number, type=kind,
           label=FD.LABEL_REPEATED if repeated else FD.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    f.options.Extensions[field_behavior_pb2.field_behavior].extend(behavior)
    return f


def _rule(**kw: Any) -> http_pb2.HttpRule:
    extra = kw.pop("additional", [])
    rule = http_pb2.HttpRule(**kw)
    rule.additional_bindings.extend(extra)
    return rule


def _sample_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="innosystem/tenancy/v1/gateway_test.proto", package=PACKAGE, syntax="proto3",
        dependency=["google/api/annotations.proto", "google/api/field_behavior.proto",
                    *(m.DESCRIPTOR.name for m in _WELL_KNOWN_FILES)],
    )
    f.enum_type.add(name="Color").value.extend([
        descriptor_pb2.EnumValueDescriptorProto(name="COLOR_UNSPECIFIED", number=0),
        descriptor_pb2.EnumValueDescriptorProto(name="COLOR_RED", number=1),
        descriptor_pb2.EnumValueDescriptorProto(name="COLOR_BLUE", number=2),
    ])
    inner = f.message_type.add(name="Inner")
    inner.field.extend([
        _field("note", 1, FD.TYPE_STRING),
        _field("level", 2, FD.TYPE_INT32),
        _field("child", 3, FD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Inner"),
    ])
    sample = f.message_type.add(name="Sample")
    entry = sample.nested_type.add(name="CountsEntry")
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, FD.TYPE_STRING), _field("value", 2, FD.TYPE_INT32)])
    named = sample.nested_type.add(name="NamedEntry")
    named.options.map_entry = True
    named.field.extend([_field("key", 1, FD.TYPE_STRING),
                        _field("value", 2, FD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Inner")])
    sample.oneof_decl.add(name="choice")
    required, output_only = (field_behavior_pb2.REQUIRED,), (field_behavior_pb2.OUTPUT_ONLY,)
    sample.field.extend([
        _field("id", 1, FD.TYPE_STRING, behavior=required),
        _field("count", 2, FD.TYPE_INT32),
        _field("big", 3, FD.TYPE_INT64),
        _field("small", 4, FD.TYPE_UINT32),
        _field("ratio", 5, FD.TYPE_DOUBLE),
        _field("ratio32", 6, FD.TYPE_FLOAT),
        _field("flag", 7, FD.TYPE_BOOL),
        _field("blob", 8, FD.TYPE_BYTES),
        _field("color", 9, FD.TYPE_ENUM, type_name=f".{PACKAGE}.Color"),
        _field("tags", 10, FD.TYPE_STRING, repeated=True),
        _field("numbers", 11, FD.TYPE_INT32, repeated=True),
        _field("inner", 12, FD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Inner"),
        _field("inners", 13, FD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Inner", repeated=True),
        _field("counts", 14, FD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Sample.CountsEntry", repeated=True),
        _field("when", 15, FD.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
        _field("mask", 16, FD.TYPE_MESSAGE, type_name=".google.protobuf.FieldMask"),
        _field("wait", 17, FD.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
        _field("extra", 18, FD.TYPE_MESSAGE, type_name=".google.protobuf.Struct"),
        _field("maybe", 19, FD.TYPE_MESSAGE, type_name=".google.protobuf.Int32Value"),
        _field("output", 20, FD.TYPE_STRING, behavior=output_only),
        _field("left", 21, FD.TYPE_STRING, oneof=0),
        _field("right", 22, FD.TYPE_STRING, oneof=0),
        _field("named", 23, FD.TYPE_MESSAGE, type_name=f".{PACKAGE}.Sample.NamedEntry", repeated=True),
    ])
    service = f.service.add(name="GatewayTestService")
    sample_type = f".{PACKAGE}.Sample"
    methods = {
        "Echo": _rule(post="/v1/samples/{id}:echo", body="*", additional=[
            _rule(get="/v1/samples/{id}"), _rule(put="/v1/samples/{id}", body="inner")]),
        "Special": _rule(get="/v1/samples/special"),
        "Note": _rule(get="/v1/notes/{inner.note=**}"),
        "InnerOnly": _rule(get="/v1/samples/{id}/inner", response_body="inner"),
        "Watch": _rule(get="/v1/samples/{id}:watch"),
    }
    for name, rule in methods.items():
        method = service.method.add(name=name, input_type=sample_type, output_type=sample_type,
                                    server_streaming=name == "Watch")
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    # Comments, as protoc records them, for the OpenAPI descriptions.
    info = f.source_code_info
    info.location.add(path=[4, 1], leading_comments=" A sample of every field kind.\n")
    info.location.add(path=[4, 1, 2, 2], leading_comments=" A 64-bit count.\n")
    info.location.add(path=[5, 0, 2, 1], leading_comments=" Like a tomato.\n")
    info.location.add(path=[6, 0], leading_comments=" Exercises the gateway.\n")
    info.location.add(path=[6, 0, 2, 4], leading_comments=" Streams the sample back.\n")
    return f


SAMPLE_FILE = _sample_file()


def with_sample(descriptor_set: bytes) -> bytes:
    """The descriptor set plus SAMPLE_FILE and any well-known file it needs that is missing."""
    files = parse_descriptor_set(descriptor_set)
    have = {f.name for f in files.file}
    for module in _WELL_KNOWN_FILES:
        if module.DESCRIPTOR.name not in have:
            proto = files.file.add()
            module.DESCRIPTOR.CopyToProto(proto)
    files.file.append(SAMPLE_FILE)
    return files.SerializeToString()


@dataclass
class Call:
    method: str
    request: Message
    principal: tenancy_pb2.Principal | None
    metadata: dict[str, str]


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    # Set when a streaming call ends because the client (the gateway) cancelled it.
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Each Watch call waits for this before it ends.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _arrivals: dict[str, asyncio.Event] = field(default_factory=dict)

    def arrived(self, method: str) -> asyncio.Event:
        """Set once `method` has been called."""
        return self._arrivals.setdefault(method, asyncio.Event())

    def record(self, method: str, request: Message, context: grpc.aio.ServicerContext,
               service: str = TENANCY_SERVICE) -> Call:
        metadata = [(k, v) for k, v in context.invocation_metadata() or ()]
        # verified as the real services do: for the method being served (a header signed for
        # another method fails the call, as it would upstream)
        call = Call(method, request, principal.verify(metadata, SECRET, f"/{service}/{method}"),
                    {k: v for k, v in metadata if isinstance(v, str)})
        self.calls.append(call)
        self.arrived(method).set()
        return call

    def named(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


class TenancyDouble(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder

    async def Authenticate(self, request: Any, context: Any) -> tenancy_pb2.Principal:
        self.rec.record("Authenticate", request, context)
        if request.session_token:
            if request.session_token != SESSION_TOKEN:
                await abort(context, Unauthenticated("session ended", reason="SESSION_INVALID"), DOMAIN)
            return SESSION_PRINCIPAL
        found = PRINCIPALS.get(request.api_key)
        if found is None:
            await abort(context, Unauthenticated("unknown API key", reason="API_KEY_INVALID"), DOMAIN)
        return found

    async def GetCustomer(self, request: Any, context: Any) -> tenancy_pb2.Customer:
        self.rec.record("GetCustomer", request, context)
        cid = request.customer_id
        if cid == "missing":
            await abort(context, NotFound("customer not found", reason="CUSTOMER_NOT_FOUND"), DOMAIN)
        if cid == "boom":
            raise RuntimeError("secret internal detail")
        if cid.startswith("slow-"):
            await asyncio.sleep(float(cid.removeprefix("slow-")))
        return tenancy_pb2.Customer(id=cid, name=f"Customer {cid}", email="c@example.com", active=False)

    async def ListCustomers(self, request: Any, context: Any) -> tenancy_pb2.ListCustomersResponse:
        self.rec.record("ListCustomers", request, context)
        return tenancy_pb2.ListCustomersResponse(customers=[tenancy_pb2.Customer(id="c-1")], next_page_token="")

    async def CreateCustomer(self, request: Any, context: Any) -> tenancy_pb2.CreateCustomerResponse:
        self.rec.record("CreateCustomer", request, context)
        customer = tenancy_pb2.Customer()
        customer.CopyFrom(request.customer)
        customer.id = "c-new"
        return tenancy_pb2.CreateCustomerResponse(customer=customer, api_key="isk_new")

    async def UpdateCustomer(self, request: Any, context: Any) -> tenancy_pb2.Customer:
        self.rec.record("UpdateCustomer", request, context)
        customer = tenancy_pb2.Customer()
        customer.CopyFrom(request.customer)
        customer.id = request.customer_id
        return customer

    async def DeleteCustomer(self, request: Any, context: Any) -> empty_pb2.Empty:
        self.rec.record("DeleteCustomer", request, context)
        if not request.force:
            await abort(context, FailedPrecondition(
                "the customer has 2 projects", reason="CUSTOMER_HAS_PROJECTS", metadata={"projects": "2"},
                violations=[("force", "set force=true to delete the projects too")]), DOMAIN)
        return empty_pb2.Empty()

    async def RotateCustomerApiKey(self, request: Any, context: Any) -> tenancy_pb2.RotateApiKeyResponse:
        self.rec.record("RotateCustomerApiKey", request, context)
        return tenancy_pb2.RotateApiKeyResponse(api_key=f"isk_rotated_{request.customer_id}")

    async def CreateSession(self, request: Any, context: Any) -> tenancy_pb2.SessionResponse:
        self.rec.record("CreateSession", request, context)
        if request.password != PASSWORD:
            await abort(context, Unauthenticated("wrong", reason="INVALID_CREDENTIALS"), DOMAIN)
        await context.send_initial_metadata(((sessions.SESSION_METADATA, SESSION_TOKEN),))
        return tenancy_pb2.SessionResponse(user=tenancy_pb2.User(user_id="u-1", email=request.email),
                                           csrf_token=sessions.csrf_token(SECRET, "s-1"))

    async def GetMe(self, request: Any, context: Any) -> tenancy_pb2.Me:
        call = self.rec.record("GetMe", request, context)
        if call.principal is None:
            await abort(context, Unauthenticated("this method needs an API key", reason="NO_CREDENTIALS"), DOMAIN)
        return tenancy_pb2.Me(principal=call.principal, display_name="someone")


def sample_handler(recorder: Recorder, descriptor_set: bytes) -> grpc.GenericRpcHandler:
    """The GatewayTestService double: echoes the request; Watch streams it back."""
    pool = build_pool(parse_descriptor_set(descriptor_set))
    sample: type[Message] = message_class(pool.FindMessageTypeByName(f"{PACKAGE}.Sample"))

    def unary(name: str) -> grpc.RpcMethodHandler:
        async def handler(request: Any, context: Any) -> Any:
            recorder.record(name, request, context, SAMPLE_SERVICE)
            return request
        return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=sample.FromString,
                                                   response_serializer=sample.SerializeToString)

    async def watch(request: Any, context: Any) -> AsyncIterator[Any]:
        """`id` scripts it: "fail-now" fails at once; "fail-later" after one message; otherwise
        it sends `count` messages and then waits for `release` (or the client to leave)."""
        recorder.record("Watch", request, context, SAMPLE_SERVICE)
        if request.id == "fail-now":
            await abort(context, NotFound("no such sample", reason="SAMPLE_NOT_FOUND"), DOMAIN)
        try:
            for i in range(max(request.count, 1)):
                yield sample(id=request.id, count=i)
            if request.id == "fail-later":
                await abort(context, FailedPrecondition("sample broke", reason="SAMPLE_BROKEN"), DOMAIN)
            await recorder.release.wait()
        except asyncio.CancelledError:
            recorder.stream_cancelled.set()
            raise

    handlers: dict[str, grpc.RpcMethodHandler] = {
        name: unary(name) for name in ("Echo", "Special", "Note", "InnerOnly")
    }
    handlers["Watch"] = grpc.unary_stream_rpc_method_handler(watch, request_deserializer=sample.FromString,
                                                             response_serializer=sample.SerializeToString)
    return grpc.method_handlers_generic_handler(SAMPLE_SERVICE, handlers)


async def start_upstream(recorder: Recorder, descriptor_set: bytes) -> tuple[grpc.aio.Server, int]:
    """A real grpc.aio server with the tenancy double, the sample service and health."""
    server = grpc.aio.server()
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(TenancyDouble(recorder), server)
    server.add_generic_rpc_handlers((sample_handler(recorder, descriptor_set),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
