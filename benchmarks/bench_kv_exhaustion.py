"""KV exhaustion: 32 requests, each near max_model_len, on a KV cache that holds about 8 of them.
Run 8 at a time (the client queues the rest), then all 32 at once (the engine admits what fits and
preempts by recompute when the cache runs out). Reports wall time, tokens/s, preemptions and the
slowest request of each run.

    python -m server --model DIR --max-model-len 64 --max-num-seqs 32 --kv-cache-memory 256KiB \\
        --api-key sk-bench --self-test off --port 8321 &
    python -m benchmarks.bench_kv_exhaustion --base-url http://127.0.0.1:8321 --api-key sk-bench

Each request asks for exactly the tokens its prompt leaves in the context (ignore_eos).

The live test tests/reliability/test_kv_exhaustion.py runs the same two phases (run_phase) on a
tiny model.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx


@dataclass
class PhaseResult:
    concurrency: int
    seconds: float
    latencies: list[float]  # per request, from the start of the phase
    completion_tokens: list[int]
    prompt_tokens: list[int]
    finish_reasons: list[str]
    preemptions: int

    @property
    def tokens_per_s(self) -> float:
        return sum(self.completion_tokens) / self.seconds

    def line(self) -> str:
        return (f"{len(self.latencies)} requests, {self.concurrency} at a time: {self.seconds:.2f} s, "
                f"{self.tokens_per_s:.0f} tok/s, {self.preemptions} preemptions, slowest request "
                f"{max(self.latencies):.2f} s")


def _preemptions(client: httpx.Client, base_url: str) -> int:
    return client.get(base_url + "/ready").json()["engine"]["num_preemptions"]


def run_phase(base_url: str, api_key: str, concurrency: int, num_requests: int, prompt: str,
              max_tokens: int, model: str = "tiny") -> PhaseResult:
    """num_requests chat completions (ignore_eos, so each generates exactly max_tokens), at most
    `concurrency` in flight."""
    headers = {"Authorization": f"Bearer {api_key}"}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0}
    with httpx.Client(timeout=600, headers=headers) as client:
        before = _preemptions(client, base_url)
        started = time.monotonic()

        def one(_: int) -> tuple[float, int, int, str]:
            resp = client.post(base_url + "/v1/chat/completions", json=body)
            resp.raise_for_status()
            data = resp.json()
            return (time.monotonic() - started, data["usage"]["completion_tokens"], data["usage"]["prompt_tokens"],
                    data["choices"][0]["finish_reason"])

        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(num_requests)))
        seconds = time.monotonic() - started
        preempted = _preemptions(client, base_url) - before
    return PhaseResult(concurrency, seconds, [r[0] for r in results], [r[1] for r in results],
                       [r[2] for r in results], [r[3] for r in results], preempted)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8321")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--model", default="tiny")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=64, help="the server's --max-model-len")
    p.add_argument("--prompt", default="Tell a story.")
    args = p.parse_args()
    prompt_tokens = run_phase(args.base_url, args.api_key, 1, 1, args.prompt, 1, args.model).prompt_tokens[0]
    max_tokens = args.max_model_len - prompt_tokens
    for concurrency in (8, args.requests):
        result = run_phase(args.base_url, args.api_key, concurrency, args.requests, args.prompt, max_tokens, args.model)
        print(result.line())


if __name__ == "__main__":
    main()
