"""Grafana provisioning: the dashboard JSON is valid, covers what operators watch, and every metric
its queries use is really exported by a live server's /metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.live_server import SubprocessServer

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
METRIC = re.compile(r"glmserve:[A-Za-z0-9_:]+")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "glmserve.json").read_text())


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = sources["datasources"][0]["uid"]
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"  # the compose service
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "glmserve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_covers_latency_load_cache_and_errors(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("time to first token", "inter-token latency", "tokens/s", "running / waiting",
                  "kv cache usage", "prefix cache hit rate", "error rate"):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:  # panels sit on Grafana's 24-column grid
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_every_queried_metric_is_exported_by_a_live_server(dashboard: dict[str, Any],
                                                           live_server: SubprocessServer) -> None:
    # one finished request, so the per-request histograms have a labelled child to export
    r = httpx.post(live_server.base_url + "/v1/chat/completions", timeout=120,
                   json={"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert r.status_code == 200
    text = httpx.get(live_server.base_url + "/metrics", timeout=10).text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    queried = {name for expr in exprs(dashboard) for name in METRIC.findall(expr)}
    assert len(queried) >= 10
    missing = queried - exported
    assert not missing, f"dashboard queries metrics the server does not export: {sorted(missing)}"
    variable_query = dashboard["templating"]["list"][0]["definition"]
    assert set(METRIC.findall(variable_query)) <= exported
