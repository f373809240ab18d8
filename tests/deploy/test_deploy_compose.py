"""deploy/compose: compose.yaml, interpolated with .env.example the way `docker compose` does it,
parses and validates with the `compose-spec` package (a typed parser of the Compose
Specification that rejects unknown keys and bad values), and its structure is what the
platform needs: healthchecks, start order, volumes, the collector and Jaeger."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml
from compose_spec import PyOptions
from deploy_support import COMPOSE_DIR, DEPLOY, interpolate, read_env_file, registered_health_names

from innosystem.kit.config import SERVICES

COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"


def _load() -> tuple[dict[str, Any], str, set[str], set[str]]:
    text, names, missing = interpolate(COMPOSE_FILE.read_text(), read_env_file(ENV_EXAMPLE))
    return yaml.safe_load(text), text, names, missing


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load()[0]


def test_env_example_sets_every_required_variable_and_nothing_else() -> None:
    _, _, names, missing = _load()
    assert not missing, f"compose.yaml requires {sorted(missing)}: add them to .env.example"
    unused = set(read_env_file(ENV_EXAMPLE)) - names
    assert not unused, f".env.example sets variables compose.yaml never uses: {sorted(unused)}"
    for key, value in read_env_file(ENV_EXAMPLE).items():
        assert "change-me" in value.lower(), f".env.example must hold placeholders only: {key}"


def test_real_env_file_is_git_ignored() -> None:
    assert "compose/.env" in (DEPLOY / ".gitignore").read_text().splitlines()


def test_compose_file_is_valid_compose_spec() -> None:
    _, text, _, _ = _load()
    project = PyOptions(apply_merge=True).from_yaml(text)
    project.validate()
    assert project.name == "innosystem"


def test_compose_spec_validation_rejects_mistakes() -> None:
    for bad in ("services:\n  a:\n    image: x\n    comand: [y]\n",
                "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: service_ready}\n"):
        with pytest.raises(ValueError):
            PyOptions(apply_merge=True).from_yaml(bad).validate()


def test_datastores_have_volumes_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].split(":")[1].split(".")[0] >= "15"
    assert services["valkey"]["image"].startswith(("valkey/valkey:", "redis:7"))
    for name in ("postgres", "valkey"):
        assert services[name]["healthcheck"]["test"]
        volume = services[name]["volumes"][0].split(":")[0]
        assert volume in compose["volumes"]


def test_postgres_compares_text_as_bytes(compose: dict[str, Any]) -> None:
    """The database compose creates has collation C, as the embedded server's (deploy/README.md)."""
    args = compose["services"]["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
    assert "--lc-collate=C" in args.split()


def test_start_order_uses_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = cond["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy, which has no healthcheck"
            if dep == "migrate":
                assert condition == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in SERVICES:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services["gateway"]["depends_on"][name]["condition"] == "service_healthy"


def test_every_process_has_a_health_check(compose: dict[str, Any]) -> None:
    for name in [*SERVICES, "gateway", "keymanager"]:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", name


@pytest.mark.parametrize("name", SERVICES)
def test_service_health_checks_ask_the_services_own_name(compose: dict[str, Any], name: str) -> None:
    """The check's last argument is the health service name; "" (the whole server) was asked by four of five."""
    asked = compose["services"][name]["healthcheck"]["test"][-1]
    assert asked in registered_health_names(name), (name, asked)


def test_only_the_runner_and_the_tester_are_behind_a_profile(compose: dict[str, Any]) -> None:
    """A plain `docker compose up` starts everything but the runner, which needs a token that only
    the running platform issues (README: "Runner pool"), and the tester, which is run on demand;
    no `pending` profile is left."""
    profiled = {name: svc["profiles"] for name, svc in compose["services"].items() if "profiles" in svc}
    assert profiled == {"runner": ["runner"], "tester": ["tester"]}
    tester = compose["services"]["tester"]
    assert tester["command"][0] == "tester" and tester["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert tester["volumes"][0].split(":")[0] in compose["volumes"]
    assert "keymanager-data" in compose["volumes"]


def test_traces_go_through_the_collector_to_jaeger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    endpoint = services["tenancy"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = endpoint.removeprefix("http://").split(":")
    assert host in services and port == "4317"
    mount = services[host]["volumes"][0]
    source, target = mount.split(":")[:2]
    config_file = COMPOSE_DIR / source
    assert config_file.is_file()
    assert services[host]["command"] == [f"--config={target}"]
    config = yaml.safe_load(config_file.read_text())
    assert "4317" in config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    pipes = config["service"]["pipelines"]
    for pipe in pipes.values():
        assert set(pipe["receivers"]) <= set(config["receivers"])
        assert set(pipe.get("processors", [])) <= set(config["processors"])
        assert set(pipe["exporters"]) <= set(config["exporters"])
    jaeger_exporters = [e for e in pipes["traces"]["exporters"] if "jaeger" in config["exporters"][e]["endpoint"]]
    assert jaeger_exporters and config["exporters"][jaeger_exporters[0]]["endpoint"].split(":")[0] in services
    assert any("16686" in p for p in services["jaeger"]["ports"])


def test_docker_compose_config_when_available() -> None:
    """Where the Compose CLI plugin is installed, it must accept the file too (no daemon needed)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose CLI here; validated with compose-spec above")
    result = subprocess.run([docker, "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config",
                             "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
