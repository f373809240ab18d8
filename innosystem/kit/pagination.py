"""Keyset pagination: opaque page tokens that carry the last row's sort key, never an OFFSET."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

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


# A token this code makes is under 120 characters; anything much longer was not made here.
MAX_PAGE_TOKEN_CHARS = 512
MAX_TOKEN_TEXT = 100
_INT64 = (-(2**63), 2**63 - 1)


def _scalar(value: Any) -> bool:
    """A value `encode_token` writes: a short string or a 64-bit integer (not a bool, list or
    float: each of those reached SQL as something PostgreSQL refused, a 500)."""
    if type(value) is str:
        return len(value) <= MAX_TOKEN_TEXT and "\x00" not in value
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def decode_token(token: str, arity: int) -> list[Any] | None:
    """The key a token carries; None for the first page; INVALID_ARGUMENT for a bad token.

    Only `arity` scalars pass, from a token of bounded length: a deeply nested one made
    `json.loads` overflow the stack, an out-of-range integer overflowed a bigint, both 500s."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidArgument(f"page_token is longer than any token this API returns ({MAX_PAGE_TOKEN_CHARS} "
                              "characters)", field="page_token", reason="INVALID_PAGE_TOKEN")
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError):
        key = None
    if not isinstance(key, list) or len(key) != arity or not all(_scalar(v) for v in key):
        raise InvalidArgument("page_token is not a token this list returned", field="page_token",
                              reason="INVALID_PAGE_TOKEN")
    return key


# Lists ordered by creation: the key is (create_time, id), unique and stable under inserts.
Keyset = tuple[datetime, uuid.UUID]


@dataclass(frozen=True)
class Page:
    items: Sequence[Any]
    next_page_token: str


def keyset_page(rows: Sequence[Any], size: int) -> Page:
    """A page from `size + 1` rows fetched in (create_time, id) order: the extra row says there is more."""
    if len(rows) > size:
        last = rows[size - 1]
        return Page(rows[:size], encode_token(last.create_time.isoformat(), str(last.id)))
    return Page(rows, "")


def decode_keyset(token: str) -> Keyset | None:
    key = decode_token(token, 2)
    if key is None:
        return None
    try:
        return datetime.fromisoformat(key[0]), uuid.UUID(key[1])
    except (TypeError, ValueError):
        raise InvalidArgument("page_token is malformed", field="page_token", reason="INVALID_PAGE_TOKEN") from None


def after_keyset(stmt: Select[Any], model: Any, after: Keyset | None) -> Select[Any]:
    """Rows of `model` after `after`, in (create_time, id) order (an index on both serves it)."""
    if after is not None:
        stmt = stmt.where(or_(model.create_time > after[0], and_(model.create_time == after[0], model.id > after[1])))
    return stmt.order_by(model.create_time, model.id)
