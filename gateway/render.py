"""Responses as proto3 JSON, printed from a plan made once per message type.

The answer is exactly what `json_format.MessageToDict(message, always_print_fields_with_no_presence=True)`
followed by `kit.protos.whole_numbers` gives (the same keys in the same order, the same values;
tests/unit/test_gateway_render.py compares the two over every message the gateway answers with),
at a fraction of its cost: json_format looks up each field's kind, its JSON name and whether it
is a map, a wrapper or a well-known type again for every field of every message, which made
printing a 1,000-job batch answer about 60 ms of the gateway's CPU. Here those decisions are made
once per message type. `Any` (rare: error details) is left to json_format.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from innosystem.kit.protos import whole_number, whole_numbers

_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}

Convert = Callable[[Any], Any]


def to_json(message: Message) -> Any:
    """`message` as Python JSON values (a dict for a message; a string, list … for some well-known types)."""
    return _message_converter(cast(Descriptor, message.DESCRIPTOR))(message)


def _double(value: float) -> Any:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    return whole_number(value)


def _float(value: float) -> Any:
    if math.isinf(value) or math.isnan(value):
        return _double(value)
    return whole_number(type_checkers.ToShortestFloat(value))


def _value(v: Message) -> Any:
    """google.protobuf.Value (an unset one prints as null, as json_format does)."""
    which = v.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    if which == "number_value":
        number = v.number_value  # type: ignore[attr-defined]
        if math.isinf(number) or math.isnan(number):
            raise ValueError("Fail to serialize Infinity or NaN for Value.number_value")
        return whole_number(number)
    if which == "struct_value":
        return _struct(v.struct_value)  # type: ignore[attr-defined]
    if which == "list_value":
        return _list(v.list_value)  # type: ignore[attr-defined]
    return getattr(v, which)


def _struct(s: Any) -> dict[str, Any]:
    fields = s.fields
    return {key: _value(fields[key]) for key in fields}


def _list(values: Any) -> list[Any]:
    return [_value(v) for v in values.values]


@functools.lru_cache(maxsize=4096)
def _rfc3339(seconds: int, nanos: int) -> str:
    return Timestamp(seconds=seconds, nanos=nanos).ToJsonString()


def _timestamp(m: Any) -> str:
    """A Timestamp's JSON string, remembered: a batch's jobs share their times (`ToJsonString` is
    Python, a few microseconds a call, and a 1,000-job answer had thousands)."""
    return _rfc3339(m.seconds, m.nanos)


_WELL_KNOWN: dict[str, Convert] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": lambda m: m.ToJsonString(),
    "google.protobuf.FieldMask": lambda m: m.ToJsonString(),
    "google.protobuf.Struct": _struct,
    "google.protobuf.Value": _value,
    "google.protobuf.ListValue": _list,
}
# By descriptor, not by name: the gateway's types live in a pool of their own (gateway/descriptors.py).
_CONVERTERS: dict[Descriptor, Convert] = {}


def _message_converter(descriptor: Descriptor) -> Convert:
    done = _CONVERTERS.get(descriptor)
    if done is not None:
        return done
    name = descriptor.full_name
    if name in _WELL_KNOWN:
        done = _WELL_KNOWN[name]
    elif name == "google.protobuf.Any":  # its type is looked up in the pool it comes from
        pool = descriptor.file.pool
        done = lambda m: whole_numbers(json_format.MessageToDict(  # noqa: E731
            m, always_print_fields_with_no_presence=True, descriptor_pool=pool))
    elif descriptor.file.name == "google/protobuf/wrappers.proto":
        inner = _scalar_converter(descriptor.fields_by_name["value"])
        done = lambda m: inner(m.value)  # noqa: E731
    else:
        done = _Plan(descriptor)
    _CONVERTERS[descriptor] = done
    return done


def _scalar_converter(field: FieldDescriptor) -> Convert:
    """One value of `field` (not a list, not a map)."""
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        assert field.message_type is not None
        return _message_converter(field.message_type)
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        if field.enum_type.full_name == "google.protobuf.NullValue":
            return lambda _: None
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda v: names.get(v, v)  # an unknown number of an open enum prints as the number
    if field.type == FieldDescriptor.TYPE_BYTES:
        return lambda v: base64.b64encode(v).decode()
    if kind in _INT64:
        return str
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return bool
    return _same


def _same(value: Any) -> Any:
    return value


def _is_map(field: FieldDescriptor) -> bool:
    t = field.message_type
    return t is not None and field.is_repeated and t.GetOptions().map_entry


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


# Lists whose messages differ in little but a few string fields, printed once per shape (`_Shapes`):
# a batch answer's just-submitted jobs differ in their ids and request ids alone.
_OWN_FIELDS: dict[str, tuple[str, ...]] = {"innosystem.jobs.v1.Job": ("id", "request_id")}


_SHAPES_TRIED = 16  # messages looked at before a list of all different ones is printed each


class _Shapes:
    """A list of messages of a type in `_OWN_FIELDS`, each printed as the first of its shape was,
    with its own values of those fields: their shape is the message's deterministic bytes without
    them (equal bytes, equal messages) and which of them are set (a set field prints in field
    order, an unset one among the defaults). A 1,000-job answer: 3.5 ms of the gateway's CPU,
    against 11.5 printing each. The shallow copies share their nested values, which nobody
    changes (the answer is serialized as it is)."""

    def __init__(self, descriptor: Descriptor, one: Convert) -> None:
        self.one = one
        fields = [descriptor.fields_by_name[n] for n in _OWN_FIELDS[descriptor.full_name]]
        # "" is their unset value: plain strings, not in a oneof, without presence
        assert all(f.type == FieldDescriptor.TYPE_STRING and not f.has_presence and not f.is_repeated
                   for f in fields), descriptor.full_name
        self.own = [(f.name, f.json_name) for f in fields]

    def __call__(self, values: Any) -> list[Any]:
        if len(values) < 2:
            return [self.one(v) for v in values]
        shapes: dict[tuple[bytes, tuple[bool, ...]], dict[str, Any]] = {}
        out: list[Any] = []
        for k, m in enumerate(values):
            if k == _SHAPES_TRIED and len(shapes) == k:  # no two alike so far (a page of a listing):
                out += [self.one(v) for v in values[k:]]  # printed each, not looked up in vain
                break
            own = [getattr(m, name) for name, _ in self.own]
            for name, _ in self.own:
                setattr(m, name, "")
            key = (m.SerializeToString(deterministic=True), tuple(map(bool, own)))
            for (name, _), value in zip(self.own, own, strict=True):
                setattr(m, name, value)
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = self.one(m)
                out.append(shape)
                continue
            js = dict(shape)
            for (_, json_name), value in zip(self.own, own, strict=True):
                if value:
                    js[json_name] = value
            out.append(js)
        return out


class _Plan:
    """A regular message type's fields as json_format prints them: the set fields in field-number
    order, then the unset fields without presence (at their default) in declaration order."""

    def __init__(self, descriptor: Descriptor) -> None:
        _CONVERTERS[descriptor] = self  # first: a type may contain itself
        # (proto name, JSON name, has presence, a floating-point scalar, the field's printer)
        self.fields: list[tuple[str, str, bool, bool, Convert]] = []
        for f in sorted(descriptor.fields, key=lambda f: f.number):
            real = not f.is_repeated and f.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)
            self.fields.append((f.name, f.json_name, f.has_presence, real, self._printer(f)))
        # Unset fields without presence print at their default, in declaration order: a scalar's
        # printed default, or the type of a new empty list or map.
        self.defaults: list[tuple[str, Any]] = []
        for f in descriptor.fields:
            if not f.has_presence:
                empty = dict if _is_map(f) else list if f.is_repeated else None
                self.defaults.append((f.json_name, empty or _scalar_converter(f)(f.default_value)))

    @staticmethod
    def _printer(f: FieldDescriptor) -> Convert:
        if _is_map(f):
            assert f.message_type is not None
            value = _scalar_converter(f.message_type.fields_by_name["value"])
            return lambda m: {_map_key(k): value(m[k]) for k in m}
        one = _scalar_converter(f)
        if f.is_repeated:
            if f.message_type is not None and f.message_type.full_name in _OWN_FIELDS:
                return _Shapes(f.message_type, one)
            return lambda values: [one(v) for v in values]
        return one

    def __call__(self, message: Any) -> dict[str, Any]:
        js: dict[str, Any] = {}
        unset: set[str] | None = None
        for name, json_name, presence, real, printer in self.fields:
            if presence:
                if message.HasField(name):
                    js[json_name] = printer(getattr(message, name))
                continue
            value = getattr(message, name)
            # Set: not at its default (for protobuf, -0.0 is not 0.0). A scalar at its default, an
            # empty list or map, is printed after the set ones.
            if value or (real and math.copysign(1.0, value) < 0):
                js[json_name] = printer(value)
            else:
                if unset is None:
                    unset = set()
                unset.add(json_name)
        if unset:
            for json_name, default in self.defaults:
                if json_name in unset:
                    js[json_name] = default() if default is dict or default is list else default
        return js
