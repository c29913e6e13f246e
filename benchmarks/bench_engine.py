"""Engine benchmark: glmserve's engine against HF `generate`, in one run so the ratios hold.

    python -m benchmarks.bench_engine                       # default model, CPU: the table in docs/BENCHMARKS.md
    python -m benchmarks.bench_engine --device cuda         # the same on a GPU (bf16)
    python -m benchmarks.bench_engine --skip-hf --requests 16

Measures: 64 requests x 128 output tokens at 32 concurrent sequences (tok/s, TTFT p50/p90), one request
alone (tok/s, TTFT of a 40-token prompt), the TTFT gain of a 1,000-token shared prefix, then HF batch 1
(sequential) and HF static batch 32 in a child process (two torch threads' OpenMP teams in one process
would slow both). On CPU it first prints the host's limits (benchmarks/host_limits.py: copy bandwidth,
fp32/bf16 matmul GFLOP/s) and the batch-1 bound: the bytes a decode step reads from the weights (not the
embedding table) over the copy bandwidth.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

TOPICS = ["the ocean", "volcanoes", "the history of tea", "black holes", "bicycles", "honeybees", "the Roman empire",
          "machine learning", "coffee", "mountains", "jazz music", "the moon", "rainforests", "chess", "bread baking",
          "electric cars"]


def chat_prompts(tokenizer_dir: str, count: int) -> list[list[int]]:
    from model import ChatTemplate, Tokenizer

    template = ChatTemplate(Tokenizer(tokenizer_dir))
    return [template.encode([{"role": "user", "content": f"Write a detailed essay about {TOPICS[i % len(TOPICS)]}, "
                                                          f"part {i // len(TOPICS) + 1}."}]) for i in range(count)]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _one(engine, rid: str, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    from model import SamplingParams

    start = time.perf_counter()
    first = None
    count = 0
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    async for out in engine.generate(rid, prompt, params):
        count += len(out.token_ids)
        if first is None and out.token_ids:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start, count


def streamed_weight_bytes(model) -> int:
    """Bytes one decode step reads from the weights: every projection (each storage once: a tied lm_head
    is the embedding, a packed one its own copy), not the embedding table (one row per token) nor the
    RoPE tables, nor the packed copy a KernelLinear keeps for batches past its kernel's rows (`.above`: a
    one-sequence step reads the plain weight)."""
    seen, total = set(), 0
    for name, module in model.named_modules():
        if name.endswith("embed_tokens") or "above" in name.split("."):
            continue
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for tensor_name, t in tensors:
            try:
                key = t.data_ptr()
            except RuntimeError:  # a oneDNN-packed weight has no plain storage: its own copy
                key = id(t)
            if tensor_name in ("cos_cache", "sin_cache") or key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


async def run_engine(args) -> dict:
    from model import AsyncEngine, EngineConfig

    engine = AsyncEngine.from_model(args.model, EngineConfig(
        max_num_seqs=args.concurrency, max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory=args.kv_cache_mb << 20, device=args.device, dtype=args.dtype,
        greedy_screen=not args.no_greedy_screen))
    prompts = chat_prompts(engine.model_path, args.requests)
    await _one(engine, "warmup", prompts[0], 8)
    result: dict = {"prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
                    "weight_bytes": streamed_weight_bytes(engine.engine.runner.model)}

    sem = asyncio.Semaphore(args.concurrency)

    async def limited(i: int):
        async with sem:
            return await _one(engine, f"c{i}", prompts[i], args.max_tokens)

    start = time.perf_counter()
    runs = await asyncio.gather(*[limited(i) for i in range(args.requests)])
    elapsed = time.perf_counter() - start
    result["concurrent"] = {"tok_s": sum(r[2] for r in runs) / elapsed, "ttft_p50": pct([r[0] for r in runs], 0.5),
                            "ttft_p90": pct([r[0] for r in runs], 0.9), "seconds": elapsed}

    # one request at a time, as many as HF's batch-1 figure runs (one answer alone is a noisy figure)
    solos = [await _one(engine, f"solo{i}", prompts[1 + i], args.max_tokens) for i in range(args.batch1_requests)]
    result["solo"] = {"tok_s": sum(c - 1 for _, _, c in solos) / sum(t - f for f, t, _ in solos),
                      "e2e_tok_s": sum(c for _, _, c in solos) / sum(t for _, t, _ in solos),
                      "requests": len(solos)}
    forty = engine.tokenizer.encode(" ".join(["word"] * 60))[:40]
    ttfts = [(await _one(engine, f"t40-{i}", [forty[0] + i] + forty[1:], 1))[0] for i in range(5)]
    result["solo"]["ttft_40_tokens_ms"] = statistics.median(ttfts) * 1000

    prefix = engine.tokenizer.encode(" ".join(f"Fact {i}: the sky is blue." for i in range(200)))[:1000]
    cold = (await _one(engine, "prefix-cold", prefix + engine.tokenizer.encode(" Question one?"), 1))[0]
    warm = (await _one(engine, "prefix-warm", prefix + engine.tokenizer.encode(" Another question?"), 1))[0]
    result["prefix_1000"] = {"cold_ttft_ms": cold * 1000, "warm_ttft_ms": warm * 1000, "speedup": cold / warm}
    screen = engine.engine.runner.greedy_screen
    result["greedy_screen"] = None if screen is None else {
        "steps": screen.steps, "full_product_steps": screen.fallbacks,
        "candidates_per_step": screen.candidates / max(1, screen.steps - screen.fallbacks)}
    engine.shutdown()
    return result


def run_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from model import EngineConfig, resolve_model_dir

    ec = EngineConfig(device=args.device, dtype=args.dtype)
    path = resolve_model_dir(args.model)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=ec.resolved_dtype()).to(ec.resolved_device()).eval()
    prompts = chat_prompts(path, args.requests)
    dev = ec.resolved_device()

    def gen(batch: list[list[int]]) -> int:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=dev)
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_tokens,
                          min_new_tokens=args.max_tokens, do_sample=False, pad_token_id=0)
        return (out.shape[1] - width) * len(batch)

    gen(prompts[:1])  # warm-up
    start = time.perf_counter()
    n1 = sum(gen([p]) for p in prompts[:args.batch1_requests])
    b1 = n1 / (time.perf_counter() - start)
    start = time.perf_counter()
    n32 = sum(gen(prompts[i:i + 32]) for i in range(0, args.requests, 32))
    return {"hf_batch1_tok_s": b1, "hf_static32_tok_s": n32 / (time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_engine")
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--kv-cache-mb", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch1-requests", type=int, default=3, help="answers one at a time, engine and HF alike")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--no-greedy-screen", action="store_true", help="read the whole lm_head every step")
    p.add_argument("--hf-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hf_only:
        print(json.dumps(run_hf(args)))
        return 0
    # the engine's start-up lines (threads, the CPU choices of model/engine/cpu_choices.py) on stderr
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("glmserve.engine").setLevel(logging.INFO)
    limits = None
    if args.device in ("auto", "cpu"):
        import torch

        if args.device == "cpu" or not torch.cuda.is_available():
            from benchmarks.host_limits import HostLimits

            # in a child process before the engine starts (nothing else shares the cores): measured in this
            # process, its 256 MiB copy buffers left the engine after them 25-30% slower at batch 1 (25 ->
            # 18 tok/s, three runs each; so did a bare 256 MiB torch.ones freed before the engine loaded)
            child = subprocess.run([sys.executable, "-m", "benchmarks.host_limits"], capture_output=True, text=True,
                                   check=True)
            limits = HostLimits(**json.loads(child.stdout.strip().splitlines()[-1]))
            print(limits.describe(), flush=True)
    result = asyncio.run(run_engine(args))
    if limits is not None:
        result["host"] = asdict(limits)
        result["batch1_bound_tok_s"] = limits.batch1_bound_tok_s(result["weight_bytes"])
    if not args.skip_hf:
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_engine", "--hf-only", *(argv or sys.argv[1:])],
                               capture_output=True, text=True, check=True)
        result.update(json.loads(child.stdout.strip().splitlines()[-1]))
    print(json.dumps(result, indent=2))
    print(markdown_table(result, args))
    return 0


def markdown_table(r: dict, args) -> str:
    c, s, pf = r["concurrent"], r["solo"], r["prefix_1000"]
    rows = [
        ("glmserve engine, 32 concurrent", f"{c['tok_s']:.0f} tok/s", f"TTFT p50 {c['ttft_p50']*1000:.0f} ms, "
                                                                       f"p90 {c['ttft_p90']*1000:.0f} ms"),
        ("glmserve engine, alone", f"{s['tok_s']:.1f} tok/s", f"TTFT (40-token prompt) {s['ttft_40_tokens_ms']:.0f} ms"),
        ("1,000-token shared prefix", f"TTFT {pf['cold_ttft_ms']:.0f} -> {pf['warm_ttft_ms']:.0f} ms",
         f"{pf['speedup']:.1f}x faster"),
    ]
    if "batch1_bound_tok_s" in r:
        bound = r["batch1_bound_tok_s"]
        rows.insert(2, ("batch-1 bound (weights / copy bandwidth)",
                        f"{bound:.1f} tok/s ({r['weight_bytes'] / 1e9:.2f} GB at {r['host']['copy_gb_s']:.1f} GB/s)",
                        f"alone = {s['tok_s'] / bound:.0%} of the bound"))
    if "hf_static32_tok_s" in r:
        rows += [("HF generate, batch 1", f"{r['hf_batch1_tok_s']:.1f} tok/s",
                  f"engine alone / HF batch 1 = {s['tok_s'] / r['hf_batch1_tok_s']:.2f}x"),
                 ("HF generate, static batch 32", f"{r['hf_static32_tok_s']:.0f} tok/s",
                  f"engine / HF static = {c['tok_s'] / r['hf_static32_tok_s']:.2f}x")]
    head = (f"{args.requests} requests x {args.max_tokens} output tokens, model {args.model}, "
            f"device {args.device}, dtype {args.dtype}, mean prompt {r['prompt_tokens_mean']:.0f} tokens\n")
    if "host" in r:
        h = r["host"]
        head += (f"host: {h['threads']} threads, copy {h['copy_gb_s']:.1f} GB/s, fp32 matmul {h['fp32_gflop_s']:.0f} "
                 f"GFLOP/s, bf16 matmul {h['bf16_gflop_s']:.0f} GFLOP/s\n")
    head += "\n"
    return head + "| run | throughput | latency |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c_} |" for a, b, c_ in rows)


if __name__ == "__main__":
    sys.exit(main())
