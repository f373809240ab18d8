"""Generic request checks driven by the protos' `google.api.field_behavior` annotations.

The server runs `check_required` on every unary request before the handler, so both gRPC
callers and the gateway get the same INVALID_ARGUMENT naming the missing field, and no
servicer repeats it. Services validate meaning (ranges, formats) themselves.

`check_storable` refuses what PostgreSQL cannot store (a NUL character in any string, a JSON
number that is not finite) before it reaches a statement: such a value otherwise fails the whole
transaction it lands in, and so every request that shares a group commit with it.
"""

from __future__ import annotations

import math
import uuid
from functools import cache
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import ListValue, Struct, Value

from innosystem.kit.errors import InvalidArgument, NotFound

_REQUIRED = field_behavior_pb2.FieldBehavior.REQUIRED


@cache
def _required_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    out = []
    for field in descriptor.fields:
        behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        if _REQUIRED in behaviors:
            out.append(field)
    return tuple(out)


def _json_name(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _missing(message: Message, prefix: str, recurse: bool) -> list[str]:
    missing: list[str] = []
    for field in _required_fields(message.DESCRIPTOR):
        path = f"{prefix}{field.name}"
        if field.is_repeated:
            present = len(getattr(message, field.name)) > 0
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            present = message.HasField(field.name)
        else:
            present = bool(getattr(message, field.name))
        if not present:
            missing.append(path)
        elif recurse and field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            missing += _missing(getattr(message, field.name), path + ".", recurse)
    return missing


def check_required(message: Message) -> None:
    """INVALID_ARGUMENT listing every REQUIRED field left empty.

    Nested REQUIRED fields count too (a create's resource), except in a request that has an
    `update_mask`: there the resource carries only the fields being changed.
    """
    recurse = "update_mask" not in message.DESCRIPTOR.fields_by_name
    missing = _missing(message, "", recurse)
    if missing:
        names = ", ".join(_json_name(m) for m in missing)
        raise InvalidArgument(
            f"missing required field(s): {names}", reason="REQUIRED_FIELD_MISSING",
            violations=[(m, "required field is missing") for m in missing],
        )


def parse_uuid(value: str, field: str) -> uuid.UUID:
    """A UUID from a request field, or INVALID_ARGUMENT naming the field."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(f"{field} must be a UUID, got {value!r}", field=field, reason="INVALID_ID") from None


def id_or_not_found(value: str, field: str, what: str) -> uuid.UUID:
    """The id of something a caller asks for: a malformed one is simply not found (no id format leaks)."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"{what.replace('_', ' ')} {value!r} not found", reason=f"{what.upper()}_NOT_FOUND",
                       metadata={field: value}) from None


MAX_REQUEST_ID = 200  # the idempotency tables' column width
NUL = "\x00"
INVALID_CHARACTER = "INVALID_CHARACTER"


def _printable(key: str) -> str:
    return key.replace(NUL, "\\u0000")


def _nul(field: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: contains a NUL character (\\u0000), which cannot be stored", field=field,
                           reason=INVALID_CHARACTER)


def check_text(value: str, field: str) -> str:
    """`value`, or INVALID_ARGUMENT (INVALID_CHARACTER) naming `field` if PostgreSQL cannot store it."""
    if NUL in value:
        raise _nul(field)
    return value


def check_request_id(value: str, field: str = "request_id") -> str:
    """An idempotency key: at most 200 characters (what the tables hold) and storable."""
    if len(value) > MAX_REQUEST_ID:
        raise InvalidArgument(f"{field}: at most {MAX_REQUEST_ID} characters, got {len(value)}", field=field,
                              reason="INVALID_REQUEST_ID")
    return check_text(value, field)


def check_json(value: Any, field: str) -> None:
    """A plain JSON value (dicts, lists, strings, numbers, …): every key and string storable, every
    number finite (jsonb has no NaN or Infinity). The error names the path, e.g. `payload.card.number`
    or `payload.items[2]`."""
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{field}: {value} is not a JSON number", field=field, reason="INVALID_NUMBER")
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{_printable(str(key))}"
            if NUL in str(key):
                raise _nul(path)
            check_json(item, path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, f"{field}[{i}]")


