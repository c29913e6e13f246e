"""Where one decode step's time goes: a breakdown of LLMEngine.step() at batch 1 and at 32.

    python -m benchmarks.bench_step                        # default model, fp32, batch 1 and 32
    python -m benchmarks.bench_step --dtype bfloat16 --batch 32 --ops

B greedy requests are prefilled, then every step decodes one token for each. First the step is timed
bare (the reference), then with timers on the engine's parts and forward hooks on every module: a
module's *exclusive* time (its own ops, its children's time taken off) is added to its category:
matmuls (nn.Linear / PackedLinear / KernelLinear, the vocabulary projection apart), attention (the Attention module's
own work: K/V cache write, gather, SDPA, splits), rotary, norms with the residual adds before them
(RMSNorm.add_norm), MLP activation (silu * up), embedding / layer loop. Outside the forward: scheduling, the runner's metadata building, the sampler, the
rest of the postprocessing. Hooks cost a few microseconds each, so the parts add to a bit more than
the bare step. `--ops` adds torch.profiler's top operators by self CPU time.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from benchmarks.bench_engine import chat_prompts


def category(module: nn.Module, name: str) -> str:
    from model.engine.cpu_packing import PackedLinear
    from model.kernels.linear import KernelLinear
    from model.layers.attention import Attention
    from model.layers.mlp import GatedMLP
    from model.layers.norm import RMSNorm
    from model.layers.rotary import RotaryEmbedding
    from model.quant.modules import Int4Linear, Int8Linear

    if isinstance(module, (nn.Linear, PackedLinear, KernelLinear, Int8Linear, Int4Linear)):
        return "matmul: lm_head" if name.endswith("lm_head") else "matmuls: qkv, o, gate_up, down"
    if isinstance(module, Attention):
        return "attention: cache write, gather, SDPA"
    if isinstance(module, RotaryEmbedding):
        return "rotary"
    if isinstance(module, RMSNorm):
        return "norms, with their residual adds"
    if isinstance(module, GatedMLP):
        return "mlp: silu * up"
    return "embedding, layer loop"


class ModuleTimer:
    """Exclusive wall time per category, from forward pre/post hooks on every module."""

    def __init__(self, model: nn.Module) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per open module: [start, children's time]
        self.handles = []
        self.wrapped: list[tuple[nn.Module, str]] = []
        for name, module in model.named_modules():
            cat = category(module, name)
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._make_post(cat)))
            # methods called instead of forward: Attention calls RotaryEmbedding.rotate, DecoderLayer calls
            # RMSNorm.add_norm (the residual add and the norm, one kernel call when the kernels are in)
            for method in ("rotate", "add_norm"):
                if hasattr(module, method):
                    self._wrap(module, method, self._make_post(cat))

    def _wrap(self, module: nn.Module, method: str, post: Callable) -> None:
        inner = getattr(module, method)

        def timed_method(*args):
            self._pre(module, args)
            out = inner(*args)
            post(module, args, out)
            return out
        setattr(module, method, timed_method)
        self.wrapped.append((module, method))

    def _pre(self, module, args) -> None:
        self._stack.append([time.perf_counter(), 0.0])

    def _make_post(self, cat: str) -> Callable:
        def post(module, args, output) -> None:
            start, children = self._stack.pop()
            inclusive = time.perf_counter() - start
            self.totals[cat] += inclusive - children
            if self._stack:
                self._stack[-1][1] += inclusive
        return post

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for module, method in self.wrapped:
            delattr(module, method)  # the class's method again


def timed(totals: dict[str, float], key: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start
    return wrapper


def start_decoding(engine, batch: int, prompts: list[list[int]], max_tokens: int) -> None:
    from model import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"r{i}", prompts[i % len(prompts)], params)
    while any(s.num_uncomputed_tokens != 1 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    for _ in range(3):  # warm-up decode steps (oneDNN primitives for this row count)
        engine.step()


def bare_step_ms(engine, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - start) / steps * 1000


def breakdown(engine, steps: int) -> dict[str, float]:
    """ms per step per part (the parts of LLMEngine.step, with module hooks inside the forward)."""
    runner, post = engine.runner, engine.postprocessor
    outer: dict[str, float] = defaultdict(float)
    saved = (engine.scheduler.schedule, runner.run, runner.model.forward, runner.model.compute_logits,
             post.process, post.sampler.__call__)
    engine.scheduler.schedule = timed(outer, "schedule", saved[0])
    runner.run = timed(outer, "run", saved[1])
    post.process = timed(outer, "postprocess", saved[4])
    post.sampler = _TimedSampler(post.sampler, outer)
    hooks = ModuleTimer(runner.model)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            engine.step()
    finally:
        wall = time.perf_counter() - start
        hooks.remove()
        engine.scheduler.schedule, runner.run = saved[0], saved[1]
        post.process, post.sampler = saved[4], post.sampler.inner
    forward = sum(hooks.totals.values())
    parts = {k: v for k, v in hooks.totals.items()}
    parts["runner: metadata, input tensors, logits rows"] = outer["run"] - forward
    parts["scheduler.schedule"] = outer["schedule"]
    parts["sampler"] = outer["sampler"]
    parts["postprocess: detokenize, outputs"] = outer["postprocess"] - outer["sampler"]
    parts["step: rest"] = wall - outer["run"] - outer["schedule"] - outer["postprocess"]
    parts["total (with hooks)"] = wall
    return {k: v / steps * 1000 for k, v in parts.items()}


class _TimedSampler:
    def __init__(self, inner, totals: dict[str, float]) -> None:
        self.inner, self.totals = inner, totals

    def __call__(self, *args, **kwargs):
        return timed(self.totals, "sampler", self.inner.__call__)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def top_ops(engine, steps: int, count: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=count)


def main(argv: list[str] | None = None) -> int:
    from model import EngineConfig, LLMEngine

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_step")
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch", type=int, action="append", help="decode batch sizes (default: 1 and 32)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--quantization", default="none", help="int8, int4 or auto (EngineConfig.quantization)")
    p.add_argument("--ops", action="store_true", help="also print torch.profiler's top operators")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the start-up choices (cpu_choices.py)
    batches = args.batch or [1, 32]
    engine = LLMEngine.from_model(args.model, EngineConfig(
        max_num_seqs=max(batches), kv_cache_memory=512 << 20, dtype=args.dtype, enforce_eager=args.enforce_eager,
        quantization=args.quantization))
    prompts = chat_prompts(engine.loaded.path, 32)
    results = {}
    for batch in batches:
        # 3 x steps decode steps per batch plus warm-up: room for all of them
        start_decoding(engine, batch, prompts, max_tokens=4 * args.steps + 16)
        bare = bare_step_ms(engine, args.steps)
        parts = breakdown(engine, args.steps)
        parts["bare step (no hooks)"] = bare
        results[batch] = parts
        if args.ops:
            print(f"--- batch {batch}: top operators over {args.steps} steps ---")
            print(top_ops(engine, args.steps))
        for rid in list(engine.postprocessor.requests):
            engine.abort(rid)
    keys = list(results[batches[0]])
    print(f"\nmodel {args.model}, dtype {args.dtype}, {torch.get_num_threads()} threads, "
          f"{args.steps} decode steps per batch size (ms per step)\n")
    print("| part | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{results[b][k]:.2f}" for b in batches) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
