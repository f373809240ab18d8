"""deploy/k8s: the overlays render with kustomize (kubectl's, from the dev extra), every object is
valid against the Kubernetes schemas (kubernetes-validate, offline, strict), and the manifests
say what the architecture says: probes, HPAs, PDBs, resources, and only the allowed calls."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import GATEWAY_PORT, Rendered, health_name_ok, is_ours, pod_specs, registered_health_names
from kubernetes_validate import utils as kv

from innosystem.keymanager.command import DEFAULT_PORT as KEYMANAGER_PORT
from innosystem.kit.config import DEFAULT_PORTS, SERVICES

K8S_VERSION = "1.37.0"
# Who calls whom (ARCHITECTURE.md); runner processes call the runners service.
CALLS = {
    ("gateway", s) for s in SERVICES
} | {
    ("tenancy", "billing"), ("tenancy", "keys"),
    ("jobs", "billing"), ("jobs", "tenancy"), ("jobs", "keys"),
    ("runners", "jobs"), ("runners", "tenancy"), ("runners", "keys"),
    ("keys", "jobs"), ("keys", "billing"),
    ("billing", "tenancy"),
}
PROCESSES = [*SERVICES, "gateway"]


def test_overlays_render(rendered: list[Rendered]) -> None:
    names = [r.name for r in rendered]
    assert names == ["dev", "prod"]
    for r in rendered:
        assert len(r.objects) > 40, r.name


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered: list[Rendered]) -> None:
    errors = []
    for r in rendered:
        for obj in r.objects:
            try:
                kv.validate(obj, K8S_VERSION, strict=True)
            except kv.ValidationError as exc:
                errors.append(f"{r.name} {obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_a_schema_error_is_caught() -> None:
    """The validator is really strict: an unknown container field fails."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "a", "comand": ["x"]}]}}}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_has_deployment_service_account_and_pdb(rendered: list[Rendered], name: str) -> None:
    for r in rendered:
        deployment = r.get("Deployment", name)
        spec = deployment["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == name
        r.get("ServiceAccount", name)
        service = r.get("Service", name)
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        pdb = r.get("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("name", SERVICES)
def test_services_have_native_grpc_probes_on_their_port(rendered: list[Rendered], name: str) -> None:
    port = DEFAULT_PORTS[name]
    for r in rendered:
        container = r.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (r.name, name, probe)
            assert "service" in container[probe]["grpc"]
        assert container["ports"][0] == {"name": "grpc", "containerPort": port, "protocol": "TCP"}
        assert [p["name"] for p in container["ports"]] == ["grpc", "metrics"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["INNOSYSTEM_LISTEN"] == f"0.0.0.0:{port}"
        service = r.get("Service", name)
        assert service["spec"]["ports"][0]["port"] == port


@pytest.mark.parametrize("name", SERVICES)
def test_readiness_asks_the_services_own_health_name(rendered: list[Rendered], name: str) -> None:
    """"" is the whole server, which any process on the port answers SERVING; the service's own
    name is SERVING only where that service is registered (and ready), so a pod running the wrong
    thing, or not yet serving its API, takes no traffic. Four of five asked "" before."""
    for r in rendered:
        container = r.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        asked = container["readinessProbe"]["grpc"]["service"]
        assert asked in registered_health_names(name), (r.name, name, asked, health_name_ok(name, asked))


def test_gateway_probes_and_listen_address(rendered: list[Rendered]) -> None:
    for r in rendered:
        container = r.get("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["ports"][0]["containerPort"] == GATEWAY_PORT
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["INNOSYSTEM_GATEWAY_HOST"] == "0.0.0.0"
        assert env["INNOSYSTEM_HTTP_PORT"] == str(GATEWAY_PORT)


def test_addresses_point_at_the_services(rendered: list[Rendered]) -> None:
    for r in rendered:
        [config] = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].startswith("innosystem-config")]
        for name in SERVICES:
            host, port = config["data"][f"INNOSYSTEM_{name.upper()}_ADDR"].rsplit(":", 1)
            service = r.get("Service", host)
            assert [p["port"] for p in service["spec"]["ports"]] == [int(port)] == [DEFAULT_PORTS[name]]


def test_hpas_scale_gateway_jobs_and_runners(rendered: list[Rendered]) -> None:
    for r in rendered:
        targets = {h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")}
        assert {"gateway", "jobs", "runners"} <= targets
        for h in r.of_kind("HorizontalPodAutoscaler"):
            r.get(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
            assert h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"]
    assert "runner" in {h["spec"]["scaleTargetRef"]["name"] for h in rendered[0].of_kind("HorizontalPodAutoscaler")}


def test_dev_runs_the_runner_pool_and_reference_key_manager_and_prod_does_not(rendered: list[Rendered]) -> None:
    dev, prod = rendered[0], rendered[1]
    dev.get("StatefulSet", "runner")
    dev.get("Deployment", "keymanager")
    for name in ("runner", "keymanager"):
        dev.get("ServiceAccount", name)
        assert not [o for o in prod.objects if o["metadata"]["name"] == name], f"prod has {name}"
    pdb = dev.get("PodDisruptionBudget", "runner")
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "runner"}


def test_migrate_job_runs_migrate(rendered: list[Rendered]) -> None:
    for r in rendered:
        container = r.get("Job", "migrate")["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["migrate"]
        assert "DATABASE_URL" in {e["name"] for e in container["env"]}


def test_pods_are_non_root_with_resources(rendered: list[Rendered]) -> None:
    for r in rendered:
        for obj, spec in pod_specs(r.objects):
            for c in spec["containers"]:
                assert c["resources"]["requests"].keys() >= {"cpu", "memory"}, (r.name, obj["metadata"]["name"])
                assert "memory" in c["resources"]["limits"], (r.name, obj["metadata"]["name"])
                if is_ours(c["image"]):
                    assert spec["securityContext"]["runAsNonRoot"] is True
                    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_dev_has_in_cluster_datastores_and_prod_does_not(rendered: list[Rendered]) -> None:
    dev, prod = rendered[0], rendered[1]
    assert {s["metadata"]["name"] for s in dev.of_kind("StatefulSet")} == {"postgres", "redis", "runner"}
    assert prod.of_kind("StatefulSet") == []
    [secret] = prod.of_kind("Secret")
    assert {"DATABASE_URL", "REDIS_URL"} <= secret["data"].keys()


def test_prod_secrets_are_not_committed() -> None:
    from deploy_support import DEPLOY, K8S

    assert "k8s/overlays/*/secrets.env" in (DEPLOY / ".gitignore").read_text().splitlines()
    example = (K8S / "overlays/prod/secrets.env.example").read_text()
    assert example.count("CHANGE-ME") >= 5


# ---------------------------------------------------------------- network policies


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        op = expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def _pod_labels(r: Rendered, name: str) -> dict[str, str]:
    kind = "StatefulSet" if name == "runner" else "Deployment"
    return dict(r.get(kind, name)["spec"]["template"]["metadata"]["labels"])


def _allows(r: Rendered, direction: str, pod: dict[str, str], peer: dict[str, str] | None, port: int) -> bool:
    """Whether NetworkPolicies let `pod` send (Egress) or receive (Ingress) on `port` to/from `peer`.

    `peer` None means an address outside the cluster. Same-namespace pod peers only.
    """
    policies = [p for p in r.of_kind("NetworkPolicy")
                if _labels_match(p["spec"]["podSelector"], pod) and direction in p["spec"]["policyTypes"]]
    if not policies:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in policies:
        for rule in policy["spec"].get(key, []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get(peers_key)
            if not peers:
                return True
            for p in peers:
                if peer is not None and "podSelector" in p and _labels_match(p["podSelector"], peer):
                    return True
                if peer is None and "ipBlock" in p:
                    return True
    return False


def test_network_policies_allow_exactly_the_architecture_calls(rendered: list[Rendered]) -> None:
    for r in rendered:
        allowed = set()
        for src in PROCESSES:
            for dst in SERVICES:
                port = DEFAULT_PORTS[dst]
                src_labels, dst_labels = _pod_labels(r, src), _pod_labels(r, dst)
                if (src != dst and _allows(r, "Egress", src_labels, dst_labels, port)
                        and _allows(r, "Ingress", dst_labels, src_labels, port)):
                    allowed.add((src, dst))
        assert allowed == CALLS, f"{r.name}: extra {allowed - CALLS}, missing {CALLS - allowed}"


def test_network_policies_datastores_dns_and_key_managers(rendered: list[Rendered]) -> None:
    for r in rendered:
        for name in [*PROCESSES, "migrate"]:
            labels = (r.get("Job", "migrate")["spec"]["template"]["metadata"]["labels"] if name == "migrate"
                      else _pod_labels(r, name))
            assert _allows(r, "Egress", labels, None, 53), (r.name, name, "dns")
            if name != "gateway":
                for port in (5432, 6379):
                    assert _allows(r, "Egress", labels, None, port), (r.name, name, port)
        assert _allows(r, "Egress", _pod_labels(r, "keys"), None, 443), "keys -> customer key managers"
        assert _allows(r, "Egress", _pod_labels(r, "jobs"), None, 443), "jobs -> customer webhooks"
        for name in ("tenancy", "billing", "runners"):
            assert not _allows(r, "Egress", _pod_labels(r, name), None, 443), name
        assert _allows(r, "Ingress", _pod_labels(r, "gateway"), None, GATEWAY_PORT)



def test_network_policies_runner_pool_and_reference_key_manager(rendered: list[Rendered]) -> None:
    """Runner processes reach only the runners service; only keys reaches the key manager, on its port."""
    dev = rendered[0]
    runner, keymanager = _pod_labels(dev, "runner"), _pod_labels(dev, "keymanager")
    assert _allows(dev, "Egress", runner, _pod_labels(dev, "runners"), DEFAULT_PORTS["runners"])
    assert _allows(dev, "Ingress", _pod_labels(dev, "runners"), runner, DEFAULT_PORTS["runners"])
    for name in SERVICES:
        if name != "runners":
            assert not _allows(dev, "Egress", runner, _pod_labels(dev, name), DEFAULT_PORTS[name]), name
    assert not _allows(dev, "Egress", runner, None, 443), "runner -> outside"
    keys = _pod_labels(dev, "keys")
    assert _allows(dev, "Egress", keys, keymanager, KEYMANAGER_PORT)
    assert _allows(dev, "Ingress", keymanager, keys, KEYMANAGER_PORT)
    assert not _allows(dev, "Ingress", keymanager, keys, KEYMANAGER_PORT + 1)
    for name in [*PROCESSES, "runner"]:
        if name != "keys":
            assert not _allows(dev, "Ingress", keymanager, _pod_labels(dev, name), KEYMANAGER_PORT), name
    service = dev.get("Service", "keymanager")
    assert [p["port"] for p in service["spec"]["ports"]] == [KEYMANAGER_PORT]


def test_the_dev_postgres_compares_text_as_bytes(rendered: list[Rendered]) -> None:
    """The database the dev overlay creates has collation C, as the embedded server's and
    compose's (deploy/README.md, "PostgreSQL's collation"); prod brings its own PostgreSQL."""
    (dev,) = [r for r in rendered if r.name == "dev"]
    postgres = [c for _, spec in pod_specs(dev.objects) for c in spec["containers"]
                if c["image"].startswith("postgres:")]
    assert len(postgres) == 1
    env = {e["name"]: e.get("value") for e in postgres[0]["env"]}
    assert "--lc-collate=C" in env["POSTGRES_INITDB_ARGS"].split()
