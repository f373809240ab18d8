from __future__ import annotations

from dataclasses import dataclass, field

from innosystem.kit import egress
from innosystem.kit.config import CommonConfig, ConfigError, env, env_float, env_int
from innosystem.kit.sealing import MASTER_KEY_ENV, master_key


@dataclass(frozen=True)
class JobsConfig:
    common: CommonConfig
    # How long a project's owner (customer, reseller), asked of tenancy, is remembered.
    project_cache_seconds: float = 30.0
    # Largest payload (its JSON) one job may carry.
    max_payload_bytes: int = 1024 * 1024
    # Largest result (its JSON) one attempt may store; a larger one fails the attempt (RESULT_TOO_LARGE).
    max_result_bytes: int = 1024 * 1024
    # How far ahead a schedule_time may be.
    max_schedule_days: int = 30
    # Currency of job types that name none (must be billing's default).
    default_currency: str = "USD"
    # What one job of a customer's own type (run on the customer's runners) costs: the operator's
    # platform fee, in the default currency (pricing.py).
    platform_fee_cents: int = 0
    # A lease's life without a heartbeat (never beyond the attempt's timeout).
    lease_ttl_seconds: float = 30.0
    # How often expired leases are looked for.
    reaper_interval_seconds: float = 2.0
    # How often committed jobs missing from Redis are re-enqueued (and a flushed Redis rebuilt).
    recovery_interval_seconds: float = 10.0
    # A submit's hold with no job after this long is released by recovery (the submit died).
    orphan_hold_grace_seconds: float = 60.0
    # Billing for ended jobs waits this long to go with the endings that follow (one capture call
    # and one billing commit for all of them); 0 sends each batch of endings as it commits.
    settle_window_seconds: float = 0.05
    # A runner seen asking for a (type, tags) within this long counts as online (pending reason).
    runner_seen_seconds: float = 60.0
    # Finished jobs' payloads and results are purged after this long (Archive: never).
    retention_days: float = 30.0
    # Finished jobs (with their history) are deleted after this long (Archive: never); 0 = never.
    delete_after_days: float = 365.0
    # Job types one customer may have, over all its projects (a create beyond it is QUOTA_EXCEEDED).
    max_job_types_per_customer: int = 500
    # A ListJobs / ListDeadLetterJobs page ends early (with a next_page_token) before this many bytes.
    max_list_page_bytes: int = 4 * 1024 * 1024
    # WatchJob streams running at once on one customer's jobs, over every replica (counted in Redis).
    max_watchers_per_customer: int = 50
    # Webhooks (webhooks.py, deliveries.py): what the egress guard allows (INNOSYSTEM_EGRESS_ALLOW_HOSTS),
    # the key that seals signing secrets, and the delivery loop's bounds.
    egress_policy: egress.Policy = field(default_factory=egress.Policy)
    webhook_secret_key: bytes = field(repr=False, default=b"")
    max_webhooks_per_project: int = 20
    # One POST's time limit; a slower endpoint's attempt fails (and is retried).
    webhook_timeout_seconds: float = 10.0
    # POSTs in flight in one replica, and to one endpoint (a slow endpoint holds only its own slots).
    webhook_concurrency: int = 32
    webhook_per_endpoint: int = 2
    # Multiplies the retry schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, ...); tests shrink it.
    webhook_retry_scale: float = 1.0
    # Retries stop this long after the event (or a redelivery request).
    webhook_retry_hours: float = 24.0
    # How often the fan-out reads new status changes, and how long a change may stay uncommitted
    # behind a later one before the cursor passes it (see deliveries.py).
    webhook_scan_seconds: float = 1.0
    webhook_settle_seconds: float = 10.0

    @classmethod
    def from_env(cls) -> JobsConfig:
        currency = (env("INNOSYSTEM_BILLING_CURRENCY", "USD") or "USD").upper()
        if len(currency) != 3 or not currency.isalpha():
            raise ConfigError(f"INNOSYSTEM_BILLING_CURRENCY must be an ISO 4217 code, got {currency!r}")
        common = CommonConfig.from_env("jobs")
        config = cls(
            common=common,
            max_payload_bytes=env_int("INNOSYSTEM_JOBS_MAX_PAYLOAD_BYTES", cls.max_payload_bytes),
            max_result_bytes=env_int("INNOSYSTEM_JOBS_MAX_RESULT_BYTES", cls.max_result_bytes),
            max_schedule_days=env_int("INNOSYSTEM_JOBS_MAX_SCHEDULE_DAYS", cls.max_schedule_days),
            default_currency=currency,
            platform_fee_cents=env_int("INNOSYSTEM_JOBS_PLATFORM_FEE_CENTS", cls.platform_fee_cents),
            lease_ttl_seconds=env_float("INNOSYSTEM_JOBS_LEASE_TTL_SECONDS", cls.lease_ttl_seconds),
            reaper_interval_seconds=env_float("INNOSYSTEM_JOBS_REAPER_INTERVAL_SECONDS", cls.reaper_interval_seconds),
            recovery_interval_seconds=env_float("INNOSYSTEM_JOBS_RECOVERY_INTERVAL_SECONDS",
                                                cls.recovery_interval_seconds),
            orphan_hold_grace_seconds=env_float("INNOSYSTEM_JOBS_ORPHAN_HOLD_GRACE_SECONDS",
                                                cls.orphan_hold_grace_seconds),
            settle_window_seconds=env_float("INNOSYSTEM_JOBS_SETTLE_WINDOW_SECONDS", cls.settle_window_seconds),
            runner_seen_seconds=env_float("INNOSYSTEM_JOBS_RUNNER_SEEN_SECONDS", cls.runner_seen_seconds),
            retention_days=env_float("INNOSYSTEM_JOBS_RETENTION_DAYS", cls.retention_days),
            delete_after_days=env_float("INNOSYSTEM_JOBS_DELETE_AFTER_DAYS", cls.delete_after_days),
            max_job_types_per_customer=env_int("INNOSYSTEM_JOBS_MAX_JOB_TYPES_PER_CUSTOMER",
                                               cls.max_job_types_per_customer),
            max_list_page_bytes=env_int("INNOSYSTEM_JOBS_MAX_LIST_PAGE_BYTES", cls.max_list_page_bytes),
            max_watchers_per_customer=env_int("INNOSYSTEM_JOBS_MAX_WATCHERS_PER_CUSTOMER",
                                              cls.max_watchers_per_customer),
            egress_policy=_egress_policy(),
            webhook_secret_key=master_key(env(MASTER_KEY_ENV), common.internal_secret),
            max_webhooks_per_project=env_int("INNOSYSTEM_JOBS_MAX_WEBHOOKS_PER_PROJECT", cls.max_webhooks_per_project),
            webhook_timeout_seconds=env_float("INNOSYSTEM_JOBS_WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds),
            webhook_concurrency=env_int("INNOSYSTEM_JOBS_WEBHOOK_CONCURRENCY", cls.webhook_concurrency),
            webhook_per_endpoint=env_int("INNOSYSTEM_JOBS_WEBHOOK_PER_ENDPOINT", cls.webhook_per_endpoint),
            webhook_retry_scale=env_float("INNOSYSTEM_JOBS_WEBHOOK_RETRY_SCALE", cls.webhook_retry_scale),
            webhook_retry_hours=env_float("INNOSYSTEM_JOBS_WEBHOOK_RETRY_HOURS", cls.webhook_retry_hours),
            webhook_scan_seconds=env_float("INNOSYSTEM_JOBS_WEBHOOK_SCAN_SECONDS", cls.webhook_scan_seconds),
            webhook_settle_seconds=env_float("INNOSYSTEM_JOBS_WEBHOOK_SETTLE_SECONDS", cls.webhook_settle_seconds),
        )
        if min(config.max_job_types_per_customer, config.max_list_page_bytes, config.max_watchers_per_customer) < 1:
            raise ConfigError("INNOSYSTEM_JOBS_MAX_JOB_TYPES_PER_CUSTOMER, _MAX_LIST_PAGE_BYTES and "
                              "_MAX_WATCHERS_PER_CUSTOMER must be at least 1")
        if not 0 <= config.platform_fee_cents <= 10_000_000:
            raise ConfigError("INNOSYSTEM_JOBS_PLATFORM_FEE_CENTS must be 0 to 10000000 (cents per job)")
        if config.max_payload_bytes < 2 or config.lease_ttl_seconds <= 0 or config.recovery_interval_seconds <= 0:
            raise ConfigError("INNOSYSTEM_JOBS_MAX_PAYLOAD_BYTES, _LEASE_TTL_SECONDS and _RECOVERY_INTERVAL_SECONDS "
                              "must be positive")
        if not 0 <= config.settle_window_seconds <= 1:
            raise ConfigError("INNOSYSTEM_JOBS_SETTLE_WINDOW_SECONDS must be 0 to 1 (seconds)")
        if min(config.webhook_concurrency, config.webhook_per_endpoint, config.max_webhooks_per_project) < 1 or \
                min(config.webhook_timeout_seconds, config.webhook_scan_seconds, config.webhook_retry_scale) <= 0:
            raise ConfigError("INNOSYSTEM_JOBS_WEBHOOK_* settings and _MAX_WEBHOOKS_PER_PROJECT must be positive")
        return config


def _egress_policy() -> egress.Policy:
    try:
        return egress.Policy.from_env()
    except ValueError as exc:
        raise ConfigError(f"{egress.ALLOW_ENV}: {exc}") from None
