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
    # People's sessions: idle and absolute lifetimes.
    session_idle_seconds: int = 2 * 3600
    session_max_seconds: int = 12 * 3600
    # Invitations and password resets: SMTP server (unset: not mailed), sender, the console's URL
    # for the links, and whether to log the links instead (development only: they are credentials).
    smtp_host: str = ""
    smtp_port: int = 25
    mail_from: str = "innosystem@localhost"
    public_url: str = "http://127.0.0.1:8080"
    log_links: bool = False

    @classmethod
    def from_env(cls) -> TenancyConfig:
        config = cls(
            common=CommonConfig.from_env("tenancy"),
            api_key_pepper=env_required("INNOSYSTEM_API_KEY_PEPPER").encode(),
            admin_api_key=env("INNOSYSTEM_ADMIN_API_KEY") or None,
            max_projects_per_customer=env_int("INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER",
                                              cls.max_projects_per_customer),
            session_idle_seconds=env_int("INNOSYSTEM_SESSION_IDLE_SECONDS", cls.session_idle_seconds),
            session_max_seconds=env_int("INNOSYSTEM_SESSION_MAX_SECONDS", cls.session_max_seconds),
            smtp_host=env("INNOSYSTEM_SMTP_HOST") or "",
            smtp_port=env_int("INNOSYSTEM_SMTP_PORT", cls.smtp_port),
            mail_from=env("INNOSYSTEM_MAIL_FROM") or cls.mail_from,
            public_url=env("INNOSYSTEM_PUBLIC_URL") or cls.public_url,
            log_links=(env("INNOSYSTEM_LOG_ONE_TIME_LINKS") or "").lower() in ("1", "true", "yes"),
        )
        if config.session_idle_seconds < 60 or config.session_max_seconds < config.session_idle_seconds:
            raise ConfigError("INNOSYSTEM_SESSION_IDLE_SECONDS must be at least 60 and at most "
                              "INNOSYSTEM_SESSION_MAX_SECONDS")
        if config.max_projects_per_customer < 1:
            raise ConfigError("INNOSYSTEM_TENANCY_MAX_PROJECTS_PER_CUSTOMER must be at least 1")
        return config
