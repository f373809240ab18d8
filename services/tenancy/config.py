from __future__ import annotations

from dataclasses import dataclass, field

from innosystem.kit.config import CommonConfig, env, env_required


@dataclass(frozen=True)
class TenancyConfig:
    common: CommonConfig
    # HMAC key for API-key hashes. Changing it invalidates every issued key.
    api_key_pepper: bytes = field(repr=False)
    # Sets (or replaces) the bootstrap admin key; unset: no bootstrap admin key.
    admin_api_key: str | None = field(repr=False)

    @classmethod
    def from_env(cls) -> TenancyConfig:
        return cls(
            common=CommonConfig.from_env("tenancy"),
            api_key_pepper=env_required("INNOSYSTEM_API_KEY_PEPPER").encode(),
            admin_api_key=env("INNOSYSTEM_ADMIN_API_KEY") or None,
        )
