from __future__ import annotations

from dataclasses import dataclass, field

from innosystem.kit.config import CommonConfig, ConfigError, env, env_int


@dataclass(frozen=True)
class RunnersConfig:
    common: CommonConfig
    # HMAC key of stored runner-token hashes; changing it invalidates every runner token.
    token_pepper: bytes = field(repr=False)
    # A runner sends a heartbeat at least this often; silence past the timeout ends its session.
    heartbeat_interval_ms: int = 2_000
    heartbeat_timeout_ms: int = 6_000
    # Longest LeaseJobs long-poll for a runner with free slots.
    lease_wait_ms: int = 20_000
    # A stream's outgoing queue is full at this many messages or bytes (what the runner has not
    # read yet beyond what the transport holds): no new jobs are leased for the runner then, and a
    # queue that stays full past the slow-consumer timeout closes the stream (see outbox.py).
    send_queue_messages: int = 1_000
    send_queue_bytes: int = 16 * 1024 * 1024
    slow_consumer_timeout_ms: int = 30_000
    # Runners one customer may register (customer-owned runners; shared runners are the operator's).
    max_runners_per_customer: int = 100

    @classmethod
    def from_env(cls) -> RunnersConfig:
        pepper = env("INNOSYSTEM_RUNNER_TOKEN_PEPPER") or env("INNOSYSTEM_API_KEY_PEPPER")
        if not pepper:
            raise ConfigError("INNOSYSTEM_RUNNER_TOKEN_PEPPER is not set (nor INNOSYSTEM_API_KEY_PEPPER)")
        config = cls(
            common=CommonConfig.from_env("runners"),
            token_pepper=pepper.encode(),
            heartbeat_interval_ms=env_int("INNOSYSTEM_RUNNERS_HEARTBEAT_INTERVAL_MS", 2_000),
            heartbeat_timeout_ms=env_int("INNOSYSTEM_RUNNERS_HEARTBEAT_TIMEOUT_MS", 6_000),
            lease_wait_ms=env_int("INNOSYSTEM_RUNNERS_LEASE_WAIT_MS", 20_000),
            send_queue_messages=env_int("INNOSYSTEM_RUNNERS_SEND_QUEUE_MESSAGES", cls.send_queue_messages),
            send_queue_bytes=env_int("INNOSYSTEM_RUNNERS_SEND_QUEUE_BYTES", cls.send_queue_bytes),
            slow_consumer_timeout_ms=env_int("INNOSYSTEM_RUNNERS_SLOW_CONSUMER_TIMEOUT_MS",
                                             cls.slow_consumer_timeout_ms),
            max_runners_per_customer=env_int("INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER", cls.max_runners_per_customer),
        )
        if not 0 < config.heartbeat_interval_ms < config.heartbeat_timeout_ms:
            raise ConfigError("INNOSYSTEM_RUNNERS_HEARTBEAT_INTERVAL_MS must be positive and below "
                              "INNOSYSTEM_RUNNERS_HEARTBEAT_TIMEOUT_MS")
        if not 0 <= config.lease_wait_ms <= 30_000:
            raise ConfigError("INNOSYSTEM_RUNNERS_LEASE_WAIT_MS must be between 0 and 30000")
        if config.send_queue_messages < 1 or config.send_queue_bytes < 1024:
            raise ConfigError("INNOSYSTEM_RUNNERS_SEND_QUEUE_MESSAGES must be at least 1 and "
                              "INNOSYSTEM_RUNNERS_SEND_QUEUE_BYTES at least 1024")
        if config.slow_consumer_timeout_ms <= 0:
            raise ConfigError("INNOSYSTEM_RUNNERS_SLOW_CONSUMER_TIMEOUT_MS must be positive")
        if config.max_runners_per_customer < 0:
            raise ConfigError("INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER must be 0 or more")
        return config
