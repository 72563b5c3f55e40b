"""The Helm chart and k8s/, checked offline over the rendered objects.

Needs helm 3 on PATH or next to this Python (scripts/test.sh installs it into its venv with
scripts/install-helm.sh; skipped with the reason otherwise, a failure under CI=true) and
kubernetes-validate, whose bundled schemas decide which Kubernetes versions are checked: 1.23
(the oldest the chart supports) and the newest it ships.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from darkroom.core.config import Config
from darkroom.worker.operations import PEAK_BYTES_PER_PIXEL

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "darkroom"
RELEASE = NAMESPACE = "darkroom"
ROLES = ("registry", "database", "storage", "master", "worker", "frontend")
PORTS = {
    "registry": 3000,
    "database": 3001,
    "storage": 3002,
    "master": 3003,
    "frontend": 8080,
    "worker": 9100,
}
# the probes' own listener (DARKROOM_HEALTH_PORT)
HEALTH_PORTS = {
    "registry": 3100,
    "database": 3101,
    "storage": 3102,
    "master": 3103,
    "frontend": 8180,
    "worker": 9101,
}
# Every API version the chart may use: GA in Kubernetes 1.23 (plus the one optional CRD).
ALLOWED_API_VERSIONS = {
    "v1",
    "apps/v1",
    "rbac.authorization.k8s.io/v1",
    "networking.k8s.io/v1",
    "policy/v1",
    "autoscaling/v2",
    "monitoring.coreos.com/v1",
    "postgresql.cnpg.io/v1",
    "keda.sh/v1alpha1",
}
# Custom resources, rendered only when asked: kubernetes-validate has no schema for them, so
# test_service_monitor, test_cnpg_cluster and test_keda_scaled_object check their shape.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

# Every optional feature switched on at once.
ALL_ON: dict[str, Any] = {
    "imagePullSecrets": [{"name": "regcred"}],
    "image": {"registry": "ghcr.io/acme", "tag": "1.2.3", "pullPolicy": "Always"},
    "auth": {"existingSecret": "my-auth", "apiKeys": {"enabled": True}},
    "podAnnotations": {"example.com/owner": "team-images"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "images", "operator": "Exists", "effect": "NoSchedule"}],
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {"metricsNamespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "registry": {"recreateConfigMap": True, "replicas": 2, "image": "example.com/registry:9"},
    "database": {"persistence": {"existingClaim": "old-database", "storageClass": "fast"}},
    "storage": {"persistence": {"storageClass": "fast", "size": "50Gi"}},
    "master": {"service": {"type": "LoadBalancer"}, "presetsOnly": True},
    "worker": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8},
        "extraEnv": [{"name": "DARKROOM_PNG_COMPRESS_LEVEL", "value": "3"}],
    },
    "frontend": {"service": {"type": "NodePort"}},
}
# The chart's own Secret with API keys, and the optional pieces off.
CHART_SECRET_KEYS: dict[str, Any] = {
    "auth": {"apiKeys": {"enabled": True, "keys": ["k1", "k2"]}},
    "networkPolicy": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "metrics": {"podAnnotations": False},
    "database": {"persistence": {"enabled": False}},
    "storage": {"persistence": {"enabled": False}},
}
# Issue 15: PostgreSQL from an existing Secret with three database replicas (and the egress
# narrowed to a network); PostgreSQL from a CloudNativePG Cluster; two storage replicas on a
# ReadWriteMany volume; the workers scaled by KEDA on the queue.
POSTGRESQL_SECRET: dict[str, Any] = {
    "database": {
        "backend": "postgresql",
        "replicas": 3,
        "postgresql": {
            "existingSecret": "tasks-db",
            "key": "dsn",
            "port": 6432,
            "egressTo": [{"ipBlock": {"cidr": "10.0.12.0/24"}}],
        },
    },
}
POSTGRESQL_CNPG: dict[str, Any] = {
    "database": {"backend": "postgresql", "replicas": 2},
    "postgresql": {
        "cnpg": {
            "enabled": True,
            "instances": 3,
            "imageName": "ghcr.io/cloudnative-pg/postgresql:16",
            "storageClass": "fast",
            "parameters": {"max_connections": "200"},
        }
    },
}
STORAGE_RWX: dict[str, Any] = {
    "storage": {"replicas": 2, "persistence": {"accessMode": "ReadWriteMany", "size": "100Gi"}},
}
# The master and worker pods read and write the images on the storage's claim themselves.
STORAGE_MOUNTED: dict[str, Any] = {
    "storage": {"persistence": {"accessMode": "ReadWriteMany"}, "mountInMasterAndWorker": True},
}
# On a ReadWriteOnce claim (kind's default class): on the storage pod's node, beside the
# user's own affinity.
ZONE_AFFINITY: dict[str, Any] = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
                    ]
                }
            ]
        }
    },
    "podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}
        ]
    },
}
STORAGE_MOUNTED_ONE_NODE: dict[str, Any] = {
    "affinity": ZONE_AFFINITY,
    "storage": {"mountInMasterAndWorker": True},
}
KEDA: dict[str, Any] = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    "worker": {
        "concurrency": 2,
        "keda": {
            "enabled": True,
            "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
            "maxReplicas": 20,
            "threshold": 2,
        },
    },
}
# Issue 16: webhooks with the chart's secret and the default networks; with an existing
# Secret, a dual-stack cluster's networks (a global IPv6 one), allowed internal networks, http://
# and another port too.
WEBHOOKS: dict[str, Any] = {"webhooks": {"enabled": True}}
WEBHOOKS_CUSTOM: dict[str, Any] = {
    "webhooks": {
        "enabled": True,
        "existingSecret": "hook-secrets",
        "secretKey": "signing",
        "clusterNetworks": ["10.42.0.0/16", "10.43.0.0/16", "2001:db8:244::/56"],
        "allow": ["10.20.0.0/16", "fd12:3456::/48"],
        "allowHttp": True,
        "ports": [443, 8443],
        "retrySeconds": 3600,
        "concurrency": 8,
    },
}
SCENARIOS = {
    "defaults": {},
    "all-on": ALL_ON,
    "chart-secret-keys": CHART_SECRET_KEYS,
    "postgresql-secret": POSTGRESQL_SECRET,
    "postgresql-cnpg": POSTGRESQL_CNPG,
    "storage-rwx": STORAGE_RWX,
    "storage-mounted": STORAGE_MOUNTED,
    "storage-mounted-one-node": STORAGE_MOUNTED_ONE_NODE,
    "keda": KEDA,
    "webhooks": WEBHOOKS,
    "webhooks-custom": WEBHOOKS_CUSTOM,
}


@functools.cache
def _find_helm() -> str | None:
    # PATH first, then the venv this Python runs in (scripts/test.sh's, even when not activated).
    return shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))


def _helm() -> str:
    helm = _find_helm()
    if helm is None:
        reason = "helm 3 is not on PATH: scripts/install-helm.sh installs it (scripts/test.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true a chart test may not skip")
        pytest.skip(reason)
    return helm


def test_without_helm_a_chart_test_skips_but_fails_under_ci(monkeypatch) -> None:
    monkeypatch.setitem(globals(), "_find_helm", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"scripts/install-helm\.sh"):
        _helm()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI=true"):
        _helm()


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=60)


@functools.cache
def _render_text(values_json: str, *extra: str) -> str:
    # Values go in as a JSON file (JSON is YAML): no --set escaping to get wrong.
    command = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    if values_json != "{}":
        command += ["--values", "/dev/stdin"]
    result = subprocess.run(
        [_helm(), *command], input=values_json, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    text = _render_text(json.dumps(values or {}, sort_keys=True), *extra)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_fails(*args: str) -> str:
    result = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, "helm template should have failed"
    return result.stderr


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict, dict]]:
    """(name, pod metadata, pod spec) of every Deployment's template and every bare Pod."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            yield obj["metadata"]["name"], template["metadata"], template["spec"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["metadata"], obj["spec"]


