from __future__ import annotations

from dataclasses import dataclass

from innosystem.kit.config import CommonConfig


@dataclass(frozen=True)
class JobsConfig:
    common: CommonConfig
    # How long a project's owner (customer, reseller), asked of tenancy, is remembered. Not an
    # environment setting yet: one would need its line in deploy/README.md (the drift test).
    project_cache_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> JobsConfig:
        return cls(common=CommonConfig.from_env("jobs"))
