"""Each process, given exactly the environment a manifest gives it, reads a valid configuration:
a required secret missing from a Deployment or a compose service fails here, not at 3 a.m."""

from __future__ import annotations

import base64
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml
from deploy_support import COMPOSE_DIR, Rendered, interpolate, read_env_file

from innosystem.kit.config import SERVICES, ConfigError


def _config_class(name: str) -> Any:
    if name == "gateway":
        return importlib.import_module("gateway.config").GatewayConfig
    module = importlib.import_module(f"services.{name}.config")
    return next(v for k, v in vars(module).items() if k.endswith("Config") and k.lower() == f"{name}config")


@contextmanager
def _only(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _k8s_env(r: Rendered, name: str) -> dict[str, str]:
    container = r.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]

    def secret(ref: dict[str, Any]) -> dict[str, str]:
        data = r.get("Secret", ref["name"]).get("data", {})
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret(source["secretRef"]))
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif ref := entry.get("valueFrom", {}).get("secretKeyRef"):
            env[entry["name"]] = secret(ref)[ref["key"]]
    return env


def _load(name: str, env: dict[str, str]) -> None:
    """The process's configuration from exactly `env`. An example file's placeholder (CHANGE-ME) that
    the configuration refuses by name is the operator's to fill in, and passes; anything missing fails."""
    with _only(env):
        try:
            _config_class(name).from_env()
        except ConfigError as err:
            placeholders = [k for k, v in env.items() if "change-me" in v.lower()]
            if not any(k in str(err) for k in placeholders):
                raise


@pytest.mark.parametrize("name", [*SERVICES, "gateway"])
def test_each_k8s_deployment_gives_its_process_a_valid_configuration(rendered: list[Rendered], name: str) -> None:
    for r in rendered:
        _load(name, _k8s_env(r, name))  # raises ConfigError naming what is missing


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as `docker compose` reads it with the example .env."""
    text, _, _ = interpolate((COMPOSE_DIR / "compose.yaml").read_text(), read_env_file(COMPOSE_DIR / ".env.example"))
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@pytest.mark.parametrize("name", [*SERVICES, "gateway"])
def test_each_compose_service_gets_a_valid_configuration(compose: dict[str, Any], name: str) -> None:
    # An empty value (`${VAR:-}`) reaches the process as an empty string, as docker compose passes it.
    _load(name, {k: "" if v is None else str(v) for k, v in compose["services"][name]["environment"].items()})


def test_a_missing_secret_is_caught(rendered: list[Rendered]) -> None:
    env = _k8s_env(rendered[0], "runners")
    env.pop("INNOSYSTEM_RUNNER_TOKEN_PEPPER")
    with _only(env), pytest.raises(Exception, match="PEPPER"):
        _config_class("runners").from_env()
