"""Keyset pagination: opaque page tokens that carry the last row's sort key, never an OFFSET."""

from __future__ import annotations

import base64
import json
from typing import Any

from innosystem.kit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default; above the maximum is clamped (AIP-158); negative is an error."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size", reason="INVALID_PAGE_SIZE")
    return min(requested or default, maximum)


def encode_token(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), default=str).encode()).decode().rstrip("=")


def decode_token(token: str, arity: int) -> list[Any] | None:
    """The key a token carries; None for the first page; INVALID_ARGUMENT for a bad token."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        key = None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidArgument("page_token is not a token this list returned", field="page_token",
                              reason="INVALID_PAGE_TOKEN")
    return key
