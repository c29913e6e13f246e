"""Reading a live server's /metrics in tests."""
from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> dict[str, float]:
    """Sample name{labels} → value, labels sorted: e.g. 'glmserve:request_success_total{finished_reason=abort,...}'."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for key, v in samples.items()
               if key.split("{")[0] == name and all(w in key.split("{", 1)[1].rstrip("}").split(",") for w in want))


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
