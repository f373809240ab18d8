"""What the sync and async clients share about HTTP: headers, reading an answer into a result or an
`ApiError`, whether a failed send may be repeated, and batching."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import httpx

from innosystem.client.calls import Call
from innosystem.client.errors import ApiError
from innosystem.client.retry import RETRYABLE_STATUS
from innosystem.client.retry import retry_after as parse_retry_after

T = TypeVar("T")
# A watch that meets one of these falls back to reading the job with backoff: the watch quota
# (429), a gateway draining or an upstream unreachable.
STREAM_FALLBACK_STATUS = RETRYABLE_STATUS
USER_AGENT = "innosystem-client/0.1"
MAX_BATCH = 1000  # the gateway's limit per jobs:batchSubmit
# gRPC code → HTTP status (grpc-gateway's table) for a Status that arrives inside an event stream.
_HTTP_OF_CODE = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


def headers(api_key: str) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def read(call: Call[T], response: httpx.Response) -> T:
    """The parsed result of a 2xx answer; anything else raises ApiError."""
    if not response.is_success:
        raise ApiError(response.status_code, body(response), method=call.method, path=call.path)
    return call.parse(body(response) or {})


def should_retry(call: Call[Any], status: int) -> bool:
    # A 429 is refused before anything reaches a service; a 5xx may have done the work.
    return status == 429 or (status in RETRYABLE_STATUS and call.idempotent)


def retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("Retry-After"))


def idle(deadline: float | None, most: float) -> float:
    """How long a stream may stay silent: `most`, or less when a deadline comes first."""
    return most if deadline is None else min(most, max(deadline - time.monotonic(), 0.05))


def may_resend(call: Call[Any], exc: httpx.TransportError) -> bool:
    """Nothing was sent when the connection could not be made; otherwise only a harmless repeat."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout) or call.idempotent


def stream_error(status: Any, path: str) -> ApiError:
    code = int(status.get("code", 0) or 0) if isinstance(status, dict) else 0
    return ApiError(_HTTP_OF_CODE.get(code, 500), status, method="GET", path=path)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"batch size must be 1 to {MAX_BATCH}, not {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
