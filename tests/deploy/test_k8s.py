"""deploy/k8s: every manifest parses, the objects refer to each other correctly, probes use the
server's real routes (asserted against a live server in test_live_routes.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def load_all() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return load_all()


def deployments(objects: dict) -> list[dict[str, Any]]:
    return [o for (kind, _), o in objects.items() if kind == "Deployment"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_expected_objects(objects: dict) -> None:
    assert {("Deployment", "glmserve"), ("Deployment", "glmserve-gpu"), ("Service", "glmserve"),
            ("HorizontalPodAutoscaler", "glmserve"), ("ConfigMap", "glmserve-config")} <= set(objects)


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name


def test_probes_readiness_ready_liveness_health(objects: dict) -> None:
    for dep in deployments(objects):
        c = container(dep)
        port_names = {p["name"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in port_names
        assert c["resources"]["requests"] and c["resources"]["limits"]


def test_gpu_variant_requests_a_gpu(objects: dict) -> None:
    c = container(objects[("Deployment", "glmserve-gpu")])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "GLMSERVE_DEVICE", "value": "cuda"} in c["env"]


def test_selectors_match_and_do_not_overlap(objects: dict) -> None:
    service = objects[("Service", "glmserve")]
    selectors = []
    for dep in deployments(objects):
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items()  # the Service reaches every variant
        selectors.append((selector, pod_labels))
    (sel_a, pods_a), (sel_b, pods_b) = selectors
    assert not sel_a.items() <= pods_b.items() and not sel_b.items() <= pods_a.items()
    ports = {p["name"] for p in container(objects[("Deployment", "glmserve")])["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_hpa_targets_the_deployment(objects: dict) -> None:
    hpa = objects[("HorizontalPodAutoscaler", "glmserve")]
    target = hpa["spec"]["scaleTargetRef"]
    assert ("Deployment", target["name"]) in objects
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_configmap_keys_are_server_settings(objects: dict) -> None:
    fields = {f"GLMSERVE_{name.upper()}" for name in Settings.model_fields}
    config = objects[("ConfigMap", "glmserve-config")]
    assert set(config["data"]) <= fields
    for dep in deployments(objects):
        refs = [e["configMapRef"]["name"] for e in container(dep)["envFrom"] if "configMapRef" in e]
        assert refs == ["glmserve-config"]
        assert {e["name"] for e in container(dep).get("env", [])} <= fields
