from __future__ import annotations

from dataclasses import dataclass

from innosystem.kit.config import CommonConfig, ConfigError, env, env_float, env_int


@dataclass(frozen=True)
class BillingConfig:
    common: CommonConfig
    # ISO 4217 code of wallets opened without one, and of commission statements by default.
    default_currency: str = "USD"
    # Largest amount one top-up, hold or capture may carry, in minor units.
    max_amount_cents: int = 100_000_000_000
    # Lifetime of a hold reserved without an expire_time.
    default_hold_seconds: int = 24 * 3600
    # How often the periodic reconciliation runs (0: never).
    reconcile_interval_seconds: float = 300.0
    # Group commit: at most this many operations per PostgreSQL transaction.
    max_batch: int = 256
    # How long a reseller's commission rate is cached.
    rate_cache_seconds: float = 30.0
    # Largest refund a reseller may post for one of its customers at once (0: only an admin refunds).
    reseller_refund_limit_cents: int = 0

    @classmethod
    def from_env(cls) -> BillingConfig:
        currency = (env("INNOSYSTEM_BILLING_CURRENCY", "USD") or "USD").upper()
        if len(currency) != 3 or not currency.isalpha():
            raise ConfigError(f"INNOSYSTEM_BILLING_CURRENCY must be an ISO 4217 code, got {currency!r}")
        return cls(
            common=CommonConfig.from_env("billing"),
            default_currency=currency,
            max_amount_cents=env_int("INNOSYSTEM_BILLING_MAX_AMOUNT_CENTS", cls.max_amount_cents),
            default_hold_seconds=env_int("INNOSYSTEM_BILLING_HOLD_SECONDS", cls.default_hold_seconds),
            reconcile_interval_seconds=env_float("INNOSYSTEM_BILLING_RECONCILE_SECONDS",
                                                 cls.reconcile_interval_seconds),
            max_batch=env_int("INNOSYSTEM_BILLING_MAX_BATCH", cls.max_batch),
            reseller_refund_limit_cents=env_int("INNOSYSTEM_BILLING_RESELLER_REFUND_LIMIT_CENTS",
                                                cls.reseller_refund_limit_cents),
        )
