"""The route table: every `google.api.http` rule of the descriptor set, matched by method + path.

Built once at start. Templates are stored in a trie keyed by path segment, so a lookup walks
the request's segments (literal children first, then `*`, then `**`) instead of scanning all
routes; trying literals first is what makes `/v1/customers/me` win over
`/v1/customers/{customer_id}`. Matching goes method by method the way grpc-gateway's does:
a path that matches only other methods' templates is a 405 with their `Allow` list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.descriptors import DescriptorSetError, message_class
from gateway.templates import DOUBLE_STAR, STAR, PathTemplate, TemplateError, decode_segment, parse_template
from innosystem.kit.config import SERVICES

log = logging.getLogger(__name__)

_UPSTREAM = re.compile(r"innosystem\.([a-z_]+)\.v\d+\.")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Binding:
    """One HTTP shape of a method: the rule itself or one of its additional_bindings."""

    http_method: str  # upper case
    path: str
    body: str  # "", "*" or a top-level field name
    response_body: str


def bindings(rule: http_pb2.HttpRule) -> list[Binding]:
    out = [_binding(rule)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise DescriptorSetError(f"additional_bindings of {extra.selector or 'a rule'} must not nest")
        out.append(_binding(extra))
    return out


def _binding(rule: http_pb2.HttpRule) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise DescriptorSetError("http rule without a pattern")
    if kind == "custom":
        method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        method, path = kind.upper(), getattr(rule, kind)
    return Binding(method, path, rule.body, rule.response_body)


def http_rule(method: descriptor_pb2.MethodDescriptorProto) -> http_pb2.HttpRule | None:
    if not method.options.HasExtension(annotations_pb2.http):
        return None
    return method.options.Extensions[annotations_pb2.http]


@dataclass(frozen=True)
class RpcMethod:
    service: str  # full name, e.g. innosystem.tenancy.v1.TenancyService
    name: str
    input: Descriptor
    output: Descriptor
    server_streaming: bool
    upstream: str  # the context whose address serves it, e.g. "tenancy"

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"


@dataclass(frozen=True)
class Route:
    binding: Binding
    template: PathTemplate
    rpc: RpcMethod
    # Aligned with template.variables: the request fields each variable fills.
    path_fields: tuple[tuple[FieldDescriptor, ...], ...]
    body_field: FieldDescriptor | None
    response_field: FieldDescriptor | None
    request_class: type[Message] = field(repr=False)
    response_class: type[Message] = field(repr=False)

    @property
    def http_method(self) -> str:
        return self.binding.http_method

    def __str__(self) -> str:
        return f"{self.http_method} {self.template.text} → {self.rpc.full_name}"


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    path_values: list[str]


class RouteNotFound(LookupError):
    pass


class MethodNotAllowed(LookupError):
    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = sorted(allowed)


def upstream_of(service: str) -> str:
    """`innosystem.<ctx>.v1.XService` is served at `Addresses.of("<ctx>")`."""
    m = _UPSTREAM.match(service + ".")
    if m is None or m.group(1) not in SERVICES:
        raise DescriptorSetError(f"{service} has HTTP rules but no known upstream (expected "
                                 f"innosystem.<{'|'.join(SERVICES)}>.v<N>.<Service>)")
    return m.group(1)


def load_routes(files: descriptor_pb2.FileDescriptorSet, pool: descriptor_pool.DescriptorPool) -> list[Route]:
    routes: list[Route] = []
    for file in files.file:
        for service in file.service:
            full_service = f"{file.package}.{service.name}" if file.package else service.name
            for method in service.method:
                rule = http_rule(method)
                if rule is None:
                    continue  # internal method: gRPC only
                where = f"{full_service}.{method.name}"
                if method.client_streaming:
                    log.warning("%s has an HTTP rule but streams requests; not served over HTTP", where)
                    continue
                descriptor = pool.FindMethodByName(where)
                rpc = RpcMethod(full_service, method.name, descriptor.input_type, descriptor.output_type,
                                method.server_streaming, upstream_of(full_service))
                for binding in bindings(rule):
                    try:
                        routes.append(_route(binding, rpc))
                    except (TemplateError, DescriptorSetError) as exc:
                        raise DescriptorSetError(f"{where}: {exc}") from None
    return routes


def _route(binding: Binding, rpc: RpcMethod) -> Route:
    template = parse_template(binding.path)
    path_fields = tuple(_field_chain(rpc.input, v.field_path, binding.path) for v in template.variables)
    for chain in path_fields:
        leaf = chain[-1]
        if leaf.is_repeated or leaf.type in (FieldDescriptor.TYPE_MESSAGE,
                                                                          FieldDescriptor.TYPE_GROUP):
            raise DescriptorSetError(f"path variable {leaf.name!r} must be a singular scalar field")
    body_field = None
    if binding.body not in ("", "*"):
        body_field = _field_chain(rpc.input, (binding.body,), "body")[0]
    response_field = None
    if binding.response_body:
        response_field = _field_chain(rpc.output, (binding.response_body,), "response_body")[0]
    return Route(binding, template, rpc, path_fields, body_field, response_field,
                 message_class(rpc.input), message_class(rpc.output))


def _field_chain(message: Descriptor, path: Sequence[str], where: str) -> tuple[FieldDescriptor, ...]:
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for i, name in enumerate(path):
        found = current.fields_by_name.get(name) if current is not None else None
        if found is None:
            raise DescriptorSetError(f"{where}: {message.full_name} has no field {'.'.join(path[:i + 1])}")
        if i < len(path) - 1 and (found.message_type is None or found.is_repeated):
            raise DescriptorSetError(f"{where}: {'.'.join(path[:i + 1])} is not a singular message field")
        chain.append(found)
        current = found.message_type
    return tuple(chain)


class _Node:
    __slots__ = ("double_star", "leaves", "literals", "star")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.double_star: _Node | None = None
        # verb -> HTTP method -> route
        self.leaves: dict[str, dict[str, Route]] = {}


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._root = _Node()
        self._verbs: set[str] = set()
        for route in routes:
            self._insert(route)

    def _insert(self, route: Route) -> None:
        node = self._root
        for segment in route.template.segments:
            if segment == STAR:
                node.star = node.star or _Node()
                node = node.star
            elif segment == DOUBLE_STAR:
                node.double_star = node.double_star or _Node()
                node = node.double_star
            else:
                node = node.literals.setdefault(segment, _Node())
        by_method = node.leaves.setdefault(route.template.verb, {})
        clash = by_method.get(route.http_method)
        if clash is not None:
            raise DescriptorSetError(f"{route} clashes with {clash}")
        by_method[route.http_method] = route
        if route.template.verb:
            self._verbs.add(route.template.verb)

    def match(self, method: str, raw_path: str) -> RouteMatch:
        """The route for `method` and the raw (still percent-encoded) path, without query.

        Raises RouteNotFound, or MethodNotAllowed naming the methods the path does have.
        """
        if not raw_path.startswith("/"):
            raise RouteNotFound(raw_path)
        raw = raw_path[1:].split("/")
        allowed: set[str] = set()
        for segments, verb in self._candidates(raw):
            decoded = [decode_segment(s) for s in segments]
            here: set[str] = set()
            for leaf in self._walk(self._root, decoded, 0):
                routes = leaf.leaves.get(verb)
                if not routes:
                    continue
                route = routes.get(method)
                if route is not None:
                    return RouteMatch(route, route.template.bind(segments, decoded))
                here.update(routes)
            if here:  # a path with a known verb is that custom method's (405 for any other method)
                allowed = here
                break
        if allowed:
            raise MethodNotAllowed(sorted(allowed))
        raise RouteNotFound(raw_path)

    def _candidates(self, raw: list[str]) -> Iterator[tuple[list[str], str]]:
        # A custom verb sits after the last ':' of the last segment; without a known verb
        # the ':' belongs to the segment (ids may contain one when percent-decoded anyway).
        head, colon, verb = raw[-1].rpartition(":")
        if colon and verb in self._verbs:
            yield [*raw[:-1], head], verb
        yield raw, ""

    def _walk(self, node: _Node, segments: list[str], i: int) -> Iterator[_Node]:
        if i == len(segments):
            yield node
            if node.double_star is not None:  # `**` matches zero segments too
                yield node.double_star
            return
        segment = segments[i]
        if segment:  # an empty segment (`//`, trailing `/`) matches nothing but `**`
            child = node.literals.get(segment)
            if child is not None:
                yield from self._walk(child, segments, i + 1)
            if node.star is not None:
                yield from self._walk(node.star, segments, i + 1)
        if node.double_star is not None:
            yield node.double_star