def component(metadata: dict[str, Any]) -> str:
    return metadata["labels"]["app.kubernetes.io/component"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def is_test_hook(obj: dict[str, Any]) -> bool:
    return obj["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"


@pytest.fixture(params=list(SCENARIOS), ids=list(SCENARIOS))
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(SCENARIOS[request.param])


# --- lint and schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_lint_strict(scenario: str, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(SCENARIOS[scenario]))
    result = _run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


def _kubernetes_versions() -> list[Any]:
    import kubernetes_validate.utils as kv_utils

    shipped = kv_utils.all_versions()
    installed = importlib.metadata.version("kubernetes-validate")
    newest = shipped[-1]
    versions: list[Any] = [newest]
    if any(v.startswith("1.23.") for v in shipped):
        versions.insert(0, "1.23.0")
    else:
        versions.insert(
            0,
            pytest.param(
                "1.23.0",
                marks=pytest.mark.skip(
                    reason=f"kubernetes-validate {installed} "
                    f"ships schemas {shipped[0]}..{newest}, not 1.23: "
                    "pip install 'kubernetes-validate==1.33.1'"
                ),
            ),
        )
        versions.insert(1, shipped[0])  # at least the oldest schema it has
    return versions


@pytest.mark.parametrize("version", _kubernetes_versions())
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_objects_match_the_kubernetes_schemas(scenario: str, version: str) -> None:
    import kubernetes_validate

    for obj in render(SCENARIOS[scenario]):
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # no schema bundled: test_service_monitor checks its structure
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc}")


def test_only_api_versions_ga_in_1_23(objects: list[dict[str, Any]]) -> None:
    used = {obj["apiVersion"] for obj in objects}
    assert used <= ALLOWED_API_VERSIONS, used - ALLOWED_API_VERSIONS


@pytest.mark.parametrize(
    "setting",
    [
        "bogus=1",
        "master.bogus=1",
        "worker.autoscaling.bogus=1",
        "master.resources.requests.gpu=1",
        "auth.apiKeys.bogus=1",
        "image.pullPolicy=Sometimes",
        "presets.Web=flip",
        "master.presetsOnly=maybe",
        "securityContext.runAsUser=0",
    ],
)
def test_values_schema_rejects_unknown_keys_and_bad_values(setting: str) -> None:
    assert "values don't meet the specifications of the schema" in render_fails("--set", setting)


def test_the_worker_memory_limit_holds_its_task_loops_largest_images() -> None:
    # issue 13: every step's size is checked against the pixel limit, so a task loop's images
    # take at most PEAK_BYTES_PER_PIXEL per pixel of it; the pod must not be OOM-killed first
    worker = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    units = {"Mi": 2**20, "Gi": 2**30}
    limit = worker["resources"]["limits"]["memory"]
    limit_bytes = int(limit[:-2]) * units[limit[-2:]]
    processes_bytes = 150 * 2**20
    needed = worker["concurrency"] * PEAK_BYTES_PER_PIXEL * Config.max_image_pixels
    assert limit_bytes >= needed + processes_bytes


def test_values_yaml_documents_every_knob() -> None:
    """Every line that sets a value has a comment line above it (or is a map's parent)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        if stripped.startswith("- ") or (line.startswith("    ") and ": {" in line):
            continue  # list items, and resources' one-line maps under a commented key
        above = lines[number - 1].strip()
        assert above.startswith("#"), f"values.yaml line {number + 1} has no comment: {line}"


def test_schema_forbids_unknown_keys_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, path
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "#")


# --- security ------------------------------------------------------------------------------


def test_rbac_is_one_role_on_one_configmap(objects: list[dict[str, Any]]) -> None:
    assert not of_kind(objects, "ClusterRole")
    assert not of_kind(objects, "ClusterRoleBinding")
    (role,) = of_kind(objects, "Role")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule
        assert rule["apiGroups"] == [""]
        assert rule["resources"] == ["configmaps"]
    by_name = [rule for rule in role["rules"] if "resourceNames" in rule]
    assert len(by_name) == 1
    assert by_name[0]["resourceNames"] == ["darkroom-registry"]
    assert sorted(by_name[0]["verbs"]) == ["get", "list", "patch", "watch"]
    unnamed = [rule for rule in role["rules"] if "resourceNames" not in rule]
    assert all(rule["verbs"] == ["create"] for rule in unnamed)
    (binding,) = of_kind(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "darkroom-registry", "namespace": NAMESPACE}
    ]


def test_create_on_configmaps_only_when_asked() -> None:
    def verbs(values: dict[str, Any]) -> set[str]:
        (role,) = of_kind(render(values), "Role")
        return {verb for rule in role["rules"] for verb in rule["verbs"]}

    assert "create" not in verbs({})
    assert "create" in verbs({"registry": {"recreateConfigMap": True}})


def test_only_the_registry_mounts_a_token(objects: list[dict[str, Any]]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(objects, "ServiceAccount")}
    for name, metadata, spec in pod_specs(objects):
        assert spec["serviceAccountName"] in accounts, name
        if component(metadata) == "registry":
            assert spec["serviceAccountName"] == "darkroom-registry"
            assert spec["automountServiceAccountToken"] is True
        else:
            assert spec["automountServiceAccountToken"] is False, name
            account = accounts[spec["serviceAccountName"]]
            assert account["automountServiceAccountToken"] is False, name


def test_every_container_meets_the_restricted_profile(objects: list[dict[str, Any]]) -> None:
    for name, _, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "fsGroup" in pod, name
        assert spec["enableServiceLinks"] is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), name
        assert all("hostPath" not in volume for volume in spec.get("volumes", [])), name
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["runAsNonRoot"] is True, name
            assert context.get("privileged", False) is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"


def test_every_service_container_has_probes_and_resources(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    assert sorted(component(d["metadata"]) for d in deployments) == sorted(ROLES)
    for name, metadata, spec in pod_specs(objects):
        for container in spec["containers"]:
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), f"{name}: {kind}"
            if metadata in [d["spec"]["template"]["metadata"] for d in deployments]:
                role = component(metadata)
                assert container["ports"] == [
                    {"name": "http", "containerPort": PORTS[role], "protocol": "TCP"},
                    {"name": "health", "containerPort": HEALTH_PORTS[role], "protocol": "TCP"},
                ]
                env = {var["name"]: var.get("value") for var in container["env"]}
                assert env["DARKROOM_HEALTH_PORT"] == str(HEALTH_PORTS[role]), name
                # probes on the health listener: they answer while the role's port is flooded
                for probe, path in (
                    ("livenessProbe", "/healthz"),
                    ("readinessProbe", "/readyz"),
                    ("startupProbe", "/healthz"),
                ):
                    assert container[probe]["httpGet"] == {"path": path, "port": "health"}, name


def test_no_service_or_network_policy_opens_the_health_port(objects: list[dict[str, Any]]) -> None:
    # the kubelet's probes are not subject to NetworkPolicy; nobody else needs the port
    health_ports = set(HEALTH_PORTS.values())
    for service in of_kind(objects, "Service"):
        for port in service["spec"]["ports"]:
            assert {port["port"], port["targetPort"]} & (health_ports | {"health"}) == set()
    for policy in of_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert {p["port"] for p in rule.get("ports", [])} & health_ports == set()


def test_auth_secret_wired_into_every_pod() -> None:
    for values, secret, with_keys in (
        ({}, "darkroom-auth", False),
        (ALL_ON, "my-auth", True),
        (CHART_SECRET_KEYS, "darkroom-auth", True),
    ):
        objects = render(values)
        for name, metadata, spec in pod_specs(objects):
            env = env_of(spec["containers"][0])
            if component(metadata) != "test":
                token = env["DARKROOM_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert token == {"name": secret, "key": "internal-token"}, name
            if with_keys:
                keys = env["DARKROOM_API_KEYS"]["valueFrom"]["secretKeyRef"]
                assert keys == {"name": secret, "key": "api-keys"}, name
            else:
                assert "DARKROOM_API_KEYS" not in env, name
        secrets = of_kind(objects, "Secret")
        if secret == "my-auth":
            assert not secrets
        else:
            (made,) = secrets
            assert made["metadata"]["name"] == "darkroom-auth"
            assert len(made["data"]["internal-token"]) >= 48
            assert ("api-keys" in made["data"]) is with_keys


def test_presets_are_registry_keys_and_presets_only_reaches_the_master_only() -> None:
    with_presets = {**ALL_ON, "presets": {"web": "thumbnail:800,webp:80", "a-1": "flip"}}
    for values, presets_only in (({}, False), (with_presets, True)):
        objects = render(values)
        (configmap,) = of_kind(objects, "ConfigMap")
        seeded = {k: v for k, v in configmap["data"].items() if k.startswith("preset.")}
        assert seeded == {f"preset.{k}": v for k, v in values.get("presets", {}).items()}
        for name, metadata, spec in pod_specs(objects):
            env = env_of(spec["containers"][0])
            wanted = presets_only and component(metadata) == "master"
            assert ("DARKROOM_PRESETS_ONLY" in env) is wanted, name
            if wanted:
                assert env["DARKROOM_PRESETS_ONLY"]["value"] == "1"


def test_api_keys_need_keys_or_an_existing_secret() -> None:
    stderr = render_fails("--set", "auth.apiKeys.enabled=true")
    assert "auth.apiKeys.keys" in stderr


# --- network policies ----------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _allowed_flows(objects: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """(from component, to component, port) pairs allowed by both ends' policies."""
    policies = of_kind(objects, "NetworkPolicy")
    pods = {component(metadata): metadata["labels"] for _, metadata, _ in pod_specs(objects)}

    def peers_allow(rules: list[dict], direction: str, peer: dict[str, str], port: int) -> bool:
        for rule in rules:
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get(direction)
            if not peers:
                return True  # from/to anywhere
            for entry in peers:
                if set(entry) == {"podSelector"} and _selects(entry["podSelector"], peer):
                    return True
        return False

    flows = set()
    for source, source_labels in pods.items():
        for target, target_labels in pods.items():
            port = PORTS.get(target)
            if port is None or source == target:
                continue
            out = [p for p in policies if _selects(p["spec"]["podSelector"], source_labels)]
            into = [p for p in policies if _selects(p["spec"]["podSelector"], target_labels)]
            egress = any(
                peers_allow(p["spec"].get("egress", []), "to", target_labels, port) for p in out
            )
            ingress = any(
                peers_allow(p["spec"].get("ingress", []), "from", source_labels, port) for p in into
            )
            if egress and ingress:
                flows.add((source, target, port))
    return flows


def test_network_policies_allow_exactly_the_flows_used() -> None:
    objects = render({})
    expected = {
        *((role, "registry", 3000) for role in ROLES if role != "registry"),
        ("master", "database", 3001),
        ("master", "storage", 3002),
        ("worker", "database", 3001),
        ("worker", "storage", 3002),
        ("frontend", "master", 3003),
        ("test", "master", 3003),
    }
    assert _allowed_flows(objects) == expected


def test_default_deny_and_every_pod_selected(objects: list[dict[str, Any]]) -> None:
    policies = of_kind(objects, "NetworkPolicy")
    if not policies:
        return  # networkPolicy.enabled=false
    deny = named(objects, "NetworkPolicy", "darkroom-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for name, metadata, _ in pod_specs(objects):
        labels = metadata["labels"]
        assert _selects(deny["spec"]["podSelector"], labels), name
        own = [p for p in policies if p is not deny and _selects(p["spec"]["podSelector"], labels)]
        assert own, f"{name}: no NetworkPolicy allows its traffic"
        for policy in own:
            egress = policy["spec"]["egress"]
            dns = [rule for rule in egress if {"port": 53, "protocol": "UDP"} in rule["ports"]]
            assert dns and "to" not in dns[0], f"{name}: no DNS egress"


def test_only_the_registry_reaches_the_api_server() -> None:
    objects = render({})
    for policy in of_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            ports = {p["port"] for p in rule["ports"]}
            if 443 in ports or 6443 in ports:
                assert policy["metadata"]["name"] == "darkroom-registry"
                assert "to" not in rule


def test_public_roles_take_ingress_from_anywhere_and_nobody_calls_the_worker() -> None:
    objects = render({})
    for role in ("master", "frontend"):
        rules = named(objects, "NetworkPolicy", f"darkroom-{role}")["spec"]["ingress"]
        assert {"ports": [{"port": PORTS[role], "protocol": "TCP"}]} in rules
    assert named(objects, "NetworkPolicy", "darkroom-worker")["spec"]["ingress"] == []


def test_metrics_namespace_may_scrape_every_role() -> None:
    objects = render(ALL_ON)
    for role in ("registry", "database", "storage", "worker"):
        rules = named(objects, "NetworkPolicy", f"darkroom-{role}")["spec"]["ingress"]
        scrape = [r for r in rules if "namespaceSelector" in r["from"][0]]
        assert scrape and scrape[0]["ports"] == [{"port": PORTS[role], "protocol": "TCP"}], role


# --- wiring --------------------------------------------------------------------------------


def test_labels_on_every_object(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "darkroom"
        assert obj["metadata"]["namespace"] == NAMESPACE
    for deployment in of_kind(objects, "Deployment"):
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        missing = [label for label in RECOMMENDED_LABELS if label not in template_labels]
        assert not missing, deployment["metadata"]["name"]
        assert _selects(deployment["spec"]["selector"], template_labels)


def test_services_and_addresses_follow_the_contract(objects: list[dict[str, Any]]) -> None:
    deployments = {component(d["metadata"]): d for d in of_kind(objects, "Deployment")}
    for role in ("registry", "database", "storage", "master", "frontend"):
        service = named(objects, "Service", f"darkroom-{role}")
        assert service["spec"]["ports"][0]["port"] == PORTS[role]
        template = deployments[role]["spec"]["template"]
        matched = [
            c
            for c, d in deployments.items()
            if all(
                d["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in service["spec"]["selector"].items()
            )
        ]
        assert matched == [role]
        env = env_of(template["spec"]["containers"][0])
        assert env["DARKROOM_ADVERTISE_ADDRESS"]["value"] == f"darkroom-{role}:{PORTS[role]}"
    for role, deployment in deployments.items():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["DARKROOM_REGISTRY_ADDRESS"]["value"] == "darkroom-registry:3000", role
        assert env["DARKROOM_PORT"]["value"] == str(PORTS[role])
        assert env["DARKROOM_HOST"]["value"] == "0.0.0.0"
    registry = env_of(deployments["registry"]["spec"]["template"]["spec"]["containers"][0])
    assert registry["DARKROOM_REGISTRY_BACKEND"]["value"] == "configmap"
    assert registry["DARKROOM_REGISTRY_CONFIGMAP"]["value"] == "darkroom-registry"
    assert registry["DARKROOM_REGISTRY_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    worker = env_of(deployments["worker"]["spec"]["template"]["spec"]["containers"][0])
    assert int(worker["DARKROOM_CONCURRENCY"]["value"]) >= 1
    seed = named(objects, "ConfigMap", "darkroom-registry")
    assert seed["data"] == {
        "databaseAddress": "darkroom-database:3001",
        "storageAddress": "darkroom-storage:3002",
        "masterAddress": "darkroom-master:3003",
        "frontendAddress": "darkroom-frontend:8080",
    }
    assert "annotations" not in seed["metadata"]  # not kept on uninstall


def test_fullname_override_renames_every_service() -> None:
    objects = render({"fullnameOverride": "photos"})
    names = sorted(s["metadata"]["name"] for s in of_kind(objects, "Service"))
    roles = ("database", "frontend", "master", "registry", "storage")
    assert names == [f"photos-{role}" for role in roles]
    seed = named(objects, "ConfigMap", "photos-registry")
    assert seed["data"]["masterAddress"] == "photos-master:3003"


def _shares_state(objects: list[dict[str, Any]], role: str) -> bool:
    """Whether the rendered role's pods share its state: PostgreSQL, or a ReadWriteMany claim."""
    container = named(objects, "Deployment", f"darkroom-{role}")["spec"]["template"]["spec"]
    if "DARKROOM_DATABASE_URL" in env_of(container["containers"][0]):
        return True
    claims = {c["metadata"]["name"]: c for c in of_kind(objects, "PersistentVolumeClaim")}
    (data,) = [v for v in container["volumes"] if v["name"] == "data"]
    claim = claims.get(data.get("persistentVolumeClaim", {}).get("claimName"))
    return claim is not None and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_stateful_roles_keep_one_pod_on_their_volume(objects: list[dict[str, Any]]) -> None:
    claims = {c["metadata"]["name"]: c for c in of_kind(objects, "PersistentVolumeClaim")}
    for role in ("database", "storage"):
        if _shares_state(objects, role):
            continue  # test_postgresql_* and test_storage_replicas_*
        deployment = named(objects, "Deployment", f"darkroom-{role}")
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        spec = deployment["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        (volume,) = [v for v in spec["volumes"] if v["name"] == mounts["/data"]]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim in claims:
                assert claims[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]
        else:
            assert "emptyDir" in volume
    for role in ("registry", "master", "worker", "frontend"):
        spec = named(objects, "Deployment", f"darkroom-{role}")["spec"]["template"]["spec"]
        assert all(v["name"] != "data" for v in spec["volumes"]), role


def test_pod_disruption_budgets_for_stateless_roles() -> None:
    budgets = of_kind(render({}), "PodDisruptionBudget")
    assert sorted(component(b["metadata"]) for b in budgets) == [
        "frontend",
        "master",
        "registry",
        "worker",
    ]
    assert all(b["spec"]["maxUnavailable"] == 1 for b in budgets)


def test_autoscaler_replaces_worker_replicas() -> None:
    assert named(render({}), "Deployment", "darkroom-worker")["spec"]["replicas"] == 2
    objects = render(ALL_ON)
    assert "replicas" not in named(objects, "Deployment", "darkroom-worker")["spec"]
    hpa = named(objects, "HorizontalPodAutoscaler", "darkroom-worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "darkroom-worker",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert not of_kind(render({}), "HorizontalPodAutoscaler")


def test_images_per_role() -> None:
    for values, expected in (
        ({}, "darkroom-{role}:0.1.0"),
        (ALL_ON, "ghcr.io/acme/darkroom-{role}:1.2.3"),
    ):
        for deployment in of_kind(render(values), "Deployment"):
            role = component(deployment["metadata"])
            image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            if role == "registry" and values:
                assert image == "example.com/registry:9"
            else:
                assert image == expected.format(role=role)


def test_prometheus_annotations_and_service_monitor() -> None:
    for deployment in of_kind(render({}), "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        role = component(deployment["metadata"])
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PORTS[role]),
            "prometheus.io/path": "/metrics",
        }
    assert not of_kind(render({}), "ServiceMonitor")
    objects = render(ALL_ON)
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selected = [
        s
        for s in of_kind(objects, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert sorted(component(s["metadata"]) for s in selected) == sorted(ROLES)
    assert all(s["spec"]["ports"][0]["name"] == "http" for s in selected)


def test_helm_test_hook_runs_the_smoke_test() -> None:
    objects = render({})
    (pod,) = [o for o in objects if is_test_hook(o)]
    assert pod["kind"] == "Pod"
    assert pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "darkroom-master:0.1.0"
    assert container["command"][:2] == ["python3", "-c"]
    assert container["command"][2] == (CHART / "files" / "smoke_test.py").read_text()
    assert container["command"][3] == "http://darkroom-master:3003"
    assert not [o for o in render({}, "--skip-tests") if is_test_hook(o)]


def test_helm_test_pod_outlives_the_run_for_its_logs() -> None:
    # `helm test --logs` reads the pod's logs after the run: a pod deleted on success
    # (hook-succeeded) makes it exit 1 every time. before-hook-creation lets a re-run replace it.
    (pod,) = [o for o in render({}) if is_test_hook(o)]
    policy = pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
    assert policy == ["before-hook-creation"]


# --- beyond one machine (issue 15): PostgreSQL, storage replicas, KEDA ------------------------


def _container(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    deployment = named(objects, "Deployment", f"darkroom-{role}")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _rolls_with_a_budget(objects: list[dict[str, Any]], role: str, replicas: int) -> None:
    spec = named(objects, "Deployment", f"darkroom-{role}")["spec"]
    assert spec["replicas"] == replicas
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    budget = named(objects, "PodDisruptionBudget", f"darkroom-{role}")
    assert (
        budget["spec"]["selector"]
        == named(objects, "Deployment", f"darkroom-{role}")["spec"]["selector"]
    )


def test_sqlite_is_the_default_backend_on_its_claim() -> None:
    objects = render({})
    assert "DARKROOM_DATABASE_URL" not in env_of(_container(objects, "database"))
    claim = named(objects, "PersistentVolumeClaim", "darkroom-database")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not [o for o in objects if (o["apiVersion"], o["kind"]) in CRD_KINDS]


def test_postgresql_replicas_read_the_url_from_the_existing_secret() -> None:
    objects = render(POSTGRESQL_SECRET)
    url = env_of(_container(objects, "database"))["DARKROOM_DATABASE_URL"]
    assert url["valueFrom"] == {"secretKeyRef": {"name": "tasks-db", "key": "dsn"}}
    _rolls_with_a_budget(objects, "database", 3)
    claims = [c["metadata"]["name"] for c in of_kind(objects, "PersistentVolumeClaim")]
    assert claims == ["darkroom-storage"]  # the database keeps nothing of its own
    spec = named(objects, "Deployment", "darkroom-database")["spec"]["template"]["spec"]
    (data,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "emptyDir": {}}
    assert not of_kind(objects, "Cluster")


def test_postgresql_from_a_cnpg_cluster_reads_the_operators_secret() -> None:
    objects = render(POSTGRESQL_CNPG)
    url = env_of(_container(objects, "database"))["DARKROOM_DATABASE_URL"]
    secret = {"name": "darkroom-postgresql-app", "key": "uri"}  # what CloudNativePG makes
    assert url["valueFrom"] == {"secretKeyRef": secret}
    _rolls_with_a_budget(objects, "database", 2)
    # an existing Secret still wins over the operator's
    with_secret = {**POSTGRESQL_CNPG, "database": POSTGRESQL_SECRET["database"]}
    url = env_of(_container(render(with_secret), "database"))["DARKROOM_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "tasks-db", "key": "dsn"}


def test_postgresql_pool_size_reaches_the_database_pods() -> None:
    assert "DARKROOM_DATABASE_POOL_SIZE" not in env_of(_container(render({}), "database"))
    pool = env_of(_container(render(POSTGRESQL_SECRET), "database"))["DARKROOM_DATABASE_POOL_SIZE"]
    assert pool == {"name": "DARKROOM_DATABASE_POOL_SIZE", "value": "10"}
    # 3 pods and one rolling in at 49 each fit 200 connections less 3: the edge passes
    values = {**POSTGRESQL_CNPG, "database": {"backend": "postgresql", "replicas": 3}}
    values["database"]["postgresql"] = {"poolSize": 49}
    pool = env_of(_container(render(values), "database"))["DARKROOM_DATABASE_POOL_SIZE"]
    assert pool["value"] == "49"
    # an existing Secret names a server the chart does not size: no check
    values["database"]["postgresql"] = {"poolSize": 500, "existingSecret": "tasks-db"}
    render(values)


def test_cnpg_cluster() -> None:
    (cluster,) = of_kind(render(POSTGRESQL_CNPG), "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["metadata"]["name"] == "darkroom-postgresql"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["imageName"] == "ghcr.io/cloudnative-pg/postgresql:16"
    assert spec["bootstrap"] == {"initdb": {"database": "darkroom", "owner": "darkroom"}}
    assert spec["storage"] == {"size": "10Gi", "storageClass": "fast"}
    assert spec["postgresql"] == {"parameters": {"max_connections": "200"}}
    assert all(isinstance(v, str) for v in spec["postgresql"]["parameters"].values())
    assert {"cpu", "memory"} <= set(spec["resources"]["limits"])
    assert spec["primaryUpdateStrategy"] == "unsupervised"


def _postgresql_egress(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = named(objects, "NetworkPolicy", "darkroom-database")["spec"]["egress"]
    return [r for r in rules if any(p["port"] in (5432, 6432) for p in r["ports"])]


def test_database_pods_may_reach_postgresql_and_nothing_else_new() -> None:
    assert _postgresql_egress(render({})) == []
    (secret_rule,) = _postgresql_egress(render(POSTGRESQL_SECRET))
    assert secret_rule == {
        "ports": [{"port": 6432, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.0.12.0/24"}}],
    }
    (cnpg_rule,) = _postgresql_egress(render(POSTGRESQL_CNPG))
    assert cnpg_rule == {
        "ports": [{"port": 5432, "protocol": "TCP"}],
        "to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "darkroom-postgresql"}}}],
    }
    anywhere = {"database": {"backend": "postgresql", "postgresql": {"existingSecret": "db"}}}
    assert _postgresql_egress(render(anywhere)) == [{"ports": [{"port": 5432, "protocol": "TCP"}]}]
    for values in (POSTGRESQL_SECRET, POSTGRESQL_CNPG):
        objects = render(values)
        others = [
            p for p in of_kind(objects, "NetworkPolicy") if component(p["metadata"]) != "database"
        ]
        assert all(not _postgresql_egress_of(p) for p in others)
        assert _allowed_flows(objects) == _allowed_flows(render({}))


def _postgresql_egress_of(policy: dict[str, Any]) -> list[dict[str, Any]]:
    rules = policy["spec"].get("egress", [])
    return [r for r in rules if any(p["port"] in (5432, 6432) for p in r["ports"])]


def test_storage_replicas_share_a_read_write_many_claim() -> None:
    objects = render(STORAGE_RWX)
    claim = named(objects, "PersistentVolumeClaim", "darkroom-storage")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    _rolls_with_a_budget(objects, "storage", 2)
    spec = named(objects, "Deployment", "darkroom-storage")["spec"]["template"]["spec"]
    (data,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"] == {"claimName": "darkroom-storage"}
    # one ReadWriteMany replica still rolls (the volume allows two pods during the update)
    one = {"storage": {"persistence": {"accessMode": "ReadWriteMany"}}}
    _rolls_with_a_budget(render(one), "storage", 1)


def test_the_master_and_worker_can_mount_the_storages_claim() -> None:
    objects = render(STORAGE_MOUNTED)
    for role in ("master", "worker"):
        spec = named(objects, "Deployment", f"darkroom-{role}")["spec"]["template"]["spec"]
        (images,) = [v for v in spec["volumes"] if v["name"] == "images"]
        assert images["persistentVolumeClaim"] == {"claimName": "darkroom-storage"}
        (container,) = spec["containers"]
        assert {"name": "images", "mountPath": "/images"} in container["volumeMounts"]
        assert {"name": "DARKROOM_STORAGE_VOLUME", "value": "/images"} in container["env"]
    storage = named(objects, "Deployment", "darkroom-storage")["spec"]["template"]["spec"]
    assert all(v["name"] != "images" for v in storage["volumes"])
    existing = {
        "storage": {
            **STORAGE_MOUNTED["storage"],
            "persistence": {"accessMode": "ReadWriteMany", "existingClaim": "shared-images"},
        }
    }
    worker = named(render(existing), "Deployment", "darkroom-worker")["spec"]["template"]["spec"]
    (images,) = [v for v in worker["volumes"] if v["name"] == "images"]
    assert images["persistentVolumeClaim"] == {"claimName": "shared-images"}
    for role in ("master", "worker", "frontend"):  # off by default
        spec = named(render({}), "Deployment", f"darkroom-{role}")["spec"]["template"]["spec"]
        assert all(v["name"] != "images" for v in spec["volumes"])


def _affinity(objects: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    return named(objects, "Deployment", f"darkroom-{role}")["spec"]["template"]["spec"].get(
        "affinity"
    )


def test_on_a_readwriteonce_claim_the_master_and_worker_go_to_the_storage_pods_node() -> None:
    objects = render(STORAGE_MOUNTED_ONE_NODE)
    storage_pods = named(objects, "Deployment", "darkroom-storage")["spec"]["selector"]
    same_node = {"labelSelector": storage_pods, "topologyKey": "kubernetes.io/hostname"}
    for role in ("master", "worker"):
        affinity = _affinity(objects, role)
        assert affinity["nodeAffinity"] == ZONE_AFFINITY["nodeAffinity"]
        required = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert required == [
            *ZONE_AFFINITY["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            same_node,
        ]
    for role in ("registry", "database", "storage", "frontend"):  # the user's affinity alone
        assert _affinity(objects, role) == ZONE_AFFINITY
    # on a ReadWriteMany claim, and by default, no pod is tied to another's node
    for values in (STORAGE_MOUNTED, {}):
        assert all(_affinity(render(values), role) is None for role in ("master", "worker"))


def test_keda_scaled_object_scales_the_workers_on_the_queue() -> None:
    objects = render(KEDA)
    (scaled,) = of_kind(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "darkroom-worker",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 20)  # to zero allowed
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
    assert (metadata["threshold"], metadata["activationThreshold"]) == ("2", "0")
    assert all(isinstance(value, str) for value in metadata.values())  # KEDA wants strings
    assert "replicas" not in named(objects, "Deployment", "darkroom-worker")["spec"]
    assert not of_kind(objects, "HorizontalPodAutoscaler")  # KEDA makes its own
    # the ServiceMonitor that gives the query's labels scrapes the database's Service
    (monitor,) = of_kind(objects, "ServiceMonitor")
    database = named(objects, "Service", "darkroom-database")
    assert _selects(monitor["spec"]["selector"], database["metadata"]["labels"])
    custom = {"worker": {"keda": {**KEDA["worker"]["keda"], "query": "sum(up)"}}}
    (scaled,) = of_kind(render(custom), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["query"] == "sum(up)"


def test_keda_query_counts_the_tasks_the_database_exports(tmp_path: Path) -> None:
    from darkroom.contract.tasks import TaskState
    from darkroom.database.metrics import QueueCollector
    from darkroom.database.store import LeasePolicy, SqliteTaskStore

    store = SqliteTaskStore(tmp_path / "tasks.sqlite3", LeasePolicy())
    store.enqueue(store.create("swap").id)
    exported = {
        (sample.name, sample.labels.get("state")): sample.value
        for family in QueueCollector(store).collect()
        for sample in family.samples
    }
    assert exported[("darkroom_tasks", TaskState.QUEUED.value)] == 1
    assert ("darkroom_tasks", TaskState.IN_PROGRESS.value) in exported
    (scaled,) = of_kind(render(KEDA), "ScaledObject")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    states = f'state=~"{TaskState.QUEUED.value}|{TaskState.IN_PROGRESS.value}"'
    assert query == (
        'sum(max by (state) (darkroom_tasks{namespace="darkroom", '
        f'service="darkroom-database", {states}}}))'
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # no PostgreSQL values without the backend, one SQLite pod
        (["database.replicas=3"], "at '/database/replicas': maximum: got 3, want 1"),
        (["database.postgresql.existingSecret=db"], "/database/postgresql/existingSecret"),
        (
            ["database.postgresql.egressTo[0].ipBlock.cidr=10.0.0.0/8"],
            "/database/postgresql/egressTo",
        ),
        (["postgresql.cnpg.enabled=true"], "at '/postgresql/cnpg/enabled': value must be false"),
        (["database.backend=mysql"], "/database/backend"),
        (
            ["database.backend=postgresql"],
            "database.backend=postgresql needs the URL's Secret: set "
            "database.postgresql.existingSecret, or postgresql.cnpg.enabled=true",
        ),
        # storage replicas only on a shared (ReadWriteMany) claim
        (
            ["storage.replicas=2"],
            "at '/storage/persistence/accessMode': value must be 'ReadWriteMany'",
        ),
        (
            [
                "storage.replicas=2",
                "storage.persistence.accessMode=ReadWriteMany",
                "storage.persistence.enabled=false",
            ],
            "at '/storage/persistence/enabled': value must be true",
        ),
        (["storage.persistence.accessMode=ReadOnlyMany"], "/storage/persistence/accessMode"),
        # the master and worker mount the storage's claim: there must be one
        (
            ["storage.mountInMasterAndWorker=true", "storage.persistence.enabled=false"],
            "at '/storage/persistence/enabled': value must be true",
        ),
        (["affinity.podAfinity.x=1"], "additional properties 'podAfinity'"),
        (["database.persistence.accessMode=ReadWriteMany"], "additional properties 'accessMode'"),
        # KEDA: not beside the CPU autoscaler, and it needs a Prometheus to ask
        (
            [
                "worker.keda.enabled=true",
                "worker.keda.serverAddress=http://p:9090",
                "worker.autoscaling.enabled=true",
            ],
            "at '/worker/autoscaling/enabled': value must be false",
        ),
        (["worker.keda.enabled=true"], "at '/worker/keda/serverAddress': minLength: got 0, want 1"),
        (["worker.keda.serverAddress=prometheus:9090"], "/worker/keda/serverAddress"),
        # the database pods' PostgreSQL pools must fit the chart's own Cluster
        (
            [
                "database.backend=postgresql",
                "postgresql.cnpg.enabled=true",
                "database.replicas=3",
                "database.postgresql.poolSize=25",
            ],
            "database.postgresql.poolSize=25 on 4 database pods (database.replicas, and one more"
            " while rolling) needs 100 PostgreSQL connections; the CloudNativePG Cluster takes 97",
        ),
        (["database.postgresql.poolSize=0"], "/database/postgresql/poolSize"),
        (
            [
                "worker.keda.enabled=true",
                "worker.keda.serverAddress=http://p:9090",
                "worker.keda.minReplicas=5",
                "worker.keda.maxReplicas=2",
            ],
            "worker.keda.minReplicas must not exceed maxReplicas",
        ),
    ],
)
def test_refused_combinations_fail_with_the_reason(settings: list[str], message: str) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    assert message in render_fails(*args)


def test_the_allowed_combinations_pass_the_schema() -> None:
    # the rules' other side: what they must not refuse
    render(
        {
            "database": {
                "backend": "postgresql",
                "replicas": 0,
                "postgresql": {"existingSecret": "db"},
            }
        }
    )
    render(
        {
            "storage": {
                "replicas": 1,
                "persistence": {"accessMode": "ReadWriteMany", "enabled": False},
            }
        }
    )
    render({"worker": {"keda": {"enabled": False, "serverAddress": "http://p:9090"}}})


# --- webhooks (issue 16) ----------------------------------------------------------------------


def _webhook_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The master's DARKROOM_WEBHOOK_* variables with a value (the secret's comes from a Secret)."""
    env = env_of(_container(objects, "master"))
    return {
        k: v["value"] for k, v in env.items() if k.startswith("DARKROOM_WEBHOOK_") and "value" in v
    }


def test_only_the_master_gets_the_webhook_secret_and_settings() -> None:
    for values, secret in (
        (WEBHOOKS, {"name": "darkroom-webhooks", "key": "secret"}),
        (WEBHOOKS_CUSTOM, {"name": "hook-secrets", "key": "signing"}),
        ({}, None),
    ):
        objects = render(values)
        for name, metadata, spec in pod_specs(objects):
            env = env_of(spec["containers"][0])
            webhook_env = [k for k in env if k.startswith("DARKROOM_WEBHOOK_")]
            if component(metadata) == "master" and secret:
                assert env["DARKROOM_WEBHOOK_SECRET"]["valueFrom"] == {"secretKeyRef": secret}
            else:
                assert webhook_env == [], name
        made = [s["metadata"]["name"] for s in of_kind(objects, "Secret")]
        assert ("darkroom-webhooks" in made) is (values is WEBHOOKS), made


def test_the_charts_webhook_secret_is_a_standard_webhooks_secret_the_master_accepts() -> None:
    import base64

    from darkroom.core.signatures import WebhookSigner

    secret = named(render(WEBHOOKS), "Secret", "darkroom-webhooks")
    assert list(secret["data"]) == ["secret"]
    value = base64.b64decode(secret["data"]["secret"]).decode()
    assert value.startswith("whsec_")
    assert len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) == 32
    signed = WebhookSigner(value).headers("msg_1", 1_700_000_000, "{}")
    assert signed["webhook-signature"].startswith("v1,")
    # kept across upgrades the way the auth token is: read back from the cluster first
    template = (CHART / "templates" / "webhook-secret.yaml").read_text()
    assert 'include "darkroom.keptSecretValue"' in template
    assert 'lookup "v1" "Secret"' in (CHART / "templates" / "_helpers.tpl").read_text()


def test_the_webhook_settings_are_what_the_master_reads() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["webhooks"]
    # the chart's default cluster networks are the code's (kubeadm's and kind's)
    assert " ".join(defaults["clusterNetworks"]) == Config.webhook_deny
    env = _webhook_env(render(WEBHOOKS))
    assert "DARKROOM_WEBHOOK_ALLOW" not in env  # empty: the code's default (none)
    config = Config.from_env(env)
    assert (config.webhook_deny, config.webhook_allow) == (Config.webhook_deny, "")
    assert config.webhook_allow_http is False
    assert config.webhook_retry_seconds == defaults["retrySeconds"] == Config.webhook_retry_seconds
    assert config.webhook_concurrency == defaults["concurrency"] == Config.webhook_concurrency
    config = Config.from_env(_webhook_env(render(WEBHOOKS_CUSTOM)))
    assert config.webhook_deny == "10.42.0.0/16 10.43.0.0/16 2001:db8:244::/56"
    assert config.webhook_allow == "10.20.0.0/16 fd12:3456::/48"
    assert config.webhook_allow_http is True
    assert (config.webhook_retry_seconds, config.webhook_concurrency) == (3600.0, 8)


def _webhook_egress(objects: list[dict[str, Any]], role: str = "master") -> list[dict[str, Any]]:
    rules = named(objects, "NetworkPolicy", f"darkroom-{role}")["spec"]["egress"]
    return [r for r in rules if any("ipBlock" in peer for peer in r.get("to", []))]


def test_the_masters_egress_reaches_receivers_outside_the_cluster_networks() -> None:
    assert _webhook_egress(render({})) == []
    (anywhere,) = _webhook_egress(render(WEBHOOKS))
    assert anywhere == {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.96.0.0/12", "10.244.0.0/16"]}},
            {"ipBlock": {"cidr": "::/0"}},
        ],
        "ports": [{"port": 443, "protocol": "TCP"}],
    }
    anywhere, allowed = _webhook_egress(render(WEBHOOKS_CUSTOM))
    ports = [{"port": port, "protocol": "TCP"} for port in (443, 8443, 80)]  # 80: allowHttp
    assert anywhere == {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.42.0.0/16", "10.43.0.0/16"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["2001:db8:244::/56"]}},
        ],
        "ports": ports,
    }
    # the guard lets webhooks.allow through although internal: so does the policy
    assert allowed == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}, {"ipBlock": {"cidr": "fd12:3456::/48"}}],
        "ports": ports,
    }
    # nothing else changes: no other role reaches out, the flows inside the release are the same
    for values in (WEBHOOKS, WEBHOOKS_CUSTOM):
        objects = render(values)
        for role in ROLES:
            if role != "master":
                assert _webhook_egress(objects, role) == [], role
        assert _allowed_flows(objects) == _allowed_flows(render({}))
    # http allowed and 80 listed already: once
    both = {"webhooks": {"enabled": True, "allowHttp": True, "ports": [80, 443]}}
    (rule,) = _webhook_egress(render(both))
    assert rule["ports"] == [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]
    # without NetworkPolicies, the settings still reach the master
    unpoliced = {**WEBHOOKS, "networkPolicy": {"enabled": False}}
    assert "DARKROOM_WEBHOOK_DENY" in _webhook_env(render(unpoliced))


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("webhooks.bogus=1", "additional properties 'bogus'"),
        ("webhooks.clusterNetworks[0]=10.96.0.0", "/webhooks/clusterNetworks/0"),
        ("webhooks.clusterNetworks[0]=10.300.0.0/16", "/webhooks/clusterNetworks/0"),
        ("webhooks.clusterNetworks[0]=fd00::/129", "/webhooks/clusterNetworks/0"),
        ("webhooks.allow[0]=example.com/8", "/webhooks/allow/0"),
        ("webhooks.allowHttp=maybe", "/webhooks/allowHttp"),
        ("webhooks.ports[0]=0", "/webhooks/ports/0"),
        ("webhooks.retrySeconds=0", "/webhooks/retrySeconds"),
        ("webhooks.concurrency=0", "/webhooks/concurrency"),
        ("webhooks.secretKey=", "/webhooks/secretKey"),
    ],
)
def test_values_schema_refuses_bad_webhook_settings(setting: str, where: str) -> None:
    stderr = render_fails("--set", setting)
    assert "values don't meet the specifications of the schema" in stderr
    assert where in stderr


def test_an_empty_cluster_network_list_is_refused() -> None:
    # an empty DARKROOM_WEBHOOK_DENY means the code's default, not "none": the schema says so
    stderr = render_fails("--set-json", "webhooks.clusterNetworks=[]")
    assert "at '/webhooks/clusterNetworks': minItems" in stderr


def test_the_charts_network_lists_build_the_masters_address_policy() -> None:
    import ipaddress

    from darkroom.core.ssrf import AddressPolicy

    env = _webhook_env(render(WEBHOOKS_CUSTOM))
    policy = AddressPolicy.build(env["DARKROOM_WEBHOOK_DENY"], env["DARKROOM_WEBHOOK_ALLOW"])
    # a cluster's global IPv6 pod network: refused only because it is listed
    assert policy.refusal(ipaddress.ip_address("2001:db8:244::5")) == (
        "2001:db8:244::5, a cluster address"
    )
    assert policy.refusal(ipaddress.ip_address("10.20.1.1")) is None  # allowed
    assert policy.refusal(ipaddress.ip_address("93.184.215.14")) is None  # the internet


# --- k8s/ and the smoke script ---------------------------------------------------------------


def test_k8s_manifests_are_up_to_date() -> None:
    _helm()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render-k8s.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in (ROOT / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    objects = [
        doc
        for name in sorted(listed)
        for doc in yaml.safe_load_all((ROOT / "k8s" / name).read_text())
        if doc
    ]
    assert not [o for o in objects if is_test_hook(o)]
    assert not of_kind(objects, "Secret")  # generated from k8s/auth.env
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "darkroom-auth"
    (namespace,) = of_kind(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _smoke_module() -> Any:
    spec = importlib.util.spec_from_file_location("smoke_test", CHART / "files" / "smoke_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_script_checks_the_channel_swap() -> None:
    import io

    from PIL import Image

    smoke = _smoke_module()
    source = smoke.sample_png()
    image = Image.open(io.BytesIO(source)).convert("RGBA")
    swapped = Image.merge("RGBA", [image.getchannel(c) for c in ("G", "R", "B", "A")])
    good = io.BytesIO()
    swapped.save(good, "PNG")
    smoke.check_pixels(source, good.getvalue())
    with pytest.raises(AssertionError, match="pixels differ"):
        smoke.check_pixels(source, source)
    opaque = io.BytesIO()
    swapped.convert("RGB").save(opaque, "PNG")
    with pytest.raises(AssertionError):
        smoke.check_pixels(source, opaque.getvalue())


# --- the ingress example of docs/kubernetes.md ------------------------------------------------


def test_the_documented_ingress_is_valid_and_reaches_the_public_services() -> None:
    import kubernetes_validate

    text = (ROOT / "docs" / "kubernetes.md").read_text()
    head = "apiVersion: networking.k8s.io/v1\nkind: Ingress\n"
    ingress = yaml.safe_load(head + text.split(f"```yaml\n{head}", 1)[1].split("```")[0])
    kubernetes_validate.validate(ingress, "1.23.0", strict=True)
    annotations = ingress["metadata"]["annotations"]
    for limit in ("limit-connections", "limit-rps", "proxy-body-size"):
        assert f"nginx.ingress.kubernetes.io/{limit}" in annotations
    services = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in of_kind(render(), "Service")
    }
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"]["number"] in services[backend["name"]], backend
    upload_limit = int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"][:-1]) * 2**20
    assert upload_limit > Config.max_upload_bytes
