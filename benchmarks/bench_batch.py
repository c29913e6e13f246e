"""Offline batch vs the HTTP load generator, in one run on the same engine settings: `glmserve bench`
against a live server at --concurrency, then `glmserve run-batch` on the same chat requests (every line
a /v1/chat/completions body) at the same concurrency. Both generate exactly --max-tokens per request
(ignore_eos, greedy), so aggregate output tok/s compare directly.

    python -m benchmarks.bench_batch                               # default model, 500 requests, concurrency 32
    python -m benchmarks.bench_batch --requests 500 --concurrency 32 --max-tokens 16 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clients.bench import BUILTIN_PROMPTS  # noqa: E402  (the prompts `glmserve bench` uses by default)
from tests.helpers.live_server import SubprocessServer  # noqa: E402


def write_inputs(folder: Path, count: int, max_tokens: int) -> tuple[Path, Path]:
    dataset, batch = folder / "prompts.jsonl", folder / "batch.jsonl"
    with open(dataset, "w") as d, open(batch, "w") as b:
        for i in range(count):
            messages = [{"role": "user", "content": f"{BUILTIN_PROMPTS[i % len(BUILTIN_PROMPTS)]} (#{i})"}]
            d.write(json.dumps({"messages": messages}) + "\n")
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
            b.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    return dataset, batch


def run_bench(engine_flags: list[str], dataset: Path, args: argparse.Namespace, report: Path) -> dict:
    with SubprocessServer([*engine_flags, "--self-test", "off", "--log-level", "warning"]) as srv:
        subprocess.run([sys.executable, "-m", "clients.bench", "--url", srv.base_url, "--concurrency",
                        str(args.concurrency), "--requests", str(args.requests), "--max-tokens", str(args.max_tokens),
                        "--ignore-eos", "--dataset", str(dataset), "--json", str(report), "--quiet"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def run_batch(engine_flags: list[str], batch: Path, results: Path, args: argparse.Namespace) -> dict:
    proc = subprocess.run([sys.executable, "-m", "server.batch", "-i", str(batch), "-o", str(results), *engine_flags,
                           "--concurrency", str(args.concurrency), "--no-progress"],
                          cwd=REPO, check=True, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    summary["result_lines"] = sum(1 for _ in open(results))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    engine_flags = ["--model", args.model, "--max-num-seqs", str(args.max_num_seqs), "--max-model-len", "2048"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dataset, batch = write_inputs(folder, args.requests, args.max_tokens)
        started = time.time()
        bench = run_bench(engine_flags, dataset, args, folder / "bench.json")
        batch_summary = run_batch(engine_flags, batch, folder / "results.jsonl", args)
    out = {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
           "bench_output_tok_s": round(bench["output_tokens_per_s"], 1), "bench_completed": bench["completed"],
           "batch_output_tok_s": batch_summary["output_tokens_per_second"], "batch_ok": batch_summary["ok"],
           "batch_result_lines": batch_summary["result_lines"], "wall_s": round(time.time() - started, 1)}
    out["ratio"] = round(out["batch_output_tok_s"] / out["bench_output_tok_s"], 3)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
