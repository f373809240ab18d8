"""Pure rules, without services: backoff, the retry decision, queue names and encryption paths."""

from __future__ import annotations

import random

from services.jobs.encryption import paths_for
from services.jobs.retry import JITTER, Policy, backoff_seconds, why_final
from services.jobs.runtime import queue_name

POLICY = Policy(max_attempts=5, initial_interval_seconds=2, backoff_multiplier=3.0, max_interval_seconds=30,
                non_retryable_error_types=("ValueError",))


def test_backoff_grows_by_the_multiplier_up_to_the_maximum_with_early_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 2.0), (2, 6.0), (3, 18.0), (4, 30.0), (9, 30.0)]:
        for _ in range(50):
            delay = backoff_seconds(POLICY, attempt, rng)
            assert base * (1 - JITTER) <= delay <= base


def test_why_final() -> None:
    assert why_final(POLICY, 1, "IOError", False) is None
    assert why_final(POLICY, 1, "ValueError", False) == "error type ValueError is non-retryable"
    assert why_final(POLICY, 1, "", True) == "the processor marked the error non-retryable"
    assert why_final(POLICY, 5, "IOError", False) == "no attempts left (5 of 5)"


def test_queue_names_separate_tag_sets_and_escape_reserved_characters() -> None:
    assert queue_name("resize", []) == "resize"
    assert queue_name("resize", ["gpu", "eu", "gpu"]) == "resize~eu,gpu"
    assert queue_name("a:b", ["x|y"]) == "a%3Ab~x%7Cy"
    assert queue_name("a:b", []) != queue_name("a", ["b"])


def test_encryption_paths() -> None:
    doc = {"card": {"number": "4111", "exp": "1"}, "amount": 5}
    assert paths_for("payload", doc, ["payload.card.number", "payload.missing", "result.x"]) == ["payload.card.number"]
    assert paths_for("payload", doc, []) == ["payload.card", "payload.amount"]
    assert paths_for("result", {"token": "t"}, ["payload.card.number"]) == []
