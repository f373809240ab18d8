"""Settings from the environment, and the Authorization header's syntax."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gateway.auth import bearer_key
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, status_dict
from innosystem.kit.config import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INNOSYSTEM_HTTP_PORT", "INNOSYSTEM_GATEWAY_MAX_BODY_BYTES", "INNOSYSTEM_GATEWAY_HOST",
                 "INNOSYSTEM_GATEWAY_DESCRIPTORS", "INNOSYSTEM_GATEWAY_DEADLINE_SECONDS",
                 "INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_PER_SECOND",
                 "INNOSYSTEM_GATEWAY_UNAUTHENTICATED_RATE_LIMIT_BURST", "INNOSYSTEM_GATEWAY_TRUSTED_PROXY_HOPS",
                 "INNOSYSTEM_GATEWAY_REDIS_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INNOSYSTEM_INTERNAL_SECRET", "s3cret")
    config = GatewayConfig.from_env()
    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 8080, 4 * 1024 * 1024)
    assert (config.deadline_seconds, config.auth_cache_ttl_seconds, config.sse_keepalive_seconds) == (30, 5, 15)
    assert config.internal_secret == b"s3cret" and "s3cret" not in repr(config)
    assert (config.unauthenticated_rate_limit_per_second, config.unauthenticated_rate_limit_burst) == (10, 100)
    assert (config.trusted_proxy_hops, config.redis_timeout_seconds) == (0, 1.0)
    assert config.descriptor_set().startswith(b"\n")  # the packaged FileDescriptorSet


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("INNOSYSTEM_INTERNAL_SECRET_FILE", str(secret))
    monkeypatch.setenv("INNOSYSTEM_HTTP_PORT", "9090")
    monkeypatch.setenv("INNOSYSTEM_GATEWAY_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("INNOSYSTEM_GATEWAY_DEADLINE_SECONDS", "2.5")
    monkeypatch.setenv("INNOSYSTEM_TENANCY_ADDR", "tenancy:50051")
    config = GatewayConfig.from_env()
    assert (config.port, config.max_body_bytes, config.deadline_seconds) == (9090, 1024, 2.5)
    assert config.internal_secret == b"from-a-file" and config.addresses.of("tenancy") == "tenancy:50051"


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("INNOSYSTEM_INTERNAL_SECRET", "", "INNOSYSTEM_INTERNAL_SECRET"),
    ("INNOSYSTEM_HTTP_PORT", "eighty", "INNOSYSTEM_HTTP_PORT"),
    ("INNOSYSTEM_HTTP_PORT", "70000", "INNOSYSTEM_HTTP_PORT"),
    ("INNOSYSTEM_GATEWAY_MAX_BODY_BYTES", "0", "max_body_bytes"),
    ("INNOSYSTEM_GATEWAY_DESCRIPTORS", "/nonexistent/set.binpb", "INNOSYSTEM_GATEWAY_DESCRIPTORS"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str) -> None:
    monkeypatch.setenv("INNOSYSTEM_INTERNAL_SECRET", "s")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=needle):
        GatewayConfig.from_env().descriptor_set()


@pytest.mark.parametrize(("header", "key"), [
    (None, None),
    ("Bearer isk_abc", "isk_abc"),
    ("bearer   isk_abc  ", "isk_abc"),
])
def test_bearer_keys(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic Zm9vOmJhcg==", "isk_abc", "Bearer a b",
                                    "Bearer isk_\u00e9", "Bearer " + "k" * 600])
def test_malformed_authorization_is_401(header: str) -> None:
    with pytest.raises(GatewayError) as caught:
        bearer_key(header)
    assert caught.value.http_status == 401
    assert caught.value.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert status_dict(caught.value.status)["details"][0]["reason"] == "MALFORMED_AUTHORIZATION"
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
