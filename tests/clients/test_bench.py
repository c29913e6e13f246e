"""`glmserve bench` against the live server, with small numbers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.live_server import SubprocessServer

GLMSERVE = str(Path(sys.executable).with_name("glmserve"))


def bench(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GLMSERVE, "bench", "--url", url, "--quiet", *args], capture_output=True, text=True,
                          timeout=120)


def test_bench_reports_throughput_and_latency_percentiles(live_server: SubprocessServer, tmp_path: Path) -> None:
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("\n".join([
        json.dumps({"prompt": "Say hello."}),
        json.dumps({"messages": [{"role": "user", "content": "你好，今天天气怎么样？"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "Red"}]}),
        "What is two plus two?",
    ]), encoding="utf-8")
    report_path = tmp_path / "report.json"
    run = bench(live_server.base_url, "--concurrency", "2", "--requests", "4", "--max-tokens", "6",
                "--dataset", str(dataset), "--request-rate", "20", "--json", str(report_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(report_path.read_text())
    assert (report["completed"], report["errors"]) == (4, 0)
    assert report["config"]["model"] == "default"
    assert 4 <= report["output_tokens"] <= 4 * 6  # usage from the server, capped by max_tokens
    assert report["prompt_tokens"] > 0 and report["output_tokens_per_s"] > 0 and report["requests_per_s"] > 0
    for key in ("ttft_s", "e2e_s"):
        d = report[key]
        assert 0 < d["p50"] <= d["p90"] <= d["p99"] <= d["max"]
    assert report["ttft_s"]["max"] <= report["e2e_s"]["max"]
    assert report["itl_s"]["p50"] > 0
    for label in ("requests/s", "output tokens/s", "TTFT", "inter-token", "end-to-end", "p99"):
        assert label in run.stdout


def test_bench_counts_errors_and_prints_json_on_stdout(live_server: SubprocessServer) -> None:
    run = bench(live_server.base_url, "--model", "no-such-model", "--requests", "3", "--concurrency", "3",
                "--json", "-")
    assert run.returncode == 1  # nothing completed
    report = json.loads(run.stdout)
    assert (report["completed"], report["errors"]) == (0, 3)
    assert "404" in report["error_samples"][0] or "model" in report["error_samples"][0]
    assert "3 errors" in run.stderr  # the table goes to stderr when JSON takes stdout
