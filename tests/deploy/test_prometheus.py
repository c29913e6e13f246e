"""deploy/prometheus/prometheus.yml: promtool's own check, and the glmserve scrape job's targets."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"


def test_promtool_check_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool absent: Debian's `prometheus` package provides it (make test-tools)")
    result = subprocess.run([promtool, "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrapes_every_compose_server_on_metrics() -> None:
    job = next(j for j in yaml.safe_load(CONFIG.read_text())["scrape_configs"] if j["job_name"] == "glmserve")
    assert job["metrics_path"] == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"glmserve:8000", "glmserve-gpu:8000"}
    assert job["dns_sd_configs"][0]["names"] == ["glmserve-replica"]  # one scrape per scale replica