def _check_value(value: Value, field: str) -> None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        check_text(value.string_value, field)
    elif kind == "number_value":
        check_json(value.number_value, field)
    elif kind == "struct_value":
        _check_struct(value.struct_value, field)
    elif kind == "list_value":
        _check_list(value.list_value, field)


def _check_struct(struct: Struct, field: str) -> None:
    for key, item in struct.fields.items():
        path = f"{field}.{_printable(key)}"
        if NUL in key:
            raise _nul(path)
        _check_value(item, path)


def _check_list(values: ListValue, field: str) -> None:
    for i, item in enumerate(values.values):
        _check_value(item, f"{field}[{i}]")


def check_storable(message: Message, prefix: str = "", *, converted: FieldDescriptor | None = None) -> None:
    """Every string of a request storable, at any depth: nested and repeated messages, map keys and
    values, and JSON (`Struct`/`Value`) with its keys, named by path (`payload.x`,
    `requests[3].request_id`, `trace_context[k]`). Only set fields are visited.

    A message that holds no JSON and whose encoding has no zero byte is storable as it is (a NUL
    in any string would be a zero byte in its UTF-8): one C call instead of a walk of its fields,
    for the hot path's small messages (billing's holds). Otherwise the walk finds the field.

    `converted`: a JSON field left to `check_converted`, wherever it occurs: the caller converts
    it to JSON text anyway (a batch's payloads), and searching that text costs less than walking
    the Struct."""
    if not _holds_json(message.DESCRIPTOR) and b"\x00" not in message.SerializeToString():
        return
    _check_fields(message, prefix, converted)


def check_converted(value: Struct, text: bytes | None, field: str) -> None:
    """A Struct that `check_storable` left to its caller (`converted`), once converted to JSON text
    (`kit.protos.struct_dict`, which refuses a number that is not finite, then `json_dumps`): a NUL
    is escaped there as \\u0000, so text without that is storable; text with it (a NUL, or a
    backslash before "u0000") is walked to name the field or let it pass. `text` None: the
    conversion refused the value, and the walk names where."""
    if text is None or b"\\u0000" in text:
        _check_struct(value, field)


_JSON_TYPES = frozenset(t.DESCRIPTOR.full_name for t in (Struct, Value, ListValue))


@cache
def _holds_json(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a JSON value (whose numbers must be finite), at any depth."""
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in _JSON_TYPES:
            return True
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        todo += [f.message_type for f in d.fields if f.message_type is not None]
    return False


def _check_fields(message: Message, prefix: str, converted: FieldDescriptor | None = None) -> None:
    for field, value in message.ListFields():
        if field is converted:
            continue
        path = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for i, item in enumerate(value):
                    check_text(item, f"{path}[{i}]")
            else:
                check_text(value, path)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                value_type = entry.fields_by_name["value"].type
                for key, item in value.items():
                    at = f"{path}[{_printable(str(key))}]"
                    if isinstance(key, str) and NUL in key:
                        raise _nul(at)
                    if value_type == FieldDescriptor.TYPE_STRING:
                        check_text(item, at)
                    elif value_type == FieldDescriptor.TYPE_MESSAGE:
                        _check_message(item, at, converted)
            elif field.is_repeated:
                for i, item in enumerate(value):
                    _check_message(item, f"{path}[{i}]", converted)
            else:
                _check_message(value, path, converted)


def _check_message(message: Message, path: str, converted: FieldDescriptor | None = None) -> None:
    if isinstance(message, Struct):
        _check_struct(message, path)
    elif isinstance(message, Value):
        _check_value(message, path)
    elif isinstance(message, ListValue):
        _check_list(message, path)
    else:
        _check_fields(message, path + ".", converted)
