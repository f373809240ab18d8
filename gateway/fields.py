"""Proto3 JSON values and query-string text into message fields, with errors naming the field.

The walk over ordinary messages is ours rather than `json_format.ParseDict`'s so that every
refusal says which field (`customer.active`, `tags[2]`) and why, in words a client can act
on; the well-known types' own JSON forms (Timestamp, Duration, Struct, ...) are still parsed
by `json_format`, one field at a time, so the error stays attached to that field.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from functools import cache
from typing import Any, cast

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

UNKNOWN_FIELD = "UNKNOWN_FIELD"
INVALID_FIELD_VALUE = "INVALID_FIELD_VALUE"
MAX_DEPTH = 64

FD = FieldDescriptor
_INT_BOUNDS: dict[int, tuple[str, int, int]] = {
    FD.TYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FD.TYPE_SINT32: ("int32", -(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: ("int32", -(2**31), 2**31 - 1),
    FD.TYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FD.TYPE_FIXED32: ("uint32", 0, 2**32 - 1),
    FD.TYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FD.TYPE_SINT64: ("int64", -(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: ("int64", -(2**63), 2**63 - 1),
    FD.TYPE_UINT64: ("uint64", 0, 2**64 - 1),
    FD.TYPE_FIXED64: ("uint64", 0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
_INTEGER = re.compile(r"-?\d+")
_DECIMAL = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPPER = re.compile(r"[A-Z]")

FIELD_MASK = "google.protobuf.FieldMask"
VALUE = "google.protobuf.Value"
_WRAPPERS = {
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
}
# Well-known types parsed by json_format, and what a client should send for each.
_WELL_KNOWN = {
    "google.protobuf.Timestamp": 'an RFC 3339 timestamp such as "2025-01-31T12:00:00Z"',
    "google.protobuf.Duration": 'a duration in seconds such as "1.5s"',
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.Value": "a JSON value",
    "google.protobuf.ListValue": "a JSON array",
    "google.protobuf.Any": 'an object with an "@type"',
    "google.protobuf.Empty": "an empty object",
    **{name: "a value of type " + name.rsplit(".", 1)[1].removesuffix("Value").lower() for name in _WRAPPERS},
}
_STRUCT = "google.protobuf.Struct"
# The deepest JSON object json_format makes a Struct of under MAX_DEPTH: it counts a message level
# for each Struct or ListValue and each Value holding one, so 32 levels of objects and arrays.
_STRUCT_NESTING = MAX_DEPTH // 2


def _nesting(value: object) -> int:
    """How many levels of objects and arrays `value` nests (0 for a scalar), counted no further
    than one past `_STRUCT_NESTING`."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > _STRUCT_NESTING:
            break
        todo.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


# Well-known types that have a one-string form, usable in a query parameter or path variable.
_TEXT_FORM = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


class FieldError(ValueError):
    """A value that does not fit its field. `field` is the path as the client wrote it."""

    def __init__(self, field: str, message: str, reason: str = INVALID_FIELD_VALUE) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason


