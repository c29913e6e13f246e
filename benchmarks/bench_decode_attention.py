"""Decode attention per layer: the C kernel (model/kernels/attention.py) against the PyTorch path it replaces.

    python -m benchmarks.bench_decode_attention                    # the default model's heads: 9 / 3 x 64
    python -m benchmarks.bench_decode_attention --heads 32 --kv-heads 8 --head-dim 128 --layers 8

Each case times Attention.attend (everything between the qkv and o projections of one layer in a pure
decode step) over `--layers` layers in a row, each with its own paged cache whose blocks are shuffled, so
K/V stream from memory as in a real step rather than sitting in cache. PyTorch paths: RoPE, two index_copy_
cache writes, the block gather, SDPA (or grouped matmuls) with a length mask; the kernel: one fused call.
Reported: microseconds per layer, best of --rounds passes, at the process's torch thread count.
"""
from __future__ import annotations

import argparse
import time

import torch

from model.config import RopeConfig
from model.kernels import attention as kernels
from model.layers.attention import Attention, pure_decode_metadata
from model.layers.rotary import RotaryEmbedding

BLOCK = 16


def make_layers(batch: int, context: int, heads: int, kv_heads: int, head_dim: int, layers: int,
                dtype: torch.dtype = torch.float32):
    rotary = RotaryEmbedding(RopeConfig(), head_dim, context + 1)
    per_seq = -(-context // BLOCK)
    num_blocks = batch * per_seq + 1
    attns = []
    for _ in range(layers):
        attn = Attention(1, heads, kv_heads, head_dim, bias=False, rotary=rotary)
        attn.kv_cache = torch.randn(2, num_blocks, BLOCK, kv_heads, head_dim).to(dtype)
        attns.append(attn)
    tables = torch.randperm(num_blocks)[:batch * per_seq].view(batch, per_seq).contiguous()
    meta = pure_decode_metadata(tables, context, BLOCK)
    positions = meta.decode_context_lens - 1
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * head_dim).to(dtype)
    return attns, qkv, positions, meta


@torch.inference_mode()
def per_layer_us(attns, qkv, positions, meta, path: str, rounds: int) -> float:
    for attn in attns:
        attn.decode_paths = {1: path, 2: path}
    for attn in attns:  # warm-up pass
        attn.attend(qkv, positions, meta)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for attn in attns:
            attn.attend(qkv, positions, meta)
        best = min(best, time.perf_counter() - start)
    return best / len(attns) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_decode_attention")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--case", action="append", help="BATCHxCONTEXT (default 1x128 1x512 32x128 32x256)")
    p.add_argument("--paths", default="sdpa,grouped,kernel", help="decode paths (bf16 also has sdpa_fp32)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own count)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not kernels.available():
        print("the attention kernel is unavailable on this host (no compiler, or GLMSERVE_KERNELS=0)")
        return 1
    cases = [tuple(int(v) for v in c.split("x")) for c in (args.case or ["1x128", "1x512", "32x128", "32x256"])]
    paths = args.paths.split(",")
    print(f"{args.dtype}, heads {args.heads} / kv {args.kv_heads} x {args.head_dim}, {args.layers} layers, "
          f"{torch.get_num_threads()} threads: us per layer (best of {args.rounds})\n")
    print("| sequences x context | " + " | ".join(paths) + " | kernel speed-up |")
    print("|---" * (len(paths) + 2) + "|")
    for batch, context in cases:
        attns, qkv, positions, meta = make_layers(batch, context, args.heads, args.kv_heads, args.head_dim,
                                                  args.layers, getattr(torch, args.dtype))
        us = {path: per_layer_us(attns, qkv, positions, meta, path, args.rounds) for path in paths}
        torch_best = min(v for k, v in us.items() if k != "kernel")
        speedup = f"{torch_best / us['kernel']:.1f}x" if "kernel" in us else "-"
        print(f"| {batch} x {context} | " + " | ".join(f"{us[p]:.1f}" for p in paths) + f" | {speedup} |")
        del attns
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
