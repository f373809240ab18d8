"""The gateway's settings, read once from the environment."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

from innosystem.kit.config import Addresses, ConfigError, env, env_float, env_int, env_required

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    # HMAC key that signs the principal sent to the services (INNOSYSTEM_INTERNAL_SECRET).
    internal_secret: bytes = field(repr=False)
    addresses: Addresses = field(default_factory=Addresses)
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * MIB
    # Deadline of a unary call; a stream (SSE) lives until the client leaves or this other bound.
    deadline_seconds: float = 30.0
    stream_deadline_seconds: float = 3600.0
    sse_keepalive_seconds: float = 15.0
    auth_cache_ttl_seconds: float = 5.0
    auth_cache_negative_ttl_seconds: float = 1.0
    auth_cache_max_entries: int = 10_000
    # Requests per second per account, with a burst on top, shared by the replicas through Redis;
    # 0 = no limit (the default here; `from_env` turns it on).
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0
    # Requests that do not authenticate (no key, a malformed header, a bad key), per client
    # address; 0 = no limit (the default here; `from_env` turns it on).
    unauthenticated_rate_limit_per_second: float = 0.0
    unauthenticated_rate_limit_burst: int = 0
    # How many proxies in front of the gateway append to X-Forwarded-For (0: the TCP peer is
    # the client). Set it behind an ingress, or every client shares the ingress's address.
    trusted_proxy_hops: int = 0
    redis_url: str = ""
    # Connect and reply timeout of every Redis call (rate limits): a lost Redis never hangs a request.
    redis_timeout_seconds: float = 1.0
    # How long a stopping gateway lets in-flight requests finish.
    grace_seconds: float = 10.0
    # Concurrent single submits of one caller to one project go upstream as one BatchSubmitJobs
    # call, each answered as its own SubmitJob would be (gateway/submits.py).
    coalesce_submits: bool = True
    # None: the descriptor set shipped in the `innosystem` package.
    descriptor_set_path: Path | None = None

    def __post_init__(self) -> None:
        positive = {
            "max_body_bytes": self.max_body_bytes,
            "deadline_seconds": self.deadline_seconds,
            "stream_deadline_seconds": self.stream_deadline_seconds,
            "sse_keepalive_seconds": self.sse_keepalive_seconds,
            "auth_cache_max_entries": self.auth_cache_max_entries,
            "redis_timeout_seconds": self.redis_timeout_seconds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"gateway setting {name} must be positive, got {value}")
        if self.rate_limit_per_second < 0 or self.rate_limit_burst < 0:
            raise ConfigError("INNOSYSTEM_GATEWAY_RATE_LIMIT_PER_SECOND and _BURST must not be negative")
        if self.unauthenticated_rate_limit_per_second < 0 or self.unauthenticated_rate_limit_burst < 0:
            raise ConfigError("INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_PER_SECOND and _BURST must not be "
                              "negative")
        if self.trusted_proxy_hops < 0:
            raise ConfigError("INNOSYSTEM_GATEWAY_TRUSTED_PROXY_HOPS must not be negative")
        if (self.rate_limit_per_second or self.unauthenticated_rate_limit_per_second) and not self.redis_url:
            raise ConfigError("gateway rate limits need a Redis URL (REDIS_URL)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"INNOSYSTEM_HTTP_PORT must be a TCP port, got {self.port}")

    @classmethod
    def from_env(cls) -> GatewayConfig:
        descriptors = env("INNOSYSTEM_GATEWAY_DESCRIPTORS")
        return cls(
            internal_secret=env_required("INNOSYSTEM_INTERNAL_SECRET").encode(),
            addresses=Addresses.from_env(),
            host=env("INNOSYSTEM_GATEWAY_HOST", "127.0.0.1") or "127.0.0.1",
            port=env_int("INNOSYSTEM_HTTP_PORT", 8080),
            max_body_bytes=env_int("INNOSYSTEM_GATEWAY_MAX_BODY_BYTES", 4 * MIB),
            deadline_seconds=env_float("INNOSYSTEM_GATEWAY_DEADLINE_SECONDS", 30.0),
            stream_deadline_seconds=env_float("INNOSYSTEM_GATEWAY_STREAM_DEADLINE_SECONDS", 3600.0),
            sse_keepalive_seconds=env_float("INNOSYSTEM_GATEWAY_SSE_KEEPALIVE_SECONDS", 15.0),
            auth_cache_ttl_seconds=env_float("INNOSYSTEM_GATEWAY_AUTH_CACHE_TTL_SECONDS", 5.0),
            auth_cache_negative_ttl_seconds=env_float("INNOSYSTEM_GATEWAY_AUTH_CACHE_NEGATIVE_TTL_SECONDS", 1.0),
            auth_cache_max_entries=env_int("INNOSYSTEM_GATEWAY_AUTH_CACHE_MAX_ENTRIES", 10_000),
            rate_limit_per_second=env_float("INNOSYSTEM_GATEWAY_RATE_LIMIT_PER_SECOND", 500.0),
            rate_limit_burst=env_int("INNOSYSTEM_GATEWAY_RATE_LIMIT_BURST", 1000),
            unauthenticated_rate_limit_per_second=env_float(
                "INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_PER_SECOND", 10.0),
            unauthenticated_rate_limit_burst=env_int("INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_BURST", 100),
            trusted_proxy_hops=env_int("INNOSYSTEM_GATEWAY_TRUSTED_PROXY_HOPS", 0),
            redis_timeout_seconds=env_float("INNOSYSTEM_GATEWAY_REDIS_TIMEOUT_SECONDS", 1.0),
            redis_url=env("INNOSYSTEM_GATEWAY_REDIS_URL") or env("REDIS_URL", "redis://127.0.0.1:6379/0") or "",
            grace_seconds=env_float("INNOSYSTEM_SHUTDOWN_GRACE_SECONDS", 10.0),
            coalesce_submits=env_int("INNOSYSTEM_GATEWAY_COALESCE_SUBMITS", 1) != 0,
            descriptor_set_path=Path(descriptors) if descriptors else None,
        )

    def descriptor_set(self) -> bytes:
        """The serialized FileDescriptorSet the routes and the OpenAPI document come from."""
        if self.descriptor_set_path is not None:
            try:
                return self.descriptor_set_path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"INNOSYSTEM_GATEWAY_DESCRIPTORS: cannot read {self.descriptor_set_path}: "
                                  f"{exc.strerror}") from None
        return importlib.resources.files("innosystem").joinpath("descriptors.binpb").read_bytes()
