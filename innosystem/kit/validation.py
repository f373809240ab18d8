"""Generic request checks driven by the protos' `google.api.field_behavior` annotations.

The server runs `check_required` on every unary request before the handler, so both gRPC
callers and the gateway get the same INVALID_ARGUMENT naming the missing field, and no
servicer repeats it. Services validate meaning (ranges, formats) themselves.
"""

from __future__ import annotations

import uuid
from functools import cache

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

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