@cache
def fields_by_key(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """Fields by lowerCamelCase JSON name and by original proto name (both are accepted)."""
    out = {f.name: f for f in descriptor.fields}
    out.update({f.json_name: f for f in descriptor.fields})
    return out


@cache  # asked of every field of every object a request holds
def is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def map_fields(field: FieldDescriptor) -> tuple[FieldDescriptor, FieldDescriptor]:
    """The key and value fields of a map field's entry message."""
    entry = field.message_type
    assert entry is not None, field.full_name
    return entry.fields_by_name["key"], entry.fields_by_name["value"]


# --- JSON ------------------------------------------------------------------------------------

def merge_object(message: Message, value: object, path: str, pool: descriptor_pool.DescriptorPool,
                 depth: int = 0) -> None:
    """Set `message`'s fields from a JSON object (`path` is where it sits, "" at the top)."""
    if depth > MAX_DEPTH:
        raise FieldError(path, f"{path}: nested more than {MAX_DEPTH} levels deep")
    if not isinstance(value, dict):
        where = path or "the request body"
        raise FieldError(path, f"{where}: expected a JSON object, got {_show(value)}")
    fields = fields_by_key(message.DESCRIPTOR)
    seen: dict[str, str] = {}
    oneofs: dict[str, str] = {}
    for key, item in value.items():
        at = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            raise FieldError(at, f'unknown field "{at}" ({message.DESCRIPTOR.full_name} has no field "{key}")',
                             UNKNOWN_FIELD)
        if field.name in seen:
            raise FieldError(at, f"{at}: given twice (as {seen[field.name]!r} and {key!r})")
        seen[field.name] = key
        if item is None and not _is_value(field):
            continue  # proto3 JSON: null means the default
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            if oneof.name in oneofs:
                raise FieldError(at, f"{at}: only one of {oneof.name} may be set, and {oneofs[oneof.name]!r} is")
            oneofs[oneof.name] = key
        set_json_field(message, field, item, at, pool, depth)


def set_json_field(message: Message, field: FieldDescriptor, value: object, path: str,
                   pool: descriptor_pool.DescriptorPool, depth: int = 0) -> None:
    if is_map(field):
        if not isinstance(value, dict):
            raise FieldError(path, f"{path}: expected a JSON object (a map), got {_show(value)}")
        target = getattr(message, field.name)
        key_field, value_field = map_fields(field)
        for k, v in value.items():
            at = f"{path}.{k}"
            key = text_scalar(key_field, k, at)
            if value_field.message_type is not None:
                _json_message(target[key], v, at, pool, depth)
            elif v is None:
                raise FieldError(at, f"{at}: null is not a valid map value")
            else:
                target[key] = json_scalar(value_field, v, at)
    elif field.is_repeated:
        if not isinstance(value, list):
            raise FieldError(path, f"{path}: expected a JSON array, got {_show(value)}")
        items = getattr(message, field.name)
        for i, item in enumerate(value):
            at = f"{path}[{i}]"
            if item is None and not _is_value(field):
                raise FieldError(at, f"{at}: null is not allowed in a list")
            if field.message_type is not None:
                _json_message(items.add(), item, at, pool, depth)
            else:
                items.append(json_scalar(field, item, at))
    elif field.message_type is not None:
        sub = getattr(message, field.name)
        sub.SetInParent()
        _json_message(sub, value, path, pool, depth)
    else:
        setattr(message, field.name, json_scalar(field, value, path))


def _json_message(sub: Message, value: object, path: str, pool: descriptor_pool.DescriptorPool,
                  depth: int) -> None:
    name = sub.DESCRIPTOR.full_name
    if name == FIELD_MASK:
        if not isinstance(value, str):
            raise FieldError(path, f'{path}: expected field paths as one string such as "name,email", '
                                   f"got {_show(value)}")
        sub.paths.extend(parse_field_mask(value, path))  # type: ignore[attr-defined]
    elif name == _STRUCT and isinstance(value, dict):
        # A JSON object as a Struct (a job's payload: every item of a batch submit passes here):
        # the message json_format makes, at under a third of its CPU, and as deep as it takes.
        if _nesting(value) > _STRUCT_NESTING:
            raise FieldError(path, f"{path}: nested more than {_STRUCT_NESTING} levels deep")
        sub.Clear()
        sub.update(value)  # type: ignore[attr-defined]
    elif name in _WELL_KNOWN:
        try:
            json_format.ParseDict(cast(Any, value), sub, descriptor_pool=pool, max_recursion_depth=MAX_DEPTH)
        except (json_format.ParseError, ValueError, TypeError, AttributeError, KeyError):
            raise FieldError(path, f"{path}: expected {_WELL_KNOWN[name]}, got {_show(value)}") from None
    else:
        merge_object(sub, value, path, pool, depth + 1)


def json_scalar(field: FieldDescriptor, value: object, path: str) -> object:
    kind = field.type
    if kind in _INT_BOUNDS:
        if isinstance(value, int) and not isinstance(value, bool):
            return _in_range(value, field, path)
        if isinstance(value, float) and value.is_integer():
            return _in_range(int(value), field, path)
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            return _in_range(int(value), field, path)
        raise FieldError(path, f"{path}: expected an integer ({_INT_BOUNDS[kind][0]}), got {_show(value)}")
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _float_in_range(float(value), field, path)
        if isinstance(value, str):
            return text_scalar(field, value, path)
        raise FieldError(path, f"{path}: expected a number, got {_show(value)}")
    if kind == FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise FieldError(path, f"{path}: expected true or false, got {_show(value)}")
    if kind == FD.TYPE_STRING:
        if isinstance(value, str):
            return value
        raise FieldError(path, f"{path}: expected a string, got {_show(value)}")
    if kind == FD.TYPE_BYTES:
        if isinstance(value, str):
            return _base64(value, path)
        raise FieldError(path, f"{path}: expected base64-encoded bytes as a string, got {_show(value)}")
    if kind == FD.TYPE_ENUM:
        if isinstance(value, int) and not isinstance(value, bool):
            return _enum_number(field, value, path)
        if isinstance(value, str):
            return _enum_name(field, value, path)
        raise FieldError(path, f"{path}: expected one of {_enum_names(field)}, got {_show(value)}")
    raise FieldError(path, f"{path}: fields of this type cannot be set from JSON")


# --- text (query parameters, path variables) -------------------------------------------------

def set_text_field(message: Message, field: FieldDescriptor, values: Sequence[str], path: str,
                   pool: descriptor_pool.DescriptorPool) -> None:
    """Set a field from query-string text; a list field takes the parameter repeated."""
    if is_map(field):
        raise FieldError(path, f"{path}: a map cannot be set from the query string; send it in the body")
    if field.is_repeated:
        items = getattr(message, field.name)
        for value in values:
            if field.message_type is not None:
                _text_message(items.add(), value, path, pool)
            else:
                items.append(text_scalar(field, value, path))
        return
    if len(values) > 1:
        raise FieldError(path, f"{path}: given {len(values)} times, but it is not a list")
    if field.message_type is not None:
        sub = getattr(message, field.name)
        sub.SetInParent()
        _text_message(sub, values[0], path, pool)
    else:
        setattr(message, field.name, text_scalar(field, values[0], path))


def _text_message(sub: Message, text: str, path: str, pool: descriptor_pool.DescriptorPool) -> None:
    name = sub.DESCRIPTOR.full_name
    if name == FIELD_MASK:
        sub.paths.extend(parse_field_mask(text, path))  # type: ignore[attr-defined]
    elif name in _TEXT_FORM:
        try:
            json_format.ParseDict(cast(Any, text), sub, descriptor_pool=pool)  # a string is what it takes
        except (json_format.ParseError, ValueError, TypeError, AttributeError):
            raise FieldError(path, f"{path}: expected {_WELL_KNOWN[name]}, got {_show(text)}") from None
    elif name in _WRAPPERS:
        inner = cast(FieldDescriptor, sub.DESCRIPTOR.fields_by_name["value"])
        sub.value = text_scalar(inner, text, path)  # type: ignore[attr-defined]
    else:
        raise FieldError(path, f"{path} is a message: set its fields as {path}.<field>, or send it in the body")


def text_scalar(field: FieldDescriptor, text: str, path: str) -> object:
    kind = field.type
    if kind in _INT_BOUNDS:
        if _INTEGER.fullmatch(text):
            return _in_range(int(text), field, path)
        raise FieldError(path, f"{path}: expected an integer ({_INT_BOUNDS[kind][0]}), got {_show(text)}")
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if text in ("NaN", "Infinity", "-Infinity") or _DECIMAL.fullmatch(text):
            return _float_in_range(float(text.replace("Infinity", "inf")), field, path)
        raise FieldError(path, f"{path}: expected a number, got {_show(text)}")
    if kind == FD.TYPE_BOOL:
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise FieldError(path, f"{path}: expected true or false, got {_show(text)}")
    if kind == FD.TYPE_STRING:
        return text
    if kind == FD.TYPE_BYTES:
        return _base64(text, path)
    if kind == FD.TYPE_ENUM:
        if _INTEGER.fullmatch(text):
            return _enum_number(field, int(text), path)
        return _enum_name(field, text, path)
    raise FieldError(path, f"{path}: fields of this type cannot be set from text")


def parse_field_mask(text: str, path: str) -> list[str]:
    """`updateMask=displayName,tags` → ["display_name", "tags"]; snake_case paths are kept."""
    paths = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(".")
        if not all(_IDENT.fullmatch(p) for p in parts):
            raise FieldError(path, f"{path}: {item!r} is not a field path")
        paths.append(".".join(p if "_" in p else _UPPER.sub(lambda m: "_" + m.group().lower(), p) for p in parts))
    return paths


# --- helpers -----------------------------------------------------------------------------------

@cache
def _is_value(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == VALUE


def _in_range(n: int, field: FieldDescriptor, path: str) -> int:
    kind, low, high = _INT_BOUNDS[field.type]
    if not low <= n <= high:
        raise FieldError(path, f"{path}: {n} is out of range for {kind}")
    return n


def _float_in_range(x: float, field: FieldDescriptor, path: str) -> float:
    if field.type == FD.TYPE_FLOAT and math.isfinite(x) and abs(x) > _FLOAT32_MAX:
        raise FieldError(path, f"{path}: {x} is out of range for float")
    return x


def _base64(text: str, path: str) -> bytes:
    standard = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(path, f"{path}: expected base64-encoded bytes") from None


def _enum(field: FieldDescriptor) -> EnumDescriptor:
    assert field.enum_type is not None, field.full_name
    return field.enum_type


def _enum_name(field: FieldDescriptor, name: str, path: str) -> int:
    value = _enum(field).values_by_name.get(name)
    if value is None:
        raise FieldError(path, f"{path}: {_show(name)} is not one of {_enum_names(field)}")
    return int(value.number)


def _enum_number(field: FieldDescriptor, number: int, path: str) -> int:
    if number not in _enum(field).values_by_number:
        raise FieldError(path, f"{path}: {number} is not one of {_enum_names(field)}")
    return number


def _enum_names(field: FieldDescriptor) -> str:
    enum = _enum(field)
    names = [v.name for v in enum.values]
    shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
    return f"{enum.name} ({shown})"


def _show(value: object) -> str:
    """A short, safe rendering of what the client sent, for an error message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"
