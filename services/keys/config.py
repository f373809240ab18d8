from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, field

from innosystem.kit import egress
from innosystem.kit.config import CommonConfig, ConfigError, env, env_float, env_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeysConfig:
    common: CommonConfig
    # Seals the key managers' shared secrets and the webhook signing secrets at rest (AES-256).
    master_key: bytes = field(repr=False, default=b"")
    # An unwrapped project key stays in memory at most this long, and serves at most this many uses.
    key_cache_seconds: float = 30.0
    key_cache_max_uses: int = 1000
    # Timeout of a key manager call when the key does not set one.
    key_manager_timeout_ms: int = 5000
    # The egress guard for key managers and webhooks (customer-supplied URLs): hosts the operator
    # allow-lists (INNOSYSTEM_EGRESS_ALLOW_HOSTS=host:port,…) may be plain grpc:// or http:// and
    # internal; everything else must be TLS to a public address (innosystem/kit/egress.py).
    egress_policy: egress.Policy = field(default_factory=egress.Policy)
    # A granted access not completed within this time is marked abandoned.
    abandon_after_seconds: float = 900.0
    # How often the sweeper, the background rewrap and webhook delivery run.
    sweep_interval_seconds: float = 5.0
    # Webhook delivery: attempts per event and the timeout of one POST.
    webhook_attempts: int = 5
    webhook_timeout_seconds: float = 5.0
    # Background work per tenant (services/keys/background.py): items in flight in the process,
    # items of one customer in flight, and how long a pass waits for a busy customer's turn.
    background_concurrency: int = 16
    background_per_customer: int = 2
    background_budget_seconds: float = 30.0
    # A replica's claim on a key it rewraps; a failed rewrap is retried when it runs out.
    rewrap_lease_seconds: float = 120.0
    # Per customer: client keys not disabled (each is verified, health-checked and rewrapped), and
    # notification channels (each gets deliveries); a create beyond either is QUOTA_EXCEEDED.
    max_keys_per_customer: int = 20
    max_channels_per_customer: int = 20
    # The wallet-event feed (services/keys/walletfeed.py): billing's Redis, whose channel
    # `billing:wallet-events` wakes it (empty: this service's Redis); how often it looks anyway,
    # in case a publish was lost; and how old an event must be before the cursor passes it.
    billing_redis_url: str = ""
    wallet_feed_fallback_seconds: float = 30.0
    wallet_feed_settle_seconds: float = 10.0

    @classmethod
    def from_env(cls) -> KeysConfig:
        common = CommonConfig.from_env("keys")
        config = cls(
            common=common,
            master_key=_master_key(env("INNOSYSTEM_KEYS_MASTER_KEY"), common.internal_secret),
            key_cache_seconds=env_float("INNOSYSTEM_KEYS_KEY_CACHE_SECONDS", cls.key_cache_seconds),
            key_cache_max_uses=env_int("INNOSYSTEM_KEYS_KEY_CACHE_MAX_USES", cls.key_cache_max_uses),
            key_manager_timeout_ms=env_int("INNOSYSTEM_KEYS_KEY_MANAGER_TIMEOUT_MS", cls.key_manager_timeout_ms),
            egress_policy=_egress_policy(),
            abandon_after_seconds=env_float("INNOSYSTEM_KEYS_ABANDON_AFTER_SECONDS", cls.abandon_after_seconds),
            sweep_interval_seconds=env_float("INNOSYSTEM_KEYS_SWEEP_SECONDS", cls.sweep_interval_seconds),
            webhook_attempts=env_int("INNOSYSTEM_KEYS_WEBHOOK_ATTEMPTS", cls.webhook_attempts),
            webhook_timeout_seconds=env_float("INNOSYSTEM_KEYS_WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds),
            background_concurrency=env_int("INNOSYSTEM_KEYS_BACKGROUND_CONCURRENCY", cls.background_concurrency),
            background_per_customer=env_int("INNOSYSTEM_KEYS_BACKGROUND_PER_CUSTOMER", cls.background_per_customer),
            background_budget_seconds=env_float("INNOSYSTEM_KEYS_BACKGROUND_BUDGET_SECONDS",
                                                cls.background_budget_seconds),
            rewrap_lease_seconds=env_float("INNOSYSTEM_KEYS_REWRAP_LEASE_SECONDS", cls.rewrap_lease_seconds),
            max_keys_per_customer=env_int("INNOSYSTEM_KEYS_MAX_KEYS_PER_CUSTOMER", cls.max_keys_per_customer),
            max_channels_per_customer=env_int("INNOSYSTEM_KEYS_MAX_CHANNELS_PER_CUSTOMER",
                                              cls.max_channels_per_customer),
            billing_redis_url=env("INNOSYSTEM_KEYS_BILLING_REDIS_URL") or "",
            wallet_feed_fallback_seconds=env_float("INNOSYSTEM_KEYS_WALLET_FEED_FALLBACK_SECONDS",
                                                   cls.wallet_feed_fallback_seconds),
            wallet_feed_settle_seconds=env_float("INNOSYSTEM_KEYS_WALLET_FEED_SETTLE_SECONDS",
                                                 cls.wallet_feed_settle_seconds),
        )
        if config.max_keys_per_customer < 1 or config.max_channels_per_customer < 1:
            raise ConfigError("INNOSYSTEM_KEYS_MAX_KEYS_PER_CUSTOMER and _MAX_CHANNELS_PER_CUSTOMER must be at least 1")
        if config.wallet_feed_fallback_seconds <= 0 or config.wallet_feed_settle_seconds < 0:
            raise ConfigError("INNOSYSTEM_KEYS_WALLET_FEED_FALLBACK_SECONDS must be positive and "
                              "_WALLET_FEED_SETTLE_SECONDS not negative")
        return config


def _egress_policy() -> egress.Policy:
    if env("INNOSYSTEM_KEYS_ALLOW_INSECURE_ENDPOINTS"):
        # It allowed every plain endpoint off loopback; the guard takes named hosts instead.
        log.warning("INNOSYSTEM_KEYS_ALLOW_INSECURE_ENDPOINTS is no longer read: list the key managers and "
                    "webhooks the keys service may reach over plain grpc:// or http:// (or at internal "
                    "addresses) in %s=host:port,…", egress.ALLOW_ENV)
    try:
        return egress.Policy.from_env()
    except ValueError as exc:
        raise ConfigError(f"{egress.ALLOW_ENV}: {exc}") from None


def _master_key(raw: str | None, internal_secret: bytes) -> bytes:
    """32 bytes, base64; unset in development: derived from the internal secret (logged as such)."""
    if not raw:
        log.warning("INNOSYSTEM_KEYS_MASTER_KEY is not set: deriving it from INNOSYSTEM_INTERNAL_SECRET "
                    "(development only; set a separate key in production)")
        return hashlib.sha256(b"innosystem.keys.master|" + internal_secret).digest()
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ConfigError("INNOSYSTEM_KEYS_MASTER_KEY must be base64 of 32 bytes") from None
    if len(key) != 32:
        raise ConfigError(f"INNOSYSTEM_KEYS_MASTER_KEY must be 32 bytes, got {len(key)}")
    return key
