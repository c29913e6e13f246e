"""deploy/docker-compose.yml: validated by docker-compose when installed, and checked for what operators rely on."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SERVERS = ("glmserve", "glmserve-gpu", "glmserve-replica")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def docker_compose() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1): both validate a file without an engine."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_every_profile() -> None:
    cmd = docker_compose()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (make test-tools installs it)")
    base = [*cmd, "-f", str(COMPOSE), "--profile", "gpu", "--profile", "scale"]
    quiet = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, cwd=DEPLOY)
    assert quiet.returncode == 0, quiet.stderr
    names = subprocess.run([*base, "config", "--services"], capture_output=True, text=True, cwd=DEPLOY)
    assert set(names.stdout.split()) == {*SERVERS, "lb", "prometheus", "grafana"}


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    for name in SERVERS:
        assert "/health" in " ".join(compose["services"][name]["healthcheck"]["test"])


def test_ports_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "8000:8000" in services["glmserve"]["ports"]
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]
    assert "8080:8080" in services["lb"]["ports"]
    assert "ports" not in services["glmserve-replica"]  # replicas are reached through nginx only
    for name in SERVERS:
        assert "models:/models" in services[name]["volumes"]
    assert {"models", "prometheus-data", "grafana-data"} <= set(compose["volumes"])


def test_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_gpu_profile_reserves_a_gpu(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["glmserve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert gpu["environment"]["GLMSERVE_DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_scale_profile_is_replicas_behind_least_conn_nginx_without_buffering(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["glmserve-replica"]["profiles"] == ["scale"] == services["lb"]["profiles"]
    assert "GLMSERVE_REPLICAS" in str(services["glmserve-replica"]["deploy"]["replicas"])
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstream = re.search(r"upstream glmserve \{(.*?)\}", conf, re.S).group(1)
    assert "least_conn;" in upstream and "glmserve-replica:8000" in upstream
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M)


def test_environment_names_are_server_settings(compose: dict[str, Any]) -> None:
    """A misspelt GLMSERVE_* variable would be silently ignored by the server."""
    fields = {f"GLMSERVE_{name.upper()}" for name in Settings.model_fields}
    for name in SERVERS:
        unknown = set(compose["services"][name]["environment"]) - fields
        assert not unknown, f"{name}: {unknown} are not server settings"
