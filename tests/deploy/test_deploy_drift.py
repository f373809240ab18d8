"""Drift: the deploy files may name only commands, services, ports, environment variables and
gRPC health service names the code has. Truth comes from the code (see deploy_support)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPOSE_DIR,
    DEPLOY,
    GATEWAY_PORT,
    PENDING_COMMANDS,
    PENDING_PROFILE,
    ROOT,
    Rendered,
    health_name_ok,
    interpolate,
    is_known_env,
    is_ours,
    pod_specs,
    read_env_file,
    serve_targets,
)

from innosystem.kit.config import DEFAULT_PORTS, SERVICES


def _check_command(args: list[str], commands: set[str], gated: bool, where: str) -> list[str]:
    if not args:
        return [f"{where}: no command"]
    command, rest = args[0], args[1:]
    if command in PENDING_COMMANDS and command not in commands:
        return [] if gated else [f"{where}: `innosystem {command}` does not exist yet; keep it gated (pending)"]
    if command not in commands:
        return [f"{where}: `innosystem {command}` is not a subcommand (have: {sorted(commands)})"]
    if command == "serve" and (not rest or set(rest) - serve_targets()):
        return [f"{where}: `innosystem serve {' '.join(rest)}`: choose from {sorted(serve_targets())}"]
    if command == "migrate" and set(rest) - set(SERVICES):
        return [f"{where}: `innosystem migrate {' '.join(rest)}`: unknown service"]
    return []


def _listen_port(env: dict[str, Any]) -> int | None:
    listen = env.get("INNOSYSTEM_LISTEN")
    return int(str(listen).rsplit(":", 1)[1]) if listen else None


# ---------------------------------------------------------------- kubernetes


def _configmap_keys(r: Rendered, name: str) -> set[str]:
    return set(r.get("ConfigMap", name)["data"])


def test_k8s_commands_exist(rendered: list[Rendered], commands: set[str]) -> None:
    errors = []
    for r in rendered:
        for obj, spec in pod_specs(r.objects):
            for c in spec["containers"]:
                if is_ours(c["image"]):
                    assert "command" not in c, "the image's ENTRYPOINT is `innosystem`; set args only"
                    errors += _check_command(c["args"], commands, r.gated and obj["metadata"]["name"] in
                                             {"runner", "keymanager"}, f"{r.name} {obj['metadata']['name']}")
    assert not errors, "\n".join(errors)


def test_k8s_environment_variables_exist(rendered: list[Rendered], known_env: frozenset[str]) -> None:
    errors = []
    for r in rendered:
        for obj, spec in pod_specs(r.objects):
            for c in spec["containers"]:
                if not is_ours(c["image"]):
                    continue
                names = {e["name"] for e in c.get("env", [])}
                for source in c.get("envFrom", []):
                    if "configMapRef" in source:
                        names |= _configmap_keys(r, source["configMapRef"]["name"])
                    else:
                        names |= set(r.get("Secret", source["secretRef"]["name"])["data"])
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in r.get("Secret", ref["name"])["data"], (r.name, ref)
                errors += [f"{r.name} {obj['metadata']['name']}: {n}" for n in sorted(names)
                           if not is_known_env(n, known_env)]
    assert not errors, "variables no code reads:\n" + "\n".join(errors)


def test_k8s_ports_and_health_service_names(rendered: list[Rendered]) -> None:
    errors = []
    for r in rendered:
        for name in SERVICES:
            container = r.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
            assert container["args"] == ["serve", name]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert _listen_port(env) == DEFAULT_PORTS[name]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                grpc = container[probe]["grpc"]
                if grpc["port"] != DEFAULT_PORTS[name]:
                    errors.append(f"{r.name} {name} {probe}: port {grpc['port']}")
                if (why := health_name_ok(name, grpc["service"])) is not None:
                    errors.append(f"{r.name} {name} {probe}: {why}")
        gateway = r.get("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
        assert gateway["args"] == ["serve", "gateway"]
        assert gateway["ports"][0]["containerPort"] == GATEWAY_PORT
        errors += _metrics_port_errors(r)
    assert not errors, "\n".join(errors)


def _metrics_port_errors(r: Rendered) -> list[str]:
    """The `metrics` container port and the scrape annotation are where the process serves
    (INNOSYSTEM_METRICS_PORT from the ConfigMap), on every service and the gateway."""
    errors = []
    for name in [*SERVICES, "gateway"]:
        template = r.get("Deployment", name)["spec"]["template"]
        container = template["spec"]["containers"][0]
        config = next(s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s)
        served = int(r.get("ConfigMap", config)["data"]["INNOSYSTEM_METRICS_PORT"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotated = template["metadata"].get("annotations", {}).get("prometheus.io/port")
        if ports.get("metrics") != served or annotated != str(served):
            errors.append(f"{r.name} {name}: metrics port {ports.get('metrics')}, annotation {annotated}, "
                          f"served on {served}")
    return errors


def test_health_name_check_catches_a_wrong_name() -> None:
    assert health_name_ok("tenancy", "innosystem.tenancy.v1.TenancyService") is None
    assert health_name_ok("tenancy", "") is None
    assert health_name_ok("tenancy", "innosystem.tenancy.v1.TenantService") is not None
    assert health_name_ok("jobs", "innosystem.tenancy.v1.TenancyService") is not None


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text, _, _ = interpolate((COMPOSE_DIR / "compose.yaml").read_text(), read_env_file(COMPOSE_DIR / ".env.example"))
    return yaml.safe_load(text)


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "build" in s or is_ours(str(s.get("image", "")))}


def test_compose_commands_exist(compose: dict[str, Any], commands: set[str]) -> None:
    errors = []
    for name, svc in _ours(compose).items():
        assert "entrypoint" not in svc
        gated = PENDING_PROFILE in svc.get("profiles", [])
        errors += _check_command(svc["command"], commands, gated, f"compose {name}")
    assert not errors, "\n".join(errors)


def test_compose_environment_variables_exist(compose: dict[str, Any], known_env: frozenset[str]) -> None:
    errors = [f"compose {name}: {var}" for name, svc in _ours(compose).items()
              for var in svc.get("environment", {}) if not is_known_env(var, known_env)]
    assert not errors, "variables no code reads:\n" + "\n".join(errors)


def test_compose_ports_addresses_and_health_names(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        svc = services[name]
        assert svc["command"] == ["serve", name]
        assert _listen_port(svc["environment"]) == DEFAULT_PORTS[name]
        addr = svc["environment"][f"INNOSYSTEM_{name.upper()}_ADDR"]
        assert addr == f"{name}:{DEFAULT_PORTS[name]}", addr
        test = svc["healthcheck"]["test"]
        port, health_name = test[-2], test[-1]
        assert int(port) == DEFAULT_PORTS[name]
        assert health_name_ok(name, health_name) is None, health_name_ok(name, health_name)
    gateway = services["gateway"]
    assert gateway["environment"]["INNOSYSTEM_HTTP_PORT"] == str(GATEWAY_PORT)
    assert gateway["ports"][0].endswith(f":{GATEWAY_PORT}")
    assert f":{GATEWAY_PORT}/healthz" in gateway["healthcheck"]["test"][-1]


# ---------------------------------------------------------------- Dockerfile and README


def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_env_ports_and_sources() -> None:
    known = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    instructions = _dockerfile()
    entrypoint = [rest for word, rest in instructions if word == "ENTRYPOINT"][-1]
    assert yaml.safe_load(entrypoint)[0] in known
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {*DEFAULT_PORTS.values(), GATEWAY_PORT}
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerfile_env_names_exist(known_env: frozenset[str]) -> None:
    for word, rest in _dockerfile():
        if word == "ENV":
            for name in re.findall(r"(\w+)=", rest):
                if name.startswith("INNOSYSTEM_"):
                    assert is_known_env(name, known_env), name


def _readme_variables() -> set[str]:
    text = (DEPLOY / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in re.findall(r"^\| `([A-Z_<>]+)`", section, flags=re.M):
        expanded = [row.replace("<SERVICE>", s.upper()) for s in SERVICES] if "<SERVICE>" in row else [row]
        names.update(expanded)
    return names


def test_readme_documents_every_variable_the_code_reads(known_env: frozenset[str]) -> None:
    documented = _readme_variables()
    undocumented = sorted(known_env - documented)
    assert not undocumented, f"deploy/README.md, section Configuration, lacks: {undocumented}"


def test_readme_names_only_variables_the_code_reads(known_env: frozenset[str]) -> None:
    def pending_service_setting(name: str) -> bool:
        # A service's own settings are checked once its config module exists (services/<svc>/config.py).
        return any(name.startswith(f"INNOSYSTEM_{s.upper()}_") and not (ROOT / "services" / s / "config.py").exists()
                   and name not in known_env for s in SERVICES)

    unknown = sorted(n for n in _readme_variables()
                     if not is_known_env(n, known_env) and not pending_service_setting(n))
    assert not unknown, f"deploy/README.md documents variables no code reads: {unknown}"
