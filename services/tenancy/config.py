from __future__ import annotations

from dataclasses import dataclass, field

from innosystem.kit.config import CommonConfig, ConfigError, env, env_int, env_required


@dataclass(frozen=True)
class TenancyConfig:
    common: CommonConfig
    # HMAC key for API-key hashes. Changing it invalidates every issued key.
    api_key_pepper: bytes = field(repr=False)
    # Sets (or replaces) the bootstrap admin key; unset: no bootstrap admin key.
    admin_api_key: str | None = field(repr=False)
    # Projects one customer may have (a create beyond it is QUOTA_EXCEEDED).
    max_projects_per_customer: int = 100

    @classmethod
    def from_env(cls) -> TenancyConfig:
        config = cls(
            common=CommonConfig.from_env("tenancy"),
            api_key_pepper=env_required("INNOSYSTEM_API_KEY_PEPPER").encode(),
            admin_api_key=env("INNOSYSTEM_ADMIN_API_KEY") or None,
            max_projects_per_customer=env_int("INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER",
                                              cls.max_projects_per_customer),
        )
        if config.max_projects_per_customer < 1:
            raise ConfigError("INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER must be at least 1")
        return config
