"""/metrics: vLLM's metric names under `glmserve:`, moving as requests pass."""
from __future__ import annotations

import time

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import user

ENGINE_SERIES = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "num_preemptions_total", "prompt_tokens_total",
                 "generation_tokens_total"]


def scrape(srv) -> dict[tuple[str, tuple], float]:
    resp = httpx.get(srv.base_url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in samples.items()
               if n == "glmserve:" + name and all((k, labels[k]) in lbl for k in labels))


def test_every_vllm_series_is_exposed_with_model_name(tiny_server) -> None:
    samples = scrape(tiny_server)
    names = {n for n, _ in samples}
    for series in ENGINE_SERIES:
        assert "glmserve:" + series in names, series
    assert all(("model_name", "tiny") in lbl for n, lbl in samples if n.split(":")[1] in ENGINE_SERIES)


def test_metrics_move_as_a_request_passes(tiny_server, client: OpenAI) -> None:
    before = scrape(tiny_server)
    resp = client.chat.completions.create(model="tiny", messages=user("count me"), max_tokens=5,
                                          extra_body={"ignore_eos": True})
    after = scrape(tiny_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("request_success_total", finished_reason="length") == 1
    assert delta("generation_tokens_total") >= 5
    assert delta("prompt_tokens_total") >= resp.usage.prompt_tokens - resp.usage.prompt_tokens_details.cached_tokens
    assert delta("prefix_cache_queries_total") >= resp.usage.prompt_tokens
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(hist + "_count") == 1, hist
    assert delta("inter_token_latency_seconds_count") == 4  # 5 tokens, 4 gaps
    assert delta("http_requests_total", route="/v1/chat/completions", status="200", method="POST") == 1
    # the gauges come from the engine's stats, refreshed on its thread just after the last step: wait on them
    deadline = time.monotonic() + 30
    while not (value(after, "num_requests_running") == 0 and value(after, "kv_cache_usage_perc") == 0):
        assert time.monotonic() < deadline, "running / KV gauges never returned to 0"
        time.sleep(0.05)
        after = scrape(tiny_server)


def test_error_statuses_are_counted_by_route(tiny_server) -> None:
    before = scrape(tiny_server)
    httpx.post(tiny_server.base_url + "/v1/chat/completions", json={})
    after = scrape(tiny_server)
    labels = dict(route="/v1/chat/completions", status="401")
    assert value(after, "http_requests_total", **labels) - value(before, "http_requests_total", **labels) == 1
