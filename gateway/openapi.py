"""The OpenAPI 3.1 document of the HTTP API, from the same descriptor set the gateway serves.

Output is deterministic (sorted keys, declaration order in lists) because it is committed as
docs/openapi.json and `scripts/protos.py --check` compares it. Schemas follow the proto3 JSON
mapping the gateway speaks: lowerCamelCase names, 64-bit integers as strings, Timestamp as an
RFC 3339 string, enums by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from google.api import field_behavior_pb2, field_info_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.descriptors import build_pool, parse_descriptor_set
from gateway.fields import is_map, map_fields
from gateway.routes import Route, load_routes
from innosystem.common.v1 import schema_pb2
from innosystem.kit.roles import PUBLIC_METHODS

Schema = dict[str, Any]
FD = FieldDescriptor

STATUS = "google.rpc.Status"
ANY = "google.protobuf.Any"
SECURITY_SCHEME = "bearerAuth"
# Services that check every string of a request for what PostgreSQL cannot store (a NUL character,
# kit.validation.check_storable): their messages' strings say so.
_NUL_FREE = ("innosystem.jobs.v1.",)
_NO_NUL = "^[^\u0000]*$"
_MAX_QUERY_DEPTH = 3
UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# The error answers every operation may give (grpc-gateway's table), each a google.rpc.Status.
_ERRORS = {
    "400": "The request is not valid (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE); the ErrorInfo reason "
           "and BadRequest field violations say what to fix.",
    "401": "No credentials, a malformed Authorization header, or an unknown, revoked or inactive key.",
    "403": "The caller sees the resource but may not do this.",
    "404": "No such resource, or not the caller's (ids do not leak).",
    "409": "A concurrent change won (ABORTED) or the resource already exists.",
    "429": "A rate limit or a quota: see Retry-After and the ErrorInfo metadata.",
    "500": "An internal error; its details are in the server log under the request id.",
    "503": "A service is unavailable; retry later.",
}

# proto3 JSON writes 64-bit integers as strings and reads either a string or a number.
_INT64: Schema = {"type": ["string", "integer"], "format": "int64", "pattern": r"^-?[0-9]{1,18}$",
                  "minimum": -(2**63), "maximum": 2**63 - 1}
_UINT64: Schema = {"type": ["string", "integer"], "format": "uint64", "pattern": r"^[0-9]{1,19}$", "minimum": 0,
                   "maximum": 2**64 - 1}
_SCALARS: dict[int, Schema] = {
    FD.TYPE_INT32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    FD.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_INT64: _INT64,
    FD.TYPE_SINT64: _INT64,
    FD.TYPE_SFIXED64: _INT64,
    FD.TYPE_UINT64: _UINT64,
    FD.TYPE_FIXED64: _UINT64,
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}


def _nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    return {**schema, "type": [*kind, "null"] if isinstance(kind, list) else [kind, "null"]}


# Well-known types have a JSON form of their own; they are inlined, not components.
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    # JSON values, but no NUL character in a key or a string at any depth: PostgreSQL cannot store
    # one, so the services refuse it (INVALID_CHARACTER).
    "google.protobuf.Struct": {"type": "object", "propertyNames": {"pattern": "^[^\u0000]*$"},
                               "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"}},
    "google.protobuf.Value": {"$ref": "#/components/schemas/google.protobuf.Value"},
    "google.protobuf.ListValue": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Value"}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.DoubleValue": _nullable(_SCALARS[FD.TYPE_DOUBLE]),
    "google.protobuf.FloatValue": _nullable(_SCALARS[FD.TYPE_FLOAT]),
    "google.protobuf.Int64Value": _nullable(_SCALARS[FD.TYPE_INT64]),
    "google.protobuf.UInt64Value": _nullable(_SCALARS[FD.TYPE_UINT64]),
    "google.protobuf.Int32Value": _nullable(_SCALARS[FD.TYPE_INT32]),
    "google.protobuf.UInt32Value": _nullable(_SCALARS[FD.TYPE_UINT32]),
    "google.protobuf.BoolValue": _nullable(_SCALARS[FD.TYPE_BOOL]),
    "google.protobuf.StringValue": _nullable(_SCALARS[FD.TYPE_STRING]),
    "google.protobuf.BytesValue": _nullable(_SCALARS[FD.TYPE_BYTES]),
}

# The error body of every operation (google/rpc/status.proto), written out so the document
# does not depend on that file being in the descriptor set.
_FIXED_COMPONENTS: dict[str, Schema] = {
    STATUS: {
        "type": "object",
        "description": "An error: a gRPC status code, a developer-facing message, and details such as "
                       "google.rpc.ErrorInfo (reason, domain, metadata) and google.rpc.BadRequest "
                       "(fieldViolations).",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "The google.rpc.Code value."},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"$ref": f"#/components/schemas/{ANY}"}},
        },
        "required": ["code", "message", "details"],
    },
    "google.protobuf.Value": {
        "description": "Any JSON value without a NUL character in a string or an object key.",
        "anyOf": [
            {"type": ["null", "boolean", "number"]},
            {"type": "string", "pattern": "^[^\u0000]*$"},
            {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Value"}},
            {"type": "object", "propertyNames": {"pattern": "^[^\u0000]*$"},
             "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"}},
        ],
    },
    ANY: {
        "type": "object",
        "description": "A message of the type named by @type, with that type's fields inline.",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}


def render_openapi(descriptor_set_bytes: bytes) -> str:
    files = parse_descriptor_set(descriptor_set_bytes)
    pool = build_pool(files)
    document = _Builder(files).build(load_routes(files, pool))
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def ref(full_name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{full_name}"}


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


class _Builder:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.comments = dict(_comments(files))
        self.schemas: dict[str, Schema] = dict(_FIXED_COMPONENTS)
        self._pending: list[Descriptor | EnumDescriptor] = []

    def build(self, routes: list[Route]) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        tags: dict[str, str] = {}
        seen: dict[str, int] = {}
        for route in routes:
            rpc = route.rpc
            tags[rpc.service] = self.comments.get(rpc.service, "")
            n = seen[rpc.full_name] = seen.get(rpc.full_name, -1) + 1
            short = rpc.service.rsplit(".", 1)[-1]
            operation_id = f"{short}_{rpc.name}" + (f"_{n}" if n else "")
            item = paths.setdefault(route.template.openapi_path(), {})
            # Tags are full service names, so a reader sees the package (the bounded context).
            item[route.http_method.lower()] = self._operation(route, operation_id, rpc.service)
        self._drain()
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "InnoSystem API",
                "version": "v1",
                "description": "The REST gateway of InnoSystem: every method is a gRPC method transcoded "
                               "from its google.api.http rule. Bodies are proto3 JSON (lowerCamelCase "
                               "names; 64-bit integers as strings). Errors are google.rpc.Status JSON.",
            },
            "tags": [{"name": n, "description": d} if d else {"name": n} for n, d in sorted(tags.items())],
            "security": [{SECURITY_SCHEME: []}],
            "paths": paths,
            "components": {
                "schemas": self.schemas,
                "securitySchemes": {SECURITY_SCHEME: {
                    "type": "http", "scheme": "bearer", "description": "An InnoSystem API key (isk_…).",
                }},
            },
        }

    # --- operations ----------------------------------------------------------------------------

    def _operation(self, route: Route, operation_id: str, tag: str) -> dict[str, Any]:
        rpc = route.rpc
        operation: dict[str, Any] = {"operationId": operation_id, "tags": [tag]}
        if description := self.comments.get(rpc.full_name):
            operation["description"] = description
        parameters = self._path_parameters(route) + self._query_parameters(route)
        if parameters:
            operation["parameters"] = parameters
        if route.binding.body:
            operation["requestBody"] = self._request_body(route)
        out = self._schema_of_field(route.response_field) if route.response_field else self._message_ref(rpc.output)
        if rpc.server_streaming:
            success = {
                "description": f"A stream of Server-Sent Events: one `data:` event per {rpc.output.name} "
                               "(JSON). A failure after the stream has started arrives as an `event: error` "
                               "whose data is a google.rpc.Status.",
                "content": {"text/event-stream": {"schema": out}},
            }
        else:
            success = {"description": "OK", "content": {"application/json": {"schema": out}}}
        error = {"application/json": {"schema": ref(STATUS)}}
        operation["responses"] = {
            "200": success,
            **{code: {"description": text, "content": error} for code, text in _ERRORS.items()},
            "default": {"description": "Another error.", "content": error},
        }
        operation["responses"]["429"]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}}
        # Sign-in, invitations and password resets are for people without credentials yet.
        operation["security"] = [] if rpc.grpc_path in PUBLIC_METHODS else [{SECURITY_SCHEME: []}]
        return operation

    def _path_parameters(self, route: Route) -> list[Schema]:
        out = []
        for var, chain in zip(route.template.variables, route.path_fields, strict=True):
            leaf = chain[-1]
            schema = _annotated(leaf, self._schema_of_type(leaf))
            if leaf.type == FD.TYPE_STRING and (leaf.name.endswith("_id") or _is_uuid(leaf)):
                schema.update(format="uuid", pattern=UUID)  # every resource id in a path is a UUID
            parameter: Schema = {"name": var.name, "in": "path", "required": True, "schema": schema}
            description = self.comments.get(leaf.full_name, "")
            if var.multi_segment or route.template.segments[var.start] != "*":
                pattern = "/".join(route.template.segments[var.start:var.end])
                description = f"{description}\n\nPattern: `{pattern}`".strip()
            if description:
                parameter["description"] = description
            out.append(parameter)
        return out

    def _query_parameters(self, route: Route) -> list[Schema]:
        if route.binding.body == "*":
            return []
        bound = {tuple(f.full_name for f in chain) for chain in route.path_fields}
        skip_top = {route.body_field.full_name} if route.body_field else set()
        return list(self._query_fields(route.rpc.input, (), "", bound, skip_top))

    def _query_fields(self, message: Descriptor, prefix: tuple[str, ...], name_prefix: str,
                      bound: set[tuple[str, ...]], skip_top: set[str]) -> Iterator[Schema]:
        """Query parameters: the fields with a text form, nested ones by dotted name (a few levels
        deep, which also bounds recursive messages)."""
        for field in message.fields:
            chain = (*prefix, field.full_name)
            if chain in bound or (not prefix and field.full_name in skip_top):
                continue
            name = name_prefix + field.json_name
            nested = field.message_type
            if is_map(field):
                continue
            if nested is not None and nested.full_name not in _WELL_KNOWN:
                if field.is_repeated or len(chain) >= _MAX_QUERY_DEPTH:
                    continue
                yield from self._query_fields(nested, chain, name + ".", bound, skip_top)
                continue
            if nested is not None and nested.full_name in ("google.protobuf.Struct", "google.protobuf.Value",
                                                            "google.protobuf.ListValue", "google.protobuf.Empty"):
                continue  # no text form
            required = field_behavior_pb2.REQUIRED in _behaviors(field)
            parameter: Schema = {"name": name, "in": "query",
                                 "schema": _constrain(field, self._schema_of_field(field), required)}
            if field.name == "update_mask" and nested is not None and not prefix:
                parameter["schema"] = _update_mask(message, parameter["schema"])
            if field.is_repeated:
                parameter["description"] = "Repeat the parameter for each value."
            if description := self.comments.get(field.full_name):
                parameter["description"] = (description + "\n\n" + parameter.get("description", "")).strip()
            if required:
                parameter["required"] = True
            yield parameter

    def _request_body(self, route: Route) -> Schema:
        body_message = route.body_field.message_type if route.body_field is not None else None
        if body_message is not None and "update_mask" in route.rpc.input.fields_by_name \
                and body_message.full_name not in _WELL_KNOWN:
            # An update carries only the fields its mask names: the resource without `required`.
            schema = self._update_ref(body_message)
            required = True
        elif route.body_field is not None:
            schema = self._schema_of_field(route.body_field)
            if body_message is not None and _has_request_rules(body_message):
                schema = self._input_ref(body_message)
            required = field_behavior_pb2.REQUIRED in _behaviors(route.body_field)
        else:
            schema = self._message_ref(route.rpc.input)
            top = {chain[0].json_name for chain in route.path_fields if len(chain) == 1}
            if top and "$ref" in schema:
                # The path carries these fields: the body is the request without them.
                self._drain()
                full = self.schemas[route.rpc.input.full_name]
                properties = {k: v for k, v in full.get("properties", {}).items() if k not in top}
                schema = {"type": "object", "properties": properties, "additionalProperties": False}
                if required_fields := [r for r in full.get("required", []) if r not in top]:
                    schema["required"] = required_fields
            required = bool(schema.get("required") or ("$ref" in schema and self._required_of(route.rpc.input)))
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def _required_of(self, message: Descriptor) -> bool:
        self._drain()
        return bool(self.schemas.get(message.full_name, {}).get("required"))

    # --- schemas -------------------------------------------------------------------------------

    def _message_ref(self, message: Descriptor) -> Schema:
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: breaks recursion
            self._pending.append(message)
        return ref(message.full_name)

    def _enum_ref(self, enum: EnumDescriptor) -> Schema:
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = {}
            self._pending.append(enum)
        return ref(enum.full_name)

    def _drain(self) -> None:
        while self._pending:
            item = self._pending.pop()
            if isinstance(item, Descriptor):
                self.schemas[item.full_name] = self._message_schema(item)
            else:
                self.schemas[item.full_name] = self._enum_schema(item)

    def _update_ref(self, message: Descriptor) -> Schema:
        name = f"{message.full_name}Update"
        if name not in self.schemas:
            schema = self._message_schema(message, update=True)
            schema["description"] = (f"{message.name} in an update: only the fields the update mask names "
                                     "are read, and none is required.")
            self.schemas[name] = schema
        return ref(name)

    def _input_ref(self, message: Descriptor) -> Schema:
        """A resource as a create's body, where some fields take fewer values than it can show."""
        name = f"{message.full_name}Input"
        if name not in self.schemas:
            schema = self._message_schema(message, request=True)
            schema["description"] = (f"{message.name} as a request sends it: the values a client may set.\n\n"
                                     + self.comments.get(message.full_name, "")).strip()
            self.schemas[name] = schema
        return ref(name)

    def _message_schema(self, message: Descriptor, update: bool = False, request: bool = False) -> Schema:
        # Closed: the gateway refuses a field the message does not have (UNKNOWN_FIELD).
        schema: Schema = {"type": "object", "properties": {}, "additionalProperties": False}
        required = []
        for field in message.fields:
            schema["properties"][field.json_name] = self._schema_of_field(field, describe=True, update=update,
                                                                          request=request or update)
            if field_behavior_pb2.REQUIRED in _behaviors(field) and not update:
                required.append(field.json_name)
        if required:
            schema["required"] = required
        if description := self.comments.get(message.full_name):
            schema["description"] = description
        return schema

    def _enum_schema(self, enum: EnumDescriptor) -> Schema:
        # By name, or by number: proto3 JSON accepts both (and so does the gateway).
        schema: Schema = {"type": ["string", "integer"], "enum": [v.name for v in enum.values]
                          + [v.number for v in enum.values]}
        lines = [self.comments.get(enum.full_name, "")]
        lines += [f"- `{v.name}`: {c}" for v in enum.values
                  if (c := self.comments.get(f"{enum.full_name}.{v.name}", "").replace("\n", " "))]
        if description := "\n".join(line for line in lines if line).strip():
            schema["description"] = description
        return schema

    def _schema_of_field(self, field: FieldDescriptor, describe: bool = False, update: bool = False,
                         request: bool = False) -> Schema:
        if is_map(field):
            _, value = map_fields(field)
            schema: Schema = {"type": "object", "additionalProperties": self._schema_of_type(value)}
        elif field.is_repeated:
            schema = {"type": "array", "items": self._schema_of_type(field)}
        else:
            schema = self._schema_of_type(field)
        if not describe:
            return schema
        behaviors = _behaviors(field)
        required = field_behavior_pb2.REQUIRED in behaviors and not update
        if update and behaviors & {field_behavior_pb2.IMMUTABLE, field_behavior_pb2.OUTPUT_ONLY}:
            pass  # an update ignores it unless its mask names it (then it is refused): any value of its type
        else:
            schema = _constrain(field, schema, required, request)
            if field.type == FD.TYPE_STRING and field.full_name.startswith(_NUL_FREE):
                target = schema.setdefault("items", {}) if field.is_repeated else schema
                target.setdefault("pattern", _NO_NUL)
        if update:
            schema = _unset_allowed(field, schema)
        if not required:
            schema = _nullable_field(schema)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema["writeOnly"] = True
        if field.GetOptions().deprecated:
            schema["deprecated"] = True
        if description := self.comments.get(field.full_name):
            schema["description"] = description
        return schema

    def _schema_of_type(self, field: FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self._message_ref(field.message_type)
        if field.enum_type is not None:
            return self._enum_ref(field.enum_type)
        return dict(_SCALARS[field.type])


def _update_mask(request: Descriptor, schema: Schema) -> Schema:
    """An update request's mask names fields of the resource it carries that a client may set."""
    resources = [f.message_type for f in request.fields if f.message_type is not None
                 and f.message_type.full_name not in _WELL_KNOWN]
    if len(resources) != 1:
        return schema
    fixed = {field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IMMUTABLE}
    names = sorted({n for f in resources[0].fields if not fixed & _behaviors(f)
                    for n in (f.json_name, f.name)})
    one = "(" + "|".join(names) + ")"
    return {**schema, "pattern": f"^$|^{one}(,{one})*$"}


def _unset_allowed(field: FieldDescriptor, schema: Schema) -> Schema:
    """In an update body an empty string is "not set" (proto3 cannot tell them apart), so with an
    empty mask it changes nothing and is accepted whatever the field's rules."""
    if field.type != FD.TYPE_STRING or field.is_repeated or schema.get("type") not in ("string", ["string", "null"]):
        return schema
    schema = dict(schema)
    schema.pop("minLength", None)
    if pattern := schema.get("pattern"):
        schema["pattern"] = pattern if pattern.startswith("^$|") else f"^$|{pattern}"
    return schema


def _is_uuid(field: FieldDescriptor) -> bool:
    info = field.GetOptions().Extensions[field_info_pb2.field_info]
    return bool(info.format == field_info_pb2.FieldInfo.Format.UUID4)


def _constrain(field: FieldDescriptor, schema: Schema, required: bool, request: bool = True) -> Schema:
    """The type's schema plus what the server enforces for every field alike: a REQUIRED field
    must not be its default (empty, zero, false, UNSPECIFIED: proto3 cannot tell those from
    missing), a UUID4 field (google.api.field_info) is a UUID or, when optional, empty, and a page
    size is not negative (larger than the maximum is clamped, AIP-158)."""
    schema = _annotated(field, dict(schema), request, required)
    if field.is_repeated:
        if required:
            schema.setdefault("minItems", 1)
        if field.enum_type is not None and "enum" not in schema.get("items", {}):
            zero = field.enum_type.values_by_number[0]  # UNSPECIFIED is no value in a list either
            schema["items"] = {"allOf": [schema["items"]], "not": {"enum": [zero.name, 0]}}
        return schema
    if field.type == FD.TYPE_STRING and _is_uuid(field):
        schema.update(format="uuid", pattern=UUID) if required else schema.update(pattern=f"^$|{UUID}")
        return schema
    if field.name == "page_size" and schema.get("type") == "integer":
        schema["minimum"] = 0
    if field.name == "page_token" and schema.get("type") == "string":
        schema.update(format="page-token", maxLength=512)  # opaque: "" or a nextPageToken the list returned
    if field.name == "request_id" and schema.get("type") == "string":
        schema["format"] = "request-id"  # an idempotency key: one per logical request, reused only to repeat it
    if not required or field.message_type is not None:
        return schema
    if field.enum_type is not None:
        zero = field.enum_type.values_by_number[0]
        return {"allOf": [schema], "not": {"enum": [zero.name, 0]}}
    if field.type == FD.TYPE_STRING:
        schema["minLength"] = max(1, schema.get("minLength", 1))
    elif field.type == FD.TYPE_BOOL:
        schema["const"] = True
    elif schema.get("format") in ("int64", "uint64"):  # neither "0" (any spelling) nor 0
        low, high = _bounds(field)
        low = 0 if low is None and schema["format"] == "uint64" else low
        schema.update(pattern=_int64_pattern(low, high, nonzero=True), **{"not": {"const": 0}})
    elif schema.get("type") in ("integer", "number"):
        schema["not"] = {"const": 0}
    return schema


def _int64_pattern(minimum: int | None, maximum: int | None, nonzero: bool = False) -> str:
    """A 64-bit integer's bounds for its string spelling, as far as a pattern can say them: the
    sign, zero or not, and fewer digits than the largest magnitude allowed (never more)."""
    if maximum is not None and 0 <= (minimum or 0) <= maximum < 10:  # a single digit: its range exactly
        return rf"^(?:[{minimum or 0}-{maximum}])$"
    largest = 10**18 if maximum is None else max(abs(maximum), abs(minimum or 0))
    digits = max(1, len(str(largest)) - 1)
    sign = "" if minimum is not None and minimum >= 0 else "-?"
    exact = f"|{sign}{largest}" if maximum is not None and str(largest) == "1" + "0" * digits else ""  # 10^n itself
    if nonzero or (minimum is not None and minimum >= 1):
        return rf"^(?:{sign}0*[1-9][0-9]{{0,{digits - 1}}}{exact})$"
    return rf"^(?:{sign}[0-9]{{1,{digits}}}{exact})$"


def _bounds(field: FieldDescriptor) -> tuple[int | None, int | None]:
    options = field.GetOptions()
    if not options.HasExtension(schema_pb2.schema):
        return None, None
    a = options.Extensions[schema_pb2.schema]
    return (a.minimum if a.HasField("minimum") else None), (a.maximum if a.HasField("maximum") else None)


def _has_request_rules(message: Descriptor) -> bool:
    return any(f.GetOptions().HasExtension(schema_pb2.schema) and f.GetOptions().Extensions[schema_pb2.schema].allowed
               for f in message.fields)


def _annotated(field: FieldDescriptor, schema: Schema, request: bool = True, required: bool = False) -> Schema:
    """The field's (innosystem.common.v1.schema) annotation as JSON Schema keywords; `allowed`
    holds for what a request sends (an optional field may also be left unset)."""
    options = field.GetOptions()
    if not options.HasExtension(schema_pb2.schema):
        return schema
    a = options.Extensions[schema_pb2.schema]
    target = schema.setdefault("items", {}) if field.is_repeated else schema
    for name, keyword in (("minimum", "minimum"), ("maximum", "maximum"), ("min_length", "minLength"),
                          ("max_length", "maxLength")):
        if a.HasField(name):  # type: ignore[arg-type]
            target[keyword] = getattr(a, name)
    if target.get("format") == "int64" and (a.HasField("minimum") or a.HasField("maximum")):
        target["pattern"] = _int64_pattern(*_bounds(field))
    if a.pattern:
        target["pattern"] = a.pattern
    if a.format == "https-url":  # the egress guard's first rule; the rest is checked at the call
        target.update(format="https-url", pattern=a.pattern or "^https://[^/?#@\\s]+(/[^\\s]*)?$")
    elif a.format == "currency":
        # An active ISO 4217 code (kit/currencies.py; the services refuse others as UNKNOWN_CURRENCY),
        # or empty where the field is optional. Named by a format, not listed as an enum of 158
        # values: a client validates it with its own ISO 4217 table.
        target.update(format="iso-4217", pattern="^$|^[A-Z]{3}$")
    elif a.format:
        target["format"] = a.format
    if field.is_repeated:
        for name, keyword in (("min_items", "minItems"), ("max_items", "maxItems")):
            if a.HasField(name):  # type: ignore[arg-type]
                schema[keyword] = getattr(a, name)
        for name, keyword in (("items_min_length", "minLength"), ("items_max_length", "maxLength")):
            if a.HasField(name):  # type: ignore[arg-type]
                target[keyword] = getattr(a, name)
        if a.items_pattern:
            target["pattern"] = a.items_pattern
        if a.items_enum:
            target["enum"] = list(a.items_enum)
    elif a.items_enum:  # a single string from a closed set
        schema["enum"] = list(a.items_enum)
    if a.allowed and field.enum_type is not None and request:
        values = field.enum_type.values_by_name
        names = [*a.allowed] if required else [field.enum_type.values_by_number[0].name, *a.allowed]
        return {"allOf": [schema], "enum": [*names, *(values[n].number for n in names)]}
    return schema


def _nullable_field(schema: Schema) -> Schema:
    """proto3 JSON reads `null` as "not set", so an optional field may be null."""
    if "enum" in schema and None not in schema["enum"]:
        schema = {**schema, "enum": [*schema["enum"], None]}
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _comments(files: descriptor_pb2.FileDescriptorSet) -> Iterator[tuple[str, str]]:
    """(full name, comment) for every element with a leading (or else trailing) comment."""
    for file in files.file:
        by_path = {tuple(loc.path): _clean(loc.leading_comments or loc.trailing_comments)
                   for loc in file.source_code_info.location}
        prefix = f"{file.package}." if file.package else ""
        for i, message in enumerate(file.message_type):
            yield from _message_comments(message, prefix + message.name, (4, i), by_path)
        for i, enum in enumerate(file.enum_type):
            yield from _enum_comments(enum, prefix + enum.name, (5, i), by_path)
        for i, service in enumerate(file.service):
            name = prefix + service.name
            yield name, by_path.get((6, i), "")
            for j, method in enumerate(service.method):
                yield f"{name}.{method.name}", by_path.get((6, i, 2, j), "")


def _message_comments(message: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...],
                      by_path: dict[tuple[int, ...], str]) -> Iterator[tuple[str, str]]:
    yield name, by_path.get(path, "")
    for i, field in enumerate(message.field):
        yield f"{name}.{field.name}", by_path.get((*path, 2, i), "")
    for i, nested in enumerate(message.nested_type):
        yield from _message_comments(nested, f"{name}.{nested.name}", (*path, 3, i), by_path)
    for i, enum in enumerate(message.enum_type):
        yield from _enum_comments(enum, f"{name}.{enum.name}", (*path, 4, i), by_path)


def _enum_comments(enum: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...],
                   by_path: dict[tuple[int, ...], str]) -> Iterator[tuple[str, str]]:
    yield name, by_path.get(path, "")
    for i, value in enumerate(enum.value):
        yield f"{name}.{value.name}", by_path.get((*path, 2, i), "")


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(lines).strip()
