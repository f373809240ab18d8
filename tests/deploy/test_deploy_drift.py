"""Drift: the deploy files may name only commands, services, ports, environment variables and
gRPC health service names the code has. Truth comes from the code (see deploy_support)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPOSE_DIR,
    DEPLOY,
    GATEWAY_PORT,
    ROOT,
    RUNNER_TOKENS_SECRET,
    Rendered,
    health_name_ok,
    interpolate,
    is_known_env,
    is_ours,
    pod_specs,
    read_env_file,
    serve_targets,
)

from innosystem.keymanager.command import DEFAULT_PORT as KEYMANAGER_PORT
from innosystem.kit.config import DEFAULT_PORTS, SERVICES
from innosystem.runner.cli import TOKEN_ENV as RUNNER_TOKEN_ENV

Parsers = dict[str, argparse.ArgumentParser]


def _check_command(args: list[str], commands: Parsers, where: str) -> list[str]:
    """The subcommand exists and its own argparse parser accepts every flag and value given."""
    if not args:
        return [f"{where}: no command"]
    command, rest = args[0], [str(a) for a in args[1:]]
    if command not in commands:
        return [f"{where}: `innosystem {command}` is not a subcommand (have: {sorted(commands)})"]
    if command == "serve" and (not rest or set(rest) - serve_targets()):
        return [f"{where}: `innosystem serve {' '.join(rest)}`: choose from {sorted(serve_targets())}"]
    if command == "migrate" and set(rest) - set(SERVICES):
        return [f"{where}: `innosystem migrate {' '.join(rest)}`: unknown service"]
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            commands[command].parse_args(rest)
    except SystemExit:
        return [f"{where}: `innosystem {' '.join(args)}`: {err.getvalue().strip().splitlines()[-1]}"]
    return []


def test_command_check_catches_unknown_flags_and_bad_values(commands: Parsers) -> None:
    assert _check_command(["runner", "--slots", "4", "--drain-grace", "25"], commands, "ok") == []
    assert _check_command(["keymanager", "--port", "50060"], commands, "ok") == []
    for bad in (["runner", "--cores", "4"], ["runner", "--slots", "many"], ["keymanager", "--prot", "1"],
                ["runnr"], ["serve", "runner"], ["migrate", "gateway"]):
        assert _check_command(bad, commands, "bad"), bad


def _listen_port(env: dict[str, Any]) -> int | None:
    listen = env.get("INNOSYSTEM_LISTEN")
    return int(str(listen).rsplit(":", 1)[1]) if listen else None


# ---------------------------------------------------------------- kubernetes


def _configmap_keys(r: Rendered, name: str) -> set[str]:
    return set(r.get("ConfigMap", name)["data"])


def test_k8s_commands_exist(rendered: list[Rendered], commands: Parsers) -> None:
    errors = []
    for r in rendered:
        for obj, spec in pod_specs(r.objects):
            for c in spec["containers"]:
                if is_ours(c["image"]):
                    assert "command" not in c, "the image's ENTRYPOINT is `innosystem`; set args only"
                    errors += _check_command(c["args"], commands, f"{r.name} {obj['metadata']['name']}")
    assert not errors, "\n".join(errors)


def test_k8s_environment_variables_exist(rendered: list[Rendered], known_env: frozenset[str]) -> None:
    errors = []
    for r in rendered:
        for obj, spec in pod_specs(r.objects):
            for c in spec["containers"]:
                if not is_ours(c["image"]):
                    continue
                names = {e["name"] for e in c.get("env", [])} - _expansion_helpers(c)
                for source in c.get("envFrom", []):
                    if "configMapRef" in source:
                        names |= _configmap_keys(r, source["configMapRef"]["name"])
                    else:
                        names |= set(r.get("Secret", source["secretRef"]["name"])["data"])
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in r.get("Secret", ref["name"])["data"], (r.name, ref)
                for volume in spec.get("volumes", []):
                    if "secret" in volume and volume["secret"]["secretName"] != RUNNER_TOKENS_SECRET:
                        r.get("Secret", volume["secret"]["secretName"])  # rendered, or the operator's own
                errors += [f"{r.name} {obj['metadata']['name']}: {n}" for n in sorted(names)
                           if not is_known_env(n, known_env)]
    assert not errors, "variables no code reads:\n" + "\n".join(errors)


def _expansion_helpers(container: dict[str, Any]) -> set[str]:
    """Variables that only feed Kubernetes' `$(NAME)` expansion in another variable of the same
    container, from the pod's own fields (the runner's POD_NAME): the process never reads them."""
    values = " ".join(str(e.get("value", "")) for e in container.get("env", []))
    return {e["name"] for e in container.get("env", [])
            if "fieldRef" in e.get("valueFrom", {}) and f"$({e['name']})" in values}


def test_expansion_helpers_are_only_fieldrefs_used_in_an_expansion() -> None:
    field = {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    used = {"env": [{"name": "POD_NAME", **field}, {"name": "X_FILE", "value": "/t/$(POD_NAME)"}]}
    unused = {"env": [{"name": "POD_NAME", **field}, {"name": "X_FILE", "value": "/t/pod"}]}
    literal = {"env": [{"name": "POD_NAME", "value": "p"}, {"name": "X_FILE", "value": "/t/$(POD_NAME)"}]}
    assert _expansion_helpers(used) == {"POD_NAME"}
    assert _expansion_helpers(unused) == _expansion_helpers(literal) == set()


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


def _serves_metrics(command: str) -> bool:
    """Whether `innosystem <command>` serves Prometheus text: its branch of innosystem/cli.py
    hands telemetry.setup a metrics port."""
    source = (ROOT / "innosystem" / "cli.py").read_text()
    branch = source.split(f'if args.command == "{command}":', 1)[1].split("return", 1)[0]
    return "metrics_port" in branch


def test_runner_and_keymanager_declare_metrics_only_if_served(rendered: list[Rendered]) -> None:
    for r in rendered:
        for obj, spec in pod_specs(r.objects):
            c = spec["containers"][0]
            if not is_ours(c["image"]) or c["args"][0] not in ("runner", "keymanager"):
                continue
            declared = ("metrics" in {p.get("name") for p in c.get("ports", [])}
                        or "prometheus.io/port" in obj["spec"]["template"]["metadata"].get("annotations", {}))
            assert declared == _serves_metrics(c["args"][0]), (r.name, obj["metadata"]["name"])


def test_k8s_runner_pool_reads_one_token_per_pod(rendered: list[Rendered], commands: Parsers) -> None:
    """One token is one runner process (two with the same token supersede each other), so the pool
    is a StatefulSet whose pod runner-N reads key runner-N of the operator's Secret."""
    dev = rendered[0]
    sts = dev.get("StatefulSet", "runner")
    spec = sts["spec"]["template"]["spec"]
    [c] = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    config = next(s["configMapRef"]["name"] for s in c["envFrom"] if "configMapRef" in s)
    assert RUNNER_TOKEN_ENV not in env and RUNNER_TOKEN_ENV not in dev.get("ConfigMap", config)["data"]
    assert dev.get("ConfigMap", config)["data"]["INNOSYSTEM_RUNNERS_ADDR"] == f"runners:{DEFAULT_PORTS['runners']}"
    directory, _, leaf = env[f"{RUNNER_TOKEN_ENV}_FILE"]["value"].rpartition("/")
    helper = re.fullmatch(r"\$\((\w+)\)", leaf)
    assert helper, f"the token file must be named after the pod, got {leaf!r}"
    assert env[helper.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    assert volume["secretName"] == RUNNER_TOKENS_SECRET and not volume.get("optional", False)
    assert volume["defaultMode"] & 0o040 and spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert RUNNER_TOKENS_SECRET not in {s["metadata"]["name"] for s in dev.of_kind("Secret")}, "tokens never in git"
    assert {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
            for h in dev.of_kind("HorizontalPodAutoscaler")} >= {("StatefulSet", "runner")}
    assert "runner" not in {d["metadata"]["name"] for d in dev.of_kind("Deployment")}
    parsed = commands["runner"].parse_args(c["args"][1:])
    assert parsed.drain_grace < spec["terminationGracePeriodSeconds"]
    readme = (DEPLOY / "README.md").read_text()
    assert f"create secret generic {RUNNER_TOKENS_SECRET}" in readme
    assert f"--from-literal={sts['metadata']['name']}-0=" in readme
    assert "livenessProbe" not in c and "readinessProbe" not in c, "a runner serves nothing to probe"


def _keymanager_has_grpc_health() -> bool:
    return "grpc_health" in (ROOT / "innosystem" / "keymanager" / "reference.py").read_text()


def test_k8s_keymanager_matches_the_code(rendered: list[Rendered]) -> None:
    dev = rendered[0]
    deployment = dev.get("Deployment", "keymanager")
    spec = deployment["spec"]["template"]["spec"]
    [c] = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    port = int(env.get("INNOSYSTEM_KEYMANAGER_PORT", {}).get("value", KEYMANAGER_PORT))
    assert port == KEYMANAGER_PORT
    assert env["INNOSYSTEM_KEYMANAGER_HOST"]["value"] == "0.0.0.0"
    assert "secretKeyRef" in env["INNOSYSTEM_KEYMANAGER_SECRET"]["valueFrom"]
    assert c["ports"] == [{"name": "grpc", "containerPort": KEYMANAGER_PORT, "protocol": "TCP"}]
    [service_port] = dev.get("Service", "keymanager")["spec"]["ports"]
    assert service_port["port"] == KEYMANAGER_PORT and service_port["targetPort"] in ("grpc", KEYMANAGER_PORT)
    # Its keys survive the pod: the key file's folder is a mounted PersistentVolumeClaim.
    folder = env["INNOSYSTEM_KEYMANAGER_KEY_FILE"]["value"].rsplit("/", 1)[0]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == folder)
    claim = next(v for v in spec["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    dev.get("PersistentVolumeClaim", claim)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # Probes only of what it serves: no grpc.health service, so no native gRPC probe.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in c and not _keymanager_has_grpc_health():
            assert "grpc" not in c[probe], f"{probe}: the reference key manager has no grpc.health service"
    assert c["livenessProbe"]["exec"]["command"][-1] == str(KEYMANAGER_PORT)
    prod = rendered[1]
    assert not [o for o in prod.objects if o["metadata"]["name"] == "keymanager"], "reference key manager in prod"


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text, _, _ = interpolate((COMPOSE_DIR / "compose.yaml").read_text(), read_env_file(COMPOSE_DIR / ".env.example"))
    return yaml.safe_load(text)


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "build" in s or is_ours(str(s.get("image", "")))}


def test_compose_commands_exist(compose: dict[str, Any], commands: Parsers) -> None:
    errors = []
    for name, svc in _ours(compose).items():
        assert "entrypoint" not in svc
        errors += _check_command(svc["command"], commands, f"compose {name}")
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
    assert exposed == {*DEFAULT_PORTS.values(), GATEWAY_PORT, KEYMANAGER_PORT}
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


def _raw_compose() -> dict[str, Any]:
    return dict(yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text()))


