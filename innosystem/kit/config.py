"""Configuration read once from the environment into frozen dataclasses.

Every variable may instead name a file with `<NAME>_FILE` (Kubernetes and compose secrets).
A service's own settings live in a dataclass in its package; what all of them share is here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("tenancy", "billing", "jobs", "runners", "keys")
DEFAULT_PORTS = {"tenancy": 50051, "billing": 50052, "jobs": 50053, "runners": 50054, "keys": 50055}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env(name: str, default: str | None = None) -> str | None:
    """The value of `name`, or the contents of the file named by `name_FILE`, or `default`."""
    if (path := os.environ.get(f"{name}_FILE")) is not None:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def env_required(name: str) -> str:
    value = env(name)
    if not value:
        raise ConfigError(f"{name} is not set (nor {name}_FILE)")
    return value


def env_int(name: str, default: int) -> int:
    raw = env(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = env(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Addresses:
    """Where each service listens (host:port); clients dial these."""

    tenancy: str = f"127.0.0.1:{DEFAULT_PORTS['tenancy']}"
    billing: str = f"127.0.0.1:{DEFAULT_PORTS['billing']}"
    jobs: str = f"127.0.0.1:{DEFAULT_PORTS['jobs']}"
    runners: str = f"127.0.0.1:{DEFAULT_PORTS['runners']}"
    keys: str = f"127.0.0.1:{DEFAULT_PORTS['keys']}"

    @classmethod
    def from_env(cls) -> Addresses:
        defaults = cls()
        return cls(**{s: env(f"INNOSYSTEM_{s.upper()}_ADDR", getattr(defaults, s)) or "" for s in SERVICES})

    def of(self, service: str) -> str:
        return str(getattr(self, service))


@dataclass(frozen=True)
class CommonConfig:
    """What every service process needs."""

    service: str
    database_url: str
    redis_url: str
    # HMAC key for principal metadata between the gateway and the services.
    internal_secret: bytes = field(repr=False)
    addresses: Addresses
    listen: str
    log_format: str  # "json" or "console"
    log_level: str
    grace_seconds: float
    # Prometheus text at :<port>/metrics; 0 = not served.
    metrics_port: int
    redis_max_connections: int = 64
    # Where this service listens in a process of several (INNOSYSTEM_<SERVICE>_LISTEN; unset: its
    # ADDR's port on INNOSYSTEM_LISTEN's host). `innosystem up`'s billing replica beside the jobs
    # service: any free port, which nobody is told.
    listen_beside: str = ""

    @classmethod
    def from_env(cls, service: str) -> CommonConfig:
        addresses = Addresses.from_env()
        default_port = addresses.of(service).rsplit(":", 1)[-1] if service in SERVICES else "0"
        prefix = f"INNOSYSTEM_{service.upper()}_"
        return cls(
            service=service,
            database_url=to_async_url(env(prefix + "DATABASE_URL") or env_required("DATABASE_URL")),
            redis_url=env(prefix + "REDIS_URL") or env("REDIS_URL", "redis://127.0.0.1:6379/0") or "",
            redis_max_connections=env_int("INNOSYSTEM_REDIS_MAX_CONNECTIONS", 64),
            internal_secret=env_required("INNOSYSTEM_INTERNAL_SECRET").encode(),
            addresses=addresses,
            listen=env("INNOSYSTEM_LISTEN", f"0.0.0.0:{default_port}") or "",
            log_format=env("INNOSYSTEM_LOG_FORMAT", "") or "",
            log_level=env("INNOSYSTEM_LOG_LEVEL", "INFO") or "INFO",
            grace_seconds=env_float("INNOSYSTEM_SHUTDOWN_GRACE_SECONDS", 10.0),
            metrics_port=env_int("INNOSYSTEM_METRICS_PORT", 0),
            listen_beside=env(prefix + "LISTEN", "") or "",
        )


def to_async_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and use the psycopg 3 driver for them."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url
