"""The retry rule (pure): when a failed attempt runs again, or why it does not."""

from __future__ import annotations

import random
from dataclasses import dataclass

JITTER = 0.1  # a retry comes up to 10 % early, so a burst of failures does not retry in lockstep


@dataclass(frozen=True)
class Policy:
    max_attempts: int
    initial_interval_seconds: int
    backoff_multiplier: float
    max_interval_seconds: int
    non_retryable_error_types: tuple[str, ...] = ()


def backoff_seconds(policy: Policy, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before the attempt after `attempt` (from 1): min(initial * multiplier^(attempt-1), max),
    less up to JITTER of it."""
    base = min(policy.initial_interval_seconds * policy.backoff_multiplier ** max(attempt - 1, 0),
               float(policy.max_interval_seconds))
    return base * (1.0 - JITTER * (rng or random).random())


def why_final(policy: Policy, attempt: int, error_type: str, non_retryable: bool) -> str | None:
    """None if the failed `attempt` may be retried, else the reason it may not."""
    if non_retryable:
        return "the processor marked the error non-retryable"
    if error_type and error_type in policy.non_retryable_error_types:
        return f"error type {error_type} is non-retryable"
    if attempt >= policy.max_attempts:
        return f"no attempts left ({attempt} of {policy.max_attempts})"
    return None