def test_compose_runner(compose: dict[str, Any], commands: Parsers) -> None:
    services = compose["services"]
    runner = services["runner"]
    assert runner["command"][0] == "runner"
    assert runner.get("profiles") == ["runner"], "the runner waits for its token behind the `runner` profile"
    env = runner["environment"]
    assert env["INNOSYSTEM_RUNNERS_ADDR"] == f"runners:{DEFAULT_PORTS['runners']}"
    assert f"${{{RUNNER_TOKEN_ENV}" in _raw_compose()["services"]["runner"]["environment"][RUNNER_TOKEN_ENV]
    assert not {"DATABASE_URL", "REDIS_URL", "INNOSYSTEM_INTERNAL_SECRET"} & env.keys(), "a runner needs none"
    assert runner["depends_on"]["runners"]["condition"] == "service_healthy"
    drain = commands["runner"].parse_args(runner["command"][1:]).drain_grace
    assert drain < int(runner["stop_grace_period"].removesuffix("s"))
    example = (COMPOSE_DIR / ".env.example").read_text()
    assert f"# {RUNNER_TOKEN_ENV}=" in example and "POST" in example and "/v1/runners" in example
    assert f"--profile {runner['profiles'][0]}" in (DEPLOY / "README.md").read_text()


def test_compose_keymanager(compose: dict[str, Any]) -> None:
    services = compose["services"]
    km = services["keymanager"]
    assert km["command"] == ["keymanager"] and "profiles" not in km
    env = km["environment"]
    assert int(env.get("INNOSYSTEM_KEYMANAGER_PORT", KEYMANAGER_PORT)) == KEYMANAGER_PORT
    assert env["INNOSYSTEM_KEYMANAGER_HOST"] == "0.0.0.0"
    assert "${INNOSYSTEM_KEYMANAGER_SECRET" in _raw_compose()["services"]["keymanager"]["environment"][
        "INNOSYSTEM_KEYMANAGER_SECRET"]
    assert "INNOSYSTEM_KEYMANAGER_SECRET" in read_env_file(COMPOSE_DIR / ".env.example")
    volume, target = km["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"], "the key file lives on a named volume"
    assert env["INNOSYSTEM_KEYMANAGER_KEY_FILE"].startswith(target.rstrip("/") + "/")
    test = km["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and test[-1] == str(KEYMANAGER_PORT)
    assert not [n for n, s in services.items() if "keymanager" in s.get("depends_on", {})], "a demo: nothing waits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_keymanager_health_check_is_real(compose: dict[str, Any], rendered: list[Rendered], tmp_path: Path) -> None:
    """The compose healthcheck (the same script as the k8s liveness probe) passes against a real
    `innosystem keymanager` with the right shared secret, and fails with a wrong one or none."""
    script = compose["services"]["keymanager"]["healthcheck"]["test"][3]
    liveness = rendered[0].get("Deployment", "keymanager")["spec"]["template"]["spec"]["containers"][0]
    assert liveness["livenessProbe"]["exec"]["command"][:3] == ["python", "-c", script]
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("INNOSYSTEM_")}
    ready = tmp_path / "ready.json"
    server = subprocess.Popen([sys.executable, "-m", "innosystem.cli", "keymanager", "--host", "127.0.0.1",
                               "--port", str(port), "--key-file", str(tmp_path / "km" / "keys.json"),
                               "--ready-file", str(ready)], env={**base, "INNOSYSTEM_KEYMANAGER_SECRET": secret},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        for _ in range(300):
            if ready.exists() and ready.read_text():
                break
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            subprocess.run(["sleep", "0.1"])
        assert json.loads(ready.read_text())["grpc_port"] == port

        def check(env: dict[str, str], at: int = port) -> int:
            return subprocess.run([sys.executable, "-c", script, str(at)], env={**base, **env}, cwd=ROOT,
                                  capture_output=True, timeout=30).returncode

        assert check({"INNOSYSTEM_KEYMANAGER_SECRET": secret}) == 0
        assert check({"INNOSYSTEM_KEYMANAGER_SECRET": "w" * 64}) != 0
        assert check({}) != 0
        assert check({"INNOSYSTEM_KEYMANAGER_SECRET": secret}, _free_port()) != 0
    finally:
        server.terminate()
        server.wait(timeout=10)
