"""The descriptor set the gateway is driven by: parsed once, into a pool of its own.

A private pool (not the process-wide default) means the gateway serves exactly what the
descriptor set says, including services whose generated Python code it never imports.
"""

from __future__ import annotations

from google.api import annotations_pb2, field_behavior_pb2  # noqa: F401  (register option extensions)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message


class DescriptorSetError(ValueError):
    """The descriptor set cannot be read or has a rule the gateway cannot serve."""


def parse_descriptor_set(data: bytes) -> descriptor_pb2.FileDescriptorSet:
    # The option extensions (google.api.http, field_behavior) are registered by the imports
    # above, so they come out parsed rather than as unknown fields.
    try:
        return descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError as exc:
        raise DescriptorSetError(f"not a FileDescriptorSet: {exc}") from None


def build_pool(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # `--include_imports` orders dependencies first
        try:
            pool.Add(file)
        except (TypeError, ValueError) as exc:
            raise DescriptorSetError(f"{file.name}: {exc}") from None
    return pool


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)
