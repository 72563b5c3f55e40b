"""The chart's role table (``darkroom.roles`` in _helpers.tpl) is the code's, and the rendered
objects follow it. Needs helm 3 on PATH (skipped otherwise)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from darkroom.contract.roles import ADDRESS_KEYS, DEFAULT_PORTS, ROLE_TABLE, RoleKind

CHART = Path(__file__).resolve().parents[2] / "helm" / "darkroom"
TABLE = re.compile(r'\{\{- define "darkroom\.roles" -\}\}\n(?P<table>.*?)\{\{- end \}\}', re.DOTALL)


def _chart_table() -> list[dict[str, Any]]:
    match = TABLE.search((CHART / "templates" / "_helpers.tpl").read_text())
    assert match, "_helpers.tpl defines no darkroom.roles"
    return yaml.safe_load(match["table"])


def test_the_charts_role_table_is_the_codes() -> None:
    chart = [
        (r["name"], r["port"], r["healthPort"], r["kind"], r["registryKey"], tuple(r["calls"]))
        for r in _chart_table()
    ]
    code = [
        (r.name, r.port, r.health_port, str(r.kind), r.registry_key, r.calls) for r in ROLE_TABLE
    ]
    assert chart == code


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm 3 is not on PATH")
    result = subprocess.run(
        [helm, "template", "darkroom", str(CHART), "--values", "/dev/stdin"],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for doc in documents
        if doc["kind"] == kind
    }


def test_every_role_runs_on_the_codes_port() -> None:
    documents = _render({"metrics": {"serviceMonitor": {"enabled": True}}})
    deployments = _by_kind(documents, "Deployment")
    assert set(deployments) == set(DEFAULT_PORTS)
    for role, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["ports"][0]["containerPort"] == DEFAULT_PORTS[role], role
    services = _by_kind(documents, "Service")
    assert {role: s["spec"]["ports"][0]["port"] for role, s in services.items()} == DEFAULT_PORTS


def test_the_registry_is_seeded_under_the_codes_keys() -> None:
    (configmap,) = [doc for doc in _render({}) if doc["kind"] == "ConfigMap"]
    expected = {key: f"darkroom-{role}:{DEFAULT_PORTS[role]}" for role, key in ADDRESS_KEYS.items()}
    assert configmap["data"] == expected


def test_kinds_decide_services_volumes_and_budgets() -> None:
    documents = _render({})
    kinds = {role.name: role.kind for role in ROLE_TABLE}
    background = {name for name, kind in kinds.items() if kind is RoleKind.BACKGROUND}
    stateful = {name for name, kind in kinds.items() if kind is RoleKind.STATEFUL}
    assert set(_by_kind(documents, "Service")) == set(kinds) - background
    assert set(_by_kind(documents, "PersistentVolumeClaim")) == stateful
    assert set(_by_kind(documents, "PodDisruptionBudget")) == set(kinds) - stateful


SCRIPTS = CHART.parents[1] / "scripts"


@pytest.mark.parametrize("script", ["kind-e2e.sh", "podman-e2e.sh"])
def test_the_scripts_role_lists_are_the_codes(script: str) -> None:
    text = (SCRIPTS / script).read_text()
    (roles,) = re.findall(r"^ROLES=\((.*)\)$", text, re.MULTILINE)
    assert tuple(roles.split()) == tuple(DEFAULT_PORTS)
    for ports in re.findall(r"^declare -A PORTS=\((.*)\)$", text, re.MULTILINE):
        assert dict(re.findall(r"\[(\w+)\]=(\d+)", ports)) == {
            role: str(port) for role, port in DEFAULT_PORTS.items()
        }


def test_each_image_target_exposes_its_roles_port() -> None:
    exposed, stage = {}, ""
    for line in (CHART.parents[1] / "images" / "Dockerfile").read_text().splitlines():
        if match := re.fullmatch(r"FROM \S+ AS (\S+)", line):
            stage = match[1]
        elif match := re.fullmatch(r"EXPOSE (\d+)", line):
            exposed[stage] = int(match[1])
    assert exposed == DEFAULT_PORTS


def test_skaffold_forwards_the_public_roles_ports() -> None:
    skaffold = yaml.safe_load((CHART.parents[1] / "skaffold.yaml").read_text())
    forwarded = {f["resourceName"]: f["port"] for f in skaffold["portForward"]}
    public = [role for role in ROLE_TABLE if role.kind is RoleKind.PUBLIC]
    assert forwarded == {f"darkroom-{role.name}": role.port for role in public}
