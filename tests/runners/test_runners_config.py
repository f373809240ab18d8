"""The runners service's limits: their defaults, and values that would disable a bound refused at
start-up with the variable named."""

from __future__ import annotations

import pytest

from innosystem.kit.config import ConfigError
from services.runners.config import RunnersConfig


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in {"DATABASE_URL": "postgresql://x/y", "INNOSYSTEM_INTERNAL_SECRET": "s" * 32,
                        "INNOSYSTEM_API_KEY_PEPPER": "p" * 32}.items():
        monkeypatch.setenv(name, value)
    for name in ("INNOSYSTEM_RUNNERS_SEND_QUEUE_MESSAGES", "INNOSYSTEM_RUNNERS_SEND_QUEUE_BYTES",
                 "INNOSYSTEM_RUNNERS_SLOW_CONSUMER_TIMEOUT_MS", "INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(base_env: pytest.MonkeyPatch) -> None:
    config = RunnersConfig.from_env()
    assert (config.send_queue_messages, config.send_queue_bytes, config.slow_consumer_timeout_ms,
            config.max_runners_per_customer) == (1000, 16 * 1024 * 1024, 30_000, 100)


@pytest.mark.parametrize(("name", "value"), [("INNOSYSTEM_RUNNERS_SEND_QUEUE_MESSAGES", "0"),
                                             ("INNOSYSTEM_RUNNERS_SEND_QUEUE_BYTES", "100"),
                                             ("INNOSYSTEM_RUNNERS_SLOW_CONSUMER_TIMEOUT_MS", "0"),
                                             ("INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER", "-1")])
def test_a_value_that_disables_a_bound_is_refused_naming_it(base_env: pytest.MonkeyPatch, name: str,
                                                            value: str) -> None:
    base_env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        RunnersConfig.from_env()
