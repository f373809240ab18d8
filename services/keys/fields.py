"""Field paths (`payload.card.number`) and their values inside a job's payload or result."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from innosystem.kit.errors import InvalidArgument

ROOTS = ("payload", "result")
MAX_PATH = 512


def check_path(path: str, field: str, roots: Iterable[str] = ROOTS) -> str:
    head, _, rest = path.partition(".")
    parts = rest.split(".") if rest else []
    if head not in tuple(roots) or not parts or any(not p for p in parts) or len(path) > MAX_PATH:
        raise InvalidArgument(f"{field}: {path!r} is not a field path rooted at "
                              f"{' or '.join(r + '.' for r in roots)} with non-empty dot-separated keys",
                              field=field, reason="INVALID_FIELD_PATH")
    return path


def lookup(root: Mapping[str, Any], path: str) -> Any:
    """The value at `path` (its first segment names the root) in `root`, or None if absent."""
    node: Any = root
    for part in path.split(".")[1:]:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def allowed(path: str, patterns: Iterable[str]) -> bool:
    """Policy match: an exact path, or a prefix ending in `.`; no patterns allow everything."""
    patterns = list(patterns)
    return not patterns or any(path == p or (p.endswith(".") and path.startswith(p)) for p in patterns)


def value_bytes(value: struct_pb2.Value) -> bytes:
    """A field's plaintext: the value's compact JSON."""
    return json.dumps(json_format.MessageToDict(value), separators=(",", ":"), sort_keys=True).encode()


def value_of(raw: bytes) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(json.loads(raw), value)
    return value


def select_fields(requested: Iterable[str], present: set[str], policy: Iterable[str]) -> tuple[list[str], list[str]]:
    """(fields to decrypt, fields the policy refuses): requested ∩ present ∩ allowed, in request order.

    Any refused field denies the whole access (the caller decides); what is returned is always a
    subset of what was asked."""
    policy = list(policy)
    seen: set[str] = set()
    returned, refused = [], []
    for path in requested:
        if path in seen:
            continue
        seen.add(path)
        if not allowed(path, policy):
            refused.append(path)
        elif path in present:
            returned.append(path)
    return returned, refused
