"""When to send a request again and how long to wait first: pure, shared by the sync and async
clients. Retried: 429 (after `Retry-After` when the gateway says it), 502/503/504 (UNAVAILABLE and
the proxies' equivalents) and connection failures. A request that may have reached the platform
(a read timeout, a dropped connection) is sent again only when repeating it is harmless: a read,
or a mutation that carries an idempotency key."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # in all, the first one included
    initial: float = 0.2  # seconds before the first repeat
    maximum: float = 10.0  # never wait longer than this between two attempts
    multiplier: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): what the server asked,
        else exponential backoff with full jitter so that many clients do not come back together."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.maximum)
        return random.uniform(0, min(self.maximum, self.initial * self.multiplier ** (attempt - 1)))


NO_RETRY = RetryPolicy(attempts=1)


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header (delta-seconds or an HTTP date) in seconds; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - time(), 0.0)
    except (TypeError, ValueError):
        return None
