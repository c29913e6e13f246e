"""`glmserve bench`: a streaming load generator for any OpenAI-compatible server (ours, vLLM, llama.cpp ...).

    glmserve bench --url http://127.0.0.1:8000 --concurrency 8 --requests 64 --max-tokens 128 \\
        [--dataset prompts.jsonl] [--request-rate 4] [--model NAME] [--api-key KEY] [--json report.json]

Each request streams; the client times the first text (TTFT), the gaps between text chunks (inter-token
latency) and the whole request, and reads token counts from the final `usage` chunk. Requests start as
a Poisson process at --request-rate (default: all at once), at most --concurrency in flight.
--dataset: JSONL with `prompt`, `messages` or ShareGPT `conversations` per line, or plain text lines.
Prints a table; `--json FILE` also writes the report (`--json -`: JSON on stdout, table on stderr).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

import httpx
from tqdm import tqdm

from clients.api import (APIError, acheck, aiter_sse, api_base, chat_delta_text, default_api_key, default_url,
                         first_model, headers)
from clients.bench_report import RequestResult, format_table, summarize

BUILTIN_PROMPTS = [
    "Explain what a KV cache is in two sentences.",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "What is the capital of France, and why is it famous?",
    "用一句话介绍一下长城。",
    "Summarize the plot of Romeo and Juliet.",
    "Give me a short recipe for pancakes.",
    "Why is the sky blue?",
]


def load_prompts(path: str | None) -> list[list[dict[str, str]]]:
    """Each prompt as chat messages; a dataset line may be JSON (prompt/messages/conversations) or text."""
    if path is None:
        return [[{"role": "user", "content": p}] for p in BUILTIN_PROMPTS]
    prompts = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            if not line.startswith("{"):
                prompts.append([{"role": "user", "content": line}])
                continue
            item = json.loads(line)
            if "messages" in item:
                prompts.append(item["messages"])
            elif "conversations" in item:  # ShareGPT: the first human turn is the prompt
                first = next(t for t in item["conversations"] if t.get("from") in ("human", "user"))
                prompts.append([{"role": "user", "content": first["value"]}])
            else:
                prompts.append([{"role": "user", "content": item["prompt"]}])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def request_body(args: argparse.Namespace, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "stream": True, "max_tokens": args.max_tokens,
                            "temperature": args.temperature, "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        body["messages"] = messages
    else:
        body["prompt"] = "\n".join(m["content"] for m in messages)
    if args.ignore_eos:
        body["ignore_eos"] = True  # a vLLM extension; servers that reject unknown fields will 400
    return body


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      api_key: str | None) -> RequestResult:
    start = time.perf_counter()
    last = start
    result = RequestResult(ok=False, e2e_s=0.0)
    num_chunks = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers(api_key)) as response:
            await acheck(response)
            async for event in aiter_sse(response):
                if chat_delta_text(event):
                    now = time.perf_counter()
                    if result.ttft_s is None:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
                    num_chunks += 1
                usage = event.get("usage")
                if usage:
                    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    result.output_tokens = int(usage.get("completion_tokens") or 0)
        result.output_tokens = result.output_tokens or num_chunks  # servers without usage: count chunks
        result.ok = True
    except (APIError, httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    result.e2e_s = time.perf_counter() - start
    return result


async def run_bench(args: argparse.Namespace) -> tuple[list[RequestResult], float]:
    prompts = load_prompts(args.dataset)
    rng = random.Random(args.seed)
    url = f"{api_base(args.url)}/{'chat/completions' if args.endpoint == 'chat' else 'completions'}"
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        with tqdm(total=args.requests, desc="requests", unit="req", file=sys.stderr,
                  disable=args.quiet) as bar:

            async def gated(i: int) -> RequestResult:
                async with gate:
                    res = await one_request(client, url, request_body(args, prompts[i % len(prompts)]),
                                            args.api_key)
                bar.update(1)
                return res

            start = time.perf_counter()
            tasks = []
            for i in range(args.requests):
                tasks.append(asyncio.create_task(gated(i)))
                if args.request_rate != float("inf") and i < args.requests - 1:
                    await asyncio.sleep(rng.expovariate(args.request_rate))  # Poisson arrivals
            results = await asyncio.gather(*tasks)
            return list(results), time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glmserve bench", description="streaming load generator")
    p.add_argument("--url", default=default_url(), help="server base URL (env GLMSERVE_URL)")
    p.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    p.add_argument("--api-key", default=default_api_key())
    p.add_argument("--concurrency", type=int, default=4, help="most requests in flight")
    p.add_argument("--requests", type=int, default=32, help="how many requests in all")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--dataset", default=None, help="JSONL (prompt/messages/conversations) or text lines")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="req/s, Poisson (default: inf)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (vLLM extension)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write the JSON report; - for stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.request_rate <= 0:
        print("glmserve bench: --concurrency, --requests and --request-rate must be positive", file=sys.stderr)
        return 2
    try:
        if args.model is None:
            with httpx.Client(timeout=30.0) as client:
                args.model = first_model(client, api_base(args.url), args.api_key)
        results, duration = asyncio.run(run_bench(args))
    except (APIError, httpx.HTTPError, OSError, ValueError) as exc:
        print(f"glmserve bench: {exc}", file=sys.stderr)
        return 1
    config = {k: getattr(args, k) for k in ("url", "model", "concurrency", "requests", "max_tokens",
                                            "request_rate", "endpoint", "dataset", "temperature")}
    config["request_rate"] = "inf" if args.request_rate == float("inf") else args.request_rate
    report = summarize(results, duration, config)
    table = format_table(report)
    if args.json == "-":
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(table)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2, ensure_ascii=False)
    return 1 if report["completed"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
