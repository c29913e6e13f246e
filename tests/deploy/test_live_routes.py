"""The probe and healthcheck paths in Dockerfile, compose and Kubernetes answer 200 on a live server
started with the image's command (`glmserve serve`)."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml

from tests.helpers.live_server import SubprocessServer

ROOT = Path(__file__).resolve().parents[2]


def probe_paths() -> set[str]:
    paths = set(re.findall(r"127\.0\.0\.1:[^/]*(/[a-z]+)", (ROOT / "Dockerfile").read_text()))
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    for service in ("glmserve", "glmserve-gpu", "glmserve-replica"):
        paths |= set(re.findall(r":8000(/[a-z]+)", " ".join(compose["services"][service]["healthcheck"]["test"])))
    for path in (ROOT / "deploy" / "k8s").glob("deployment*.yaml"):
        for container in yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                paths.add(container[probe]["httpGet"]["path"])
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    paths |= {job["metrics_path"] for job in prometheus["scrape_configs"] if "metrics_path" in job}
    return paths


def test_every_probe_path_answers_200(live_server: SubprocessServer) -> None:
    paths = probe_paths()
    assert paths == {"/health", "/ready", "/metrics"}
    for path in sorted(paths):
        r = httpx.get(live_server.base_url + path, timeout=10)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"
