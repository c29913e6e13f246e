"""Prometheus metrics under vLLM's names and meanings, prefixed `glmserve:` instead of `vllm:`, so
dashboards written for vLLM work after a prefix swap. Every series carries `model_name` as vLLM's do.

Engine-wide gauges and counters are read from `engine.stats()` at scrape time (a custom collector);
per-request histograms are observed by the serving code as requests finish.
"""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model import EngineStats

P = "glmserve:"
disable_created_metrics()  # no `*_created` series: vLLM exposes none and they double the scrape size
# vLLM's buckets (v1 loggers), so percentiles compare across servers
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)


class EngineCollector(Collector):
    """Gauges and counters that the engine already keeps: read them when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._stats = stats
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        labels = ["model_name"]
        values = [self._model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(P + name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(P + name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("num_requests_running", "Number of requests in model execution batches.", s.num_running)
        yield gauge("num_requests_waiting", "Number of requests waiting to be processed.", s.num_waiting)
        yield gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_cache_usage)
        yield gauge("kv_cache_free_blocks", "KV-cache blocks not held by a live sequence.", s.num_free_blocks)
        yield gauge("kv_cache_total_blocks", "KV-cache blocks in all.", s.num_total_blocks)
        yield counter("prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      s.prefix_cache_queries)
        yield counter("prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                      s.prefix_cache_hits)
        yield counter("num_preemptions", "Cumulative number of preemptions from the engine.", s.num_preemptions)
        yield counter("prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total)
        yield counter("generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total)
        yield counter("spec_decode_num_draft_tokens", "Speculative (n-gram) tokens proposed.",
                      s.spec_draft_tokens_total)
        yield counter("spec_decode_num_accepted_tokens", "Speculative tokens kept after verification.",
                      s.spec_accepted_tokens_total)


class ServerMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model_name"]
        self.request_success = Counter(P + "request_success", "Count of successfully processed requests.",
                                       m + ["finished_reason"], registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              m, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             m, buckets=ITL_BUCKETS, registry=r)
        self._itl_child = self.itl.labels(model_name)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             m, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(P + "request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", m,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens_hist = Histogram(P + "request_prompt_tokens", "Number of prefill tokens processed.", m,
                                            buckets=(1, 8, 32, 128, 512, 2048, 8192, 32768), registry=r)
        self.generation_tokens_hist = Histogram(P + "request_generation_tokens",
                                                "Number of generation tokens processed.", m,
                                                buckets=(1, 8, 32, 128, 512, 2048, 8192, 32768), registry=r)
        # per LoRA adapter (server/lora.py): engine requests and generated tokens
        self.lora_requests = Counter(P + "lora_requests", "Engine requests per LoRA adapter.",
                                     m + ["lora_name"], registry=r)
        self.lora_generation_tokens = Counter(P + "lora_generation_tokens", "Generated tokens per LoRA adapter.",
                                              m + ["lora_name"], registry=r)
        self.http_requests = Counter(P + "http_requests", "HTTP requests by route, method and status.",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram(P + "http_request_duration_seconds", "HTTP request duration by route.",
                                      ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)

    def attach_engine(self, stats: Callable[[], EngineStats]) -> None:
        self.registry.register(EngineCollector(stats, self.model_name))

    def observe_finished(self, finish_reason: str, ttft: float | None, queue_time: float | None, e2e: float,
                         prompt_tokens: int, output_tokens: int) -> None:
        """One finished choice (vLLM counts each sequence of an n > 1 request)."""
        labels = (self.model_name,)
        self.request_success.labels(self.model_name, finish_reason).inc()
        if ttft is not None:
            self.ttft.labels(*labels).observe(ttft)
        if queue_time is not None:
            self.queue_time.labels(*labels).observe(queue_time)
        self.e2e.labels(*labels).observe(e2e)
        self.prompt_tokens_hist.labels(*labels).observe(prompt_tokens)
        self.generation_tokens_hist.labels(*labels).observe(output_tokens)

    def observe_itl(self, seconds: float, num_tokens: int = 1) -> None:
        child = self._itl_child  # the model name never changes: no labels() lookup per token
        for _ in range(num_tokens):
            child.observe(seconds / num_tokens)

    def observe_lora_request(self, lora_name: str) -> None:
        self.lora_requests.labels(self.model_name, lora_name).inc()

    def observe_lora_tokens(self, lora_name: str, num_tokens: int) -> None:
        if num_tokens:
            self.lora_generation_tokens.labels(self.model_name, lora_name).inc(num_tokens)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
