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
            max_runners_per_customer=env_int("INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER", cls.max_runners_per_customer),
        )
        if not 0 < config.heartbeat_interval_ms < config.heartbeat_timeout_ms:
            raise ConfigError("INNOSYSTEM_RUNNERS_HEARTBEAT_INTERVAL_MS must be positive and below "
                              "INNOSYSTEM_RUNNERS_HEARTBEAT_TIMEOUT_MS")
        if not 0 <= config.lease_wait_ms <= 30_000:
            raise ConfigError("INNOSYSTEM_RUNNERS_LEASE_WAIT_MS must be between 0 and 30000")
        if config.max_runners_per_customer < 0:
            raise ConfigError("INNOSYSTEM_RUNNERS_MAX_PER_CUSTOMER must be 0 or more")
        return config
