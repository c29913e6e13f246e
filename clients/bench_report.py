"""Turns per-request timings from `glmserve bench` into percentiles, a table and a JSON report."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds from the moment it was sent."""
    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)  # gaps between successive streamed text chunks
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (n - 1)."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {"mean": sum(values) / len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values)}


def summarize(results: list[RequestResult], duration_s: float, config: dict[str, Any]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    duration_s = max(duration_s, 1e-9)
    return {
        "config": config,
        "duration_s": duration_s,
        "completed": len(ok),
        "errors": len(failed),
        "error_samples": sorted({r.error or "unknown" for r in failed})[:5],
        "requests_per_s": len(ok) / duration_s,
        "output_tokens": output_tokens,
        "prompt_tokens": prompt_tokens,
        "output_tokens_per_s": output_tokens / duration_s,
        "total_tokens_per_s": (output_tokens + prompt_tokens) / duration_s,
        "ttft_s": distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": distribution([gap for r in ok for gap in r.itl_s]),
        "tpot_s": distribution([t for r in ok if (t := r.tpot_s) is not None]),
        "e2e_s": distribution([r.e2e_s for r in ok]),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table for the terminal: throughput first, then latency percentiles in ms."""
    cfg = report["config"]
    lines = [
        f"glmserve bench · {cfg['url']} · model {cfg['model']} · concurrency {cfg['concurrency']}"
        f" · rate {cfg['request_rate']} req/s · max_tokens {cfg['max_tokens']}",
        f"{'requests':<22}{report['completed']} ok, {report['errors']} errors in {report['duration_s']:.2f} s",
        f"{'requests/s':<22}{report['requests_per_s']:.2f}",
        f"{'output tokens/s':<22}{report['output_tokens_per_s']:.1f}",
        f"{'total tokens/s':<22}{report['total_tokens_per_s']:.1f}",
        f"{'tokens in / out':<22}{report['prompt_tokens']} / {report['output_tokens']}",
        "",
        f"{'latency (ms)':<22}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for key, label in (("ttft_s", "TTFT"), ("itl_s", "inter-token"), ("tpot_s", "per output token"),
                       ("e2e_s", "end-to-end")):
        d = report[key]
        lines.append(f"{label:<22}" + "".join(f"{_ms(d[s]):>10}" for s in ("mean", "p50", "p90", "p99", "max")))
    for sample in report["error_samples"]:
        lines.append(f"error: {sample}")
    return "\n".join(lines)
