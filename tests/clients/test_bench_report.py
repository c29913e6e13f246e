"""bench_report: percentiles checked against numpy, the report against hand-computed values."""
from __future__ import annotations

import random

import numpy as np
import pytest

from clients.bench_report import RequestResult, format_table, percentile, summarize


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy_linear(n: int) -> None:
    rng = random.Random(n)
    values = [rng.expovariate(3.0) for _ in range(n)]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summary_counts_throughput_and_errors() -> None:
    results = [
        RequestResult(ok=True, e2e_s=1.0, ttft_s=0.2, itl_s=[0.1, 0.3], prompt_tokens=10, output_tokens=5),
        RequestResult(ok=True, e2e_s=2.0, ttft_s=0.4, itl_s=[0.2], prompt_tokens=20, output_tokens=3),
        RequestResult(ok=False, e2e_s=0.1, error="HTTPStatusError: 503"),
    ]
    report = summarize(results, duration_s=2.0, config={"url": "u", "model": "m", "concurrency": 2,
                                                        "request_rate": "inf", "max_tokens": 8})
    assert (report["completed"], report["errors"]) == (2, 1)
    assert report["output_tokens_per_s"] == pytest.approx(4.0)
    assert report["requests_per_s"] == pytest.approx(1.0)
    assert report["ttft_s"]["p50"] == pytest.approx(0.3)
    assert report["itl_s"]["mean"] == pytest.approx(0.2)
    assert report["tpot_s"]["p50"] == pytest.approx(((1.0 - 0.2) / 4 + (2.0 - 0.4) / 2) / 2)
    assert report["error_samples"] == ["HTTPStatusError: 503"]
    table = format_table(report)
    assert "2 ok, 1 errors" in table and "TTFT" in table and "error: HTTPStatusError: 503" in table
